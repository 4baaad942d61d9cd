"""``GET /v1/stats`` and ``GET /metrics`` take the stream tails from the API's tail cache: no
broker connection per call, and the answer says how old the tails are."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from processor.api import create_app
from processor.api.context import ApiContext
from processor.reading import client as stream_client
from processor.settings import Settings
from testkit.services import make_token
from tests.integration.support import outgoing, publish, synthetic_events

pytestmark = pytest.mark.integration


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the stream connections this process opens (a spy on the real client)."""
    names: list[str] = []
    real_open = stream_client.StreamConnection.open

    async def counting_open(self: stream_client.StreamConnection) -> None:
        names.append(self._name)
        await real_open(self)

    monkeypatch.setattr(stream_client.StreamConnection, "open", counting_open)
    return names


def context_of(app: Litestar) -> ApiContext:
    context = app.dependencies["ctx"].dependency()
    assert isinstance(context, ApiContext)
    return context


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
def client(settings: Settings, app: Litestar) -> Iterator[TestClient[Any]]:
    with TestClient(app=app) as test_client:
        test_client.headers["Authorization"] = f"Bearer {make_token(settings, 'read')}"
        yield test_client


def test_stats_and_metrics_open_no_broker_connection_per_call(
    opened: list[str], settings: Settings, client: TestClient[Any]
) -> None:
    # ``opened`` comes first: the spy is in place before the app starts its tail cache.
    bodies = synthetic_events(200, users=40, seed=7)
    publish(settings, outgoing(bodies))
    first = client.get("/v1/stats")
    assert first.status_code == 200, first.text
    before = list(opened)
    assert before == ["friendship-stream api tails"]  # the cache's one connection
    ages = []
    for _ in range(30):
        answer = client.get("/v1/stats").json()
        ages.append(answer["tails_age_s"])
        assert client.get("/metrics").status_code == 200
    assert opened == before  # 60 calls, no connection opened
    assert all(0 <= age < 10 for age in ages)
    # The tails are real: nothing is applied, so the lags add up to the events published.
    assert sum(p["lag"] for p in client.get("/v1/stats").json()["partitions"]) == len(bodies)
    metrics = client.get("/metrics").text.splitlines()
    assert any(line.startswith("friendship_api_tails_age_seconds ") for line in metrics)
    assert 'friendship_api_scrape_source_up{source="broker"} 1.0' in metrics


def test_stale_tails_are_answered_with_their_age(app: Litestar, client: TestClient[Any]) -> None:
    fresh = client.get("/v1/stats").json()
    assert fresh["tails_age_s"] is not None and fresh["tails_read_at"].endswith("Z")
    context_of(app).tails.stop()  # as when the broker stops answering: no more reads
    time.sleep(2.5)
    stale = client.get("/v1/stats")
    assert stale.status_code == 200, stale.text
    assert stale.json()["tails_age_s"] >= 2.5
    assert (
        stale.json()["tails_read_at"] == fresh["tails_read_at"]
        or stale.json()["tails_read_at"] > fresh["tails_read_at"]
    )
    age_line = next(
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("friendship_api_tails_age_seconds ")
    )
    assert float(age_line.split()[1]) >= 2.5


def test_tails_never_read_is_503_broker_unavailable(settings: Settings) -> None:
    missing = f"fs_test_missing_{uuid.uuid4().hex[:8]}"
    broker_down = settings.with_overrides(
        amqp_url=settings.amqp_url.rsplit("/", 1)[0] + f"/{missing}"
    )
    with TestClient(app=create_app(broker_down)) as client:
        client.headers["Authorization"] = f"Bearer {make_token(settings, 'read')}"
        response = client.get("/v1/stats")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "broker_unavailable"
        assert "never read" in response.json()["error"]["message"]
        # The metrics still answer from the database, with the broker marked down.
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert 'friendship_api_scrape_source_up{source="broker"} 0.0' in metrics.text.splitlines()
        assert "friendship_events_applied_total 0.0" in metrics.text.splitlines()
