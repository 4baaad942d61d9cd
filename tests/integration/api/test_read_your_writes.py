"""Read-your-writes (docs/contract.md §5.2, §6.2): a read that names its writes sees them.

The main test runs a real processor and a real API process, a background publisher, and many
clients that each post an event and read their child with the answer's token (or the event's
id): every read includes the event. The others check the errors (timeout without a processor,
invalid parameters, unknown and expired tokens), the events that end a wait without being
applied (dead letters, erased children), and that waits survive the listener's connection
being terminated.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from processor.api import create_app
from processor.api.app import delete_expired_tokens
from processor.api.context import ApiContext
from processor.api.read_after import new_token_id
from processor.api.waiting import LISTENER_APPLICATION_NAME
from processor.publishing.publisher import OutgoingEvent
from processor.settings import Settings
from projections.database import connect
from projections.write_tokens import delete_expired, store_token
from testkit.processes import api_process, free_port
from testkit.services import make_token
from tests.integration.api.test_api import adjusted, assert_error, encode
from tests.integration.support import drain, outgoing, processor_process, publish

pytestmark = pytest.mark.integration

#: Concurrent clients of the main test, each with its own child.
CLIENTS = 40
#: Post-then-read rounds per client.
ROUNDS = 10


def at(second: int) -> str:
    return f"2024-03-01T00:{second // 60:02d}:{second % 60:02d}Z"


class BackgroundLoad:
    """Publishes batches of events of other children until stopped (the load the reads wait
    through)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.published = 0
        self.thread = threading.Thread(target=self._run, name="background-load", daemon=True)

    def _run(self) -> None:
        second = 0
        while not self.stop.is_set():
            bodies = [encode(adjusted(f"kid-load-{n % 50}", 1, at(second))) for n in range(200)]
            second = (second + 1) % 3600
            publish(self.settings, outgoing(bodies))
            self.published += len(bodies)
            time.sleep(0.05)

    def __enter__(self) -> BackgroundLoad:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


async def post_then_read(
    base: str, ingest: str, read: str, child: int, by_id: bool
) -> list[tuple[int, int, int]]:
    """One client: ``ROUNDS`` times, post +1 for its child and read with ``after``; returns
    ``(round, score, events_applied)`` of each read."""
    seen = []
    user = f"kid-rw-{child}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for round_ in range(1, ROUNDS + 1):
            event = adjusted(user, 1, at(round_))
            posted = await client.post(
                "/v1/events", content=encode(event), headers={"Authorization": f"Bearer {ingest}"}
            )
            assert posted.status_code == 202, posted.text
            after = event["event_id"] if by_id else posted.json()["token"]
            answer = await client.get(
                f"/v1/users/{user}/friendship",
                params={"after": after, "wait_s": 10},
                headers={"Authorization": f"Bearer {read}"},
            )
            assert answer.status_code == 200, answer.text
            seen.append((round_, answer.json()["score"], answer.json()["events_applied"]))
    return seen


def test_a_read_after_its_write_sees_it_every_time_under_load_with_many_waiting(
    settings: Settings, tmp_path: Path
) -> None:
    # No safety re-check within the test: the commits' notifications must wake every read.
    settings = settings.with_overrides(api_port=free_port(), wait_safety_poll_s=3600.0)
    ingest, read = make_token(settings, "ingest"), make_token(settings, "read")
    base = f"http://{settings.api_host}:{settings.api_port}"

    async def clients() -> list[list[tuple[int, int, int]]]:
        return await asyncio.gather(
            *(post_then_read(base, ingest, read, n, by_id=n % 4 == 0) for n in range(CLIENTS))
        )

    with (
        processor_process(settings, tmp_path / "processor.log"),
        api_process(settings, tmp_path / "api.log"),
        BackgroundLoad(settings) as load,
    ):
        results = asyncio.run(clients())
    assert load.published > 0
    for seen in results:
        # Every read saw its own write and every earlier one: score and count are the round.
        assert seen == [(n, n, n) for n in range(1, ROUNDS + 1)]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {make_token(settings, 'admin')}"
        yield test_client


