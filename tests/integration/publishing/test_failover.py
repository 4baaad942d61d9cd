"""Publishers take several broker addresses and fail over: a node where nothing listens comes
first, the machine's node second; the library, the CLI, the topology and the HTTP ingest all
get their events confirmed on the second."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from processor.api import create_app
from processor.publishing.errors import BrokerUnreachable, PublishError
from processor.publishing.publisher import AsyncPublisher, publish_events
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from processor.tuning import PUBLISH_ATTEMPTS
from testkit.services import make_token
from tests.integration.support import (
    outgoing,
    read_stream_bodies,
    run_command,
    settings_env,
    synthetic_events,
)

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    """A port of 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _first_node_down(settings: Settings) -> Settings:
    return settings.with_overrides(
        amqp_addresses_raw=f"127.0.0.1:{_closed_port()},127.0.0.1:{settings.amqp.port}"
    )


def _logged(settings: Settings) -> int:
    return sum(len(read_stream_bodies(settings, p)) for p in range(settings.partitions))


def test_a_publisher_fails_over_from_a_node_where_nothing_listens(settings: Settings) -> None:
    failing_over = _first_node_down(settings)
    events = outgoing(synthetic_events(300, users=40, seed=7))
    declare_topology(failing_over)  # the blocking connection fails over too

    async def publish() -> str | None:
        publisher = AsyncPublisher(failing_over)
        try:
            assert await publisher.publish(events[:100]) == 100
            return publisher.address
        finally:
            await publisher.close()

    assert asyncio.run(publish()) == f"127.0.0.1:{settings.amqp.port}"
    assert asyncio.run(publish_events(failing_over, events[100:])) == 200
    assert _logged(settings) == 300


def test_no_node_answering_is_a_bounded_retry_then_an_error_naming_every_node(
    settings: Settings, tmp_path: Path
) -> None:
    first, second = _closed_port(), _closed_port()
    nowhere = settings.with_overrides(
        amqp_addresses_raw=f"127.0.0.1:{first},127.0.0.1:{second}",
        reconnect_backoff_s=0.01,
        reconnect_backoff_max_s=0.05,
    )
    events = outgoing(synthetic_events(10, users=2, seed=8))
    with pytest.raises(BrokerUnreachable) as raised:
        asyncio.run(AsyncPublisher(nowhere).connect())
    assert str(raised.value) == (
        f"cannot connect to any of the 2 broker nodes: 127.0.0.1:{first}: connection refused; "
        f"127.0.0.1:{second}: connection refused"
    )
    with pytest.raises(PublishError) as retried:
        asyncio.run(publish_events(nowhere, events))
    assert f"10 events still not confirmed after {PUBLISH_ATTEMPTS} attempts" in str(retried.value)
    assert str(raised.value) in str(retried.value)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(e.body for e in events))
    result = run_command(["publish", str(path)], settings_env(nowhere))
    assert result.returncode == 1, result.stderr
    assert "cannot connect to any of the 2 broker nodes" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_http_ingest_fails_over_and_answers_202_once_confirmed(settings: Settings) -> None:
    failing_over = _first_node_down(settings)
    bodies = synthetic_events(20, users=5, seed=9)
    with TestClient(app=create_app(failing_over)) as client:
        client.headers["Authorization"] = f"Bearer {make_token(settings, 'ingest')}"
        ready: Any = client.get("/readyz").json()
        assert ready["checks"]["broker"] == "ok"
        response = client.post("/v1/events", content=b"[" + b",".join(bodies) + b"]")
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == 20
    assert _logged(settings) == 20


def test_http_ingest_with_no_node_answering_is_503_with_retry_after_and_backs_off(
    settings: Settings,
) -> None:
    nowhere = settings.with_overrides(
        amqp_addresses_raw=f"127.0.0.1:{_closed_port()},127.0.0.1:{_closed_port()}",
        reconnect_backoff_s=30.0,
        reconnect_backoff_max_s=60.0,
    )
    body = synthetic_events(1, users=1, seed=10)[0]
    with TestClient(app=create_app(nowhere)) as client:
        client.headers["Authorization"] = f"Bearer {make_token(settings, 'ingest')}"
        answers = [client.post("/v1/events", content=body) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "broker_unavailable"
        assert "nothing was published" in answer.json()["error"]["message"]
        assert int(answer.headers["retry-after"]) >= 1
    # Within the back-off the second request does not try the nodes again: it says when.
    assert "next try in" in answers[1].json()["error"]["message"]
    assert "cannot connect to any of the 2 broker nodes" in answers[1].json()["error"]["message"]