def test_ingest_answers_a_small_token_whatever_the_request_size(client: TestClient[Any]) -> None:
    one = client.post("/v1/events", content=encode(adjusted("kid-1", 1, at(0))))
    many = client.post(
        "/v1/events", content=encode([adjusted(f"kid-{n % 9}", 1, at(0)) for n in range(1000)])
    )
    empty = client.post("/v1/events", content=b"[]")
    tokens = [r.json()["token"] for r in (one, many, empty)]
    assert [r.status_code for r in (one, many, empty)] == [202, 202, 202]
    assert all(t.startswith("rw_") and len(t) == 35 for t in tokens)
    assert len(set(tokens)) == 3
    # Nothing to wait for in an empty request: the read answers as without after.
    assert_error(
        client.get("/v1/users/kid-1/friendship", params={"after": tokens[2]}), 404, "user_not_found"
    )


def test_without_a_processor_the_wait_runs_out_with_not_yet_applied(
    client: TestClient[Any],
) -> None:
    events = [adjusted("kid-2", 1, at(n)) for n in range(3)]
    token = client.post("/v1/events", content=encode(events)).json()["token"]
    for after in (token, ",".join(e["event_id"] for e in events)):
        for path in ("friendship", "topics"):
            response = client.get(f"/v1/users/kid-2/{path}", params={"after": after, "wait_s": 0.3})
            error = assert_error(response, 503, "not_yet_applied")
            assert error["details"] == [{"pending": 3, "named": 3}]
            assert response.headers["retry-after"] == "1"
            assert all(e["event_id"] not in response.text for e in events)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"wait_s": "1"}, "invalid_parameters"),
        ({"after": str(uuid.uuid4()), "wait_s": "10.5"}, "invalid_parameters"),
        ({"after": str(uuid.uuid4()), "wait_s": "-1"}, "invalid_parameters"),
        ({"after": str(uuid.uuid4()), "wait_s": "soon"}, "invalid_parameters"),
        ({"after": str(uuid.uuid4()), "wait_s": "nan"}, "invalid_parameters"),
        ({"after": "not-an-event-id"}, "invalid_parameters"),
        ({"after": ",".join(str(uuid.uuid4()) for _ in range(101))}, "invalid_parameters"),
        ({"after": ""}, "invalid_parameters"),
        ({"after": "rw_not-hex"}, "invalid_token"),
        ({"after": "rw_" + uuid.uuid4().hex}, "invalid_token"),
    ],
    ids=[
        "wait-without-after",
        "wait-too-long",
        "wait-negative",
        "wait-not-a-number",
        "wait-nan",
        "not-an-id",
        "101-ids",
        "empty",
        "malformed-token",
        "unknown-token",
    ],
)
def test_bad_after_or_wait_s_is_400(
    client: TestClient[Any], params: dict[str, str], code: str
) -> None:
    for path in ("friendship", "topics"):
        response = client.get(f"/v1/users/kid-3/{path}", params=params)
        assert_error(response, 400, code)
        assert len(response.text) < 600


def test_an_expired_token_is_invalid_and_its_row_is_deleted(
    settings: Settings, client: TestClient[Any]
) -> None:
    token = client.post("/v1/events", content=encode(adjusted("kid-4", 1, at(0)))).json()["token"]
    with connect(settings.database_url) as conn:
        conn.execute("UPDATE write_tokens SET expires_at = now() - interval '1 second'")
        assert delete_expired(conn, 100) == 1
    assert_error(
        client.get("/v1/users/kid-4/friendship", params={"after": token}), 400, "invalid_token"
    )


def test_one_cleanup_deletes_every_expired_token_batch_after_batch(settings: Settings) -> None:
    ctx = ApiContext.create(settings)
    try:
        with connect(settings.database_url) as conn:
            for n in range(25):
                store_token(conn, new_token_id(), [str(uuid.uuid4())], [b"d" * 32], -1.0 - n)
            store_token(conn, new_token_id(), [str(uuid.uuid4())], [b"d" * 32], 600.0)
        # 25 expired, batches of 10: three rounds in one call, the live token stays.
        assert asyncio.run(delete_expired_tokens(ctx, batch=10)) == 25
        with connect(settings.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM write_tokens").fetchone()
        assert row is not None and row[0] == 1
    finally:
        ctx.engine.dispose()


def test_dead_letters_and_erased_children_end_a_wait(
    settings: Settings, client: TestClient[Any], tmp_path: Path
) -> None:
    # An event of kid-5 that will be a dead letter (published past the HTTP validation).
    dead_id = str(uuid.uuid4())
    bad = encode({**adjusted("kid-5", 1, at(0)), "event_id": dead_id, "data": {"delta": 999}})
    publish(settings, [OutgoingEvent(dead_id, "kid-5", bad)])
    # kid-6's event is posted, then kid-6 is erased before any processor applies it.
    token = client.post("/v1/events", content=encode(adjusted("kid-6", 1, at(0)))).json()["token"]
    assert client.delete("/v1/users/kid-6").status_code == 200
    applied = adjusted("kid-7", 5, at(0))
    assert client.post("/v1/events", content=encode(applied)).status_code == 202
    with processor_process(settings, tmp_path / "processor.log"):
        after = f"{dead_id},{applied['event_id']}"
        answer = client.get("/v1/users/kid-7/friendship", params={"after": after, "wait_s": 10})
        assert answer.status_code == 200, answer.text
        assert answer.json()["score"] == 5
        # The erased child's event is never applied, yet the wait for it ends; its read is 404.
        for user in ("kid-6", "kid-7"):
            response = client.get(
                f"/v1/users/{user}/friendship", params={"after": token, "wait_s": 10}
            )
            assert response.status_code == (404 if user == "kid-6" else 200), response.text
        drain(settings)
    # Named by id, an erased child's events end the wait of its own read (404 at once).
    erased_id = str(uuid.uuid4())
    assert_error(
        client.get("/v1/users/kid-6/friendship", params={"after": erased_id, "wait_s": 10}),
        404,
        "user_not_found",
    )


def listener_backends(settings: Settings) -> list[int]:
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = "
            "current_database()",
            (LISTENER_APPLICATION_NAME,),
        ).fetchall()
    return [int(row[0]) for row in rows]


def wait_for(condition: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.05)


def test_waits_complete_after_the_listener_connection_is_terminated(
    settings: Settings, client: TestClient[Any], tmp_path: Path
) -> None:
    with processor_process(settings, tmp_path / "processor.log"):
        for round_ in range(1, 4):
            (old,) = wait_for(lambda: listener_backends(settings), "a listener")
            with connect(settings.database_url) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (old,))
            event = adjusted("kid-8", 1, at(round_))
            token = client.post("/v1/events", content=encode(event)).json()["token"]
            answer = client.get("/v1/users/kid-8/friendship", params={"after": token, "wait_s": 10})
            assert answer.status_code == 200, answer.text
            assert answer.json()["events_applied"] == round_
            # The listener is back, on a new connection (the old backend may linger a moment).
            wait_for(
                lambda old=old: [pid for pid in listener_backends(settings) if pid != old],
                "the listener back on a new connection",
            )


def test_openapi_documents_after_wait_s_and_their_errors(client: TestClient[Any]) -> None:
    paths = client.get("/schema/openapi.json").json()["paths"]
    for path in ("/v1/users/{user_id}/friendship", "/v1/users/{user_id}/topics"):
        operation = paths[path]["get"]
        parameters = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
        assert {"after", "wait_s"} <= set(parameters), path
        assert "not_yet_applied" in parameters["after"]["description"]
        assert {"400", "503"} <= set(operation["responses"]), path
    ingest = paths["/v1/events"]["post"]["responses"]["202"]["content"]["application/json"]
    assert "token" in json.dumps(client.get("/schema/openapi.json").json()["components"])
    assert ingest
