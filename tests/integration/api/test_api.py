"""The HTTP API against the real broker and database (docs/contract.md §5, §6).

Each test gets its own vhost (topology declared) and migrated database from the ``settings``
fixture. Projections are written with ``processor.applying.batch.apply_batch`` directly, so the read
API is checked against known stored state without a processor running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar.testing import TestClient
from psycopg import sql

from processor.api import context, create_app
from processor.api.context import APPLICATION_NAME
from processor.applying.batch import apply_batch
from processor.applying.checkpoint import ensure_checkpoints
from processor.applying.postgres import PostgresStore
from processor.ownership.leases import try_acquire_lease
from processor.ownership.membership import register_backend
from processor.privacy.crypto import decrypt_event
from processor.privacy.data_keys import ensure_data_keys
from processor.privacy.keys import load_keys
from processor.reading.log_record import LogRecord
from processor.reading.probes import read_tail_offsets
from processor.settings import Settings
from projections import queries
from projections.database import connect, database_name
from testkit.services import make_token
from tests.integration.support import read_bodies

pytestmark = pytest.mark.integration

SENTIMENT_LABELS = (
    "happy",
    "curious",
    "surprised",
    "neutral",
    "sad",
    "fearful",
    "angry",
    "disgusted",
)


def turn(user_id: str, topic: str, speaker: str, sentiment: str, at: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "conversation.turn_recorded",
        "user_id": user_id,
        "occurred_at": at,
        "data": {
            "conversation_id": "c-1",
            "topic": topic,
            "speaker": speaker,
            "sentiment": sentiment,
        },
    }


def completed(user_id: str, topic: str, duration_s: float, rating: str, at: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "conversation.completed",
        "user_id": user_id,
        "occurred_at": at,
        "data": {
            "conversation_id": "c-1",
            "topic": topic,
            "turns": 2,
            "duration_s": duration_s,
            "rating": rating,
        },
    }


def adjusted(user_id: str, delta: int, at: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "friendship.adjusted",
        "user_id": user_id,
        "occurred_at": at,
        "data": {"delta": delta, "reason": "test"},
    }


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def tails(settings: Settings) -> dict[int, int]:
    return asyncio.run(read_tail_offsets(settings))


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {make_token(settings, 'admin')}"
        yield test_client


# -- ingest ------------------------------------------------------------------------------------


def opened(settings: Settings, bodies: list[bytes]) -> list[bytes]:
    """The published bodies with their data decrypted by each child's data key."""
    keys = load_keys(settings)
    with connect(settings.database_url) as conn:
        data_keys = ensure_data_keys(conn, {json.loads(b)["user_id"] for b in bodies}, keys)
    return [decrypt_event(b, data_keys[json.loads(b)["user_id"]]) for b in bodies]


def test_post_one_event_is_published_and_confirmed(
    settings: Settings, client: TestClient[Any]
) -> None:
    event = turn("kid-1", "dinosaurs", "child", "happy", "2024-01-01T00:00:00Z")
    body = encode(event)

    response = client.post("/v1/events", content=body)

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "token": response.json()["token"]}
    filled = {p: t for p, t in tails(settings).items() if t >= 0}
    assert list(filled.values()) == [0]
    (partition,) = filled
    published = asyncio.run(read_bodies(settings, partition, count=1, timeout_s=10))
    assert b"dinosaurs" not in published[0], "data is encrypted in the log"
    assert opened(settings, published) == [body]


def test_post_array_is_published_with_the_exact_item_bytes(
    settings: Settings, client: TestClient[Any]
) -> None:
    events = [
        turn("kid-2", "space", "robot", "neutral", f"2024-01-01T00:00:0{i}Z") for i in range(3)
    ]
    # Unknown fields are kept: the published body, once its data is decrypted, is the item's
    # bytes as received.
    events[0]["future_field"] = {"x": 1}
    body = b"[ " + b" ,\n".join(encode(e) for e in events) + b" ]"

    response = client.post("/v1/events", content=body)

    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 3
    filled = {p: t for p, t in tails(settings).items() if t >= 0}
    assert list(filled.values()) == [2]  # one user, one partition, three events in order
    (partition,) = filled
    published = asyncio.run(read_bodies(settings, partition, count=3, timeout_s=10))
    assert opened(settings, published) == [encode(e) for e in events]


def test_one_invalid_item_refuses_the_whole_batch(
    settings: Settings, client: TestClient[Any]
) -> None:
    good = turn("kid-3", "music", "child", "happy", "2024-01-01T00:00:00Z")
    bad = turn("kid-3", "music", "child", "bored", "2024-01-01T00:00:01Z")
    naive = adjusted("kid-3", 5, "2024-01-01T00:00:02")
    body = encode([good, bad, good, naive])

    response = client.post("/v1/events", content=body)

    error = assert_error(response, 422, "invalid_events")
    details = error["details"]
    assert [(d["index"], d["field"]) for d in details] == [
        (1, "data.sentiment"),
        (3, "occurred_at"),
    ]
    assert all(set(d) == {"index", "field", "reason", "problems"} and d["reason"] for d in details)
    assert details[0]["reason"].startswith("one of happy, curious")
    assert all(t == -1 for t in tails(settings).values())

    # The same user's next event lands alone at offset 0: the refused batch left nothing behind.
    assert client.post("/v1/events", content=encode(good)).status_code == 202
    assert sorted(tails(settings).values()) == [-1] * (settings.partitions - 1) + [0]


def test_more_than_1000_events_are_refused(settings: Settings, client: TestClient[Any]) -> None:
    events = [adjusted(f"kid-{i % 7}", 1, "2024-01-01T00:00:00Z") for i in range(1001)]

    response = client.post("/v1/events", content=encode(events))

    error = assert_error(response, 422, "too_many_events")
    assert "1001" in error["message"] and "1000" in error["message"]
    assert all(t == -1 for t in tails(settings).values())


def test_exactly_1000_events_are_accepted(client: TestClient[Any]) -> None:
    events = [adjusted(f"kid-{i % 13}", 1, "2024-01-01T00:00:00Z") for i in range(1000)]
    response = client.post("/v1/events", content=encode(events))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1000


def test_oversized_body_is_413(client: TestClient[Any]) -> None:
    event = adjusted("kid-1", 1, "2024-01-01T00:00:00Z")
    event["padding"] = "x" * (1024 * 1024)
    response = client.post("/v1/events", content=encode(event))
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b'[{"a": 1}', b'{"a": 1} trailing', b'{"a": "\xff\xfe"}', b"\xc3("],
    ids=["garbage", "empty", "truncated", "trailing", "not-utf8-in-object", "not-utf8"],
)
def test_a_body_that_is_not_json_has_one_error_code(client: TestClient[Any], body: bytes) -> None:
    # Regression: invalid UTF-8 answered invalid_events while truncated JSON answered
    # invalid_json; both are "not a JSON body".
    assert_error(client.post("/v1/events", content=body), 422, "invalid_json")


def test_an_invalid_item_lists_every_problem_in_words(client: TestClient[Any]) -> None:
    # Regression: only the first problem was reported, as a raw regular expression.
    event = turn("bad user!", "Sports Talk", "child", "bored", "2024-01-01T00:00:00")
    error = assert_error(client.post("/v1/events", content=encode(event)), 422, "invalid_events")
    (item,) = error["details"]
    problems = {p["field"]: p["reason"] for p in item["problems"]}
    assert set(problems) == {"user_id", "occurred_at", "data.topic", "data.sentiment"}
    assert problems["data.topic"] == "1 to 64 characters from a-z, 0-9 and _"
    assert problems["user_id"] == "1 to 128 characters from A-Z, a-z, 0-9 and . _ : @ -"
    assert (item["field"], item["reason"]) == ("user_id", problems["user_id"])
    assert "regex" not in json.dumps(error) and "(?!" not in json.dumps(error)


@pytest.mark.parametrize("body", [b"", b" \r\n\t"], ids=["empty", "whitespace"])
def test_an_empty_body_is_invalid_json_that_says_so(client: TestClient[Any], body: bytes) -> None:
    # Regression: the message was msgspec's "Input data was truncated".
    error = assert_error(client.post("/v1/events", content=body), 422, "invalid_json")
    assert "empty" in error["message"] and "truncated" not in error["message"]


def test_a_lone_surrogate_escape_is_invalid_json_named_honestly(client: TestClient[Any]) -> None:
    # Regression: the 422 invalid_json message was msgspec's "Input data was truncated".
    for body in (b'{"a": "\\ud800"}', b'[{"a": "\\udc00"}]'):
        error = assert_error(client.post("/v1/events", content=body), 422, "invalid_json")
        assert "lone UTF-16 surrogate" in error["message"], error
        assert "truncated" not in error["message"]


def test_json_that_is_not_an_event_is_422(client: TestClient[Any]) -> None:
    error = assert_error(client.post("/v1/events", content=b'"hello"'), 422, "invalid_events")
    assert [d["index"] for d in error["details"]] == [0]


# -- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """Ids of the events applied by the ``seeded`` fixture."""

    first_turn: str
    dead_with_uuid: str
    dead_raw_uuid_body: bytes
    dead_letter_count: int


@pytest.fixture
def seeded(settings: Settings) -> Seeded:
    """kid-1's five events on partition 0, five dead letters on partition 1 (two batches).

    The database's time zone is Asia/Tokyo, so stored timestamps come back as +09:00 and the API
    must render them in UTC.
    """
    events = [
        turn("kid-1", "dinosaurs", "child", "happy", "2024-01-01T00:00:00Z"),  # +1
        turn("kid-1", "dinosaurs", "robot", "sad", "2024-01-01T00:01:00+02:00"),  # robot: 0
        turn("kid-1", "animals", "child", "curious", "2024-01-02T10:00:00Z"),  # +1
        completed("kid-1", "dinosaurs", 30.5, "excellent", "2024-01-01T00:05:00Z"),  # +2
        adjusted("kid-1", 20, "2024-01-01T12:00:00+01:00"),  # +20
    ]
    dead_uuid = str(uuid.uuid4())
    dead_body = encode(
        {**turn("kid-2", "music", "child", "bored", "2024-01-01T00:00:00Z"), "event_id": dead_uuid}
    )
    dead_batches = [
        [b"not json at all", dead_body],
        [
            encode({"event_id": "not-a-uuid", "type": "friendship.adjusted"}),
            b"\xff\xfe\x00",
            b"[1, 2]",
        ],
    ]
    with connect(settings.database_url) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone TO 'Asia/Tokyo'").format(
                sql.Identifier(database_name(settings.database_url))
            )
        )
        ensure_checkpoints(conn, settings.partitions)
        records = [LogRecord(offset, encode(e)) for offset, e in enumerate(events)]
        apply_batch(PostgresStore(conn), 0, records, -1, "test", keys=load_keys(settings))
        checkpoint = -1
        for batch in dead_batches:
            records = [LogRecord(checkpoint + 1 + i, body) for i, body in enumerate(batch)]
            apply_batch(
                PostgresStore(conn), 1, records, checkpoint, "test", keys=load_keys(settings)
            )
            checkpoint += len(batch)
    return Seeded(
        first_turn=events[0]["event_id"],
        dead_with_uuid=dead_uuid,
        dead_raw_uuid_body=dead_body,
        dead_letter_count=5,
    )


def test_friendship_answer(seeded: Seeded, client: TestClient[Any]) -> None:
    response = client.get("/v1/users/kid-1/friendship")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "user_id": "kid-1",
        "score": 24,
        "level": "acquaintance",
        "events_applied": 5,
        "last_event_at": "2024-01-02T10:00:00Z",
    }


def test_reads_answer_after_the_database_ended_the_pooled_sessions(
    seeded: Seeded, settings: Settings, client: TestClient[Any]
) -> None:
    """The pool pings nothing before a checkout: a read whose pooled connection the database
    has ended (a restart, ``pg_terminate_backend``) is tried once more on a new connection,
    and the token check too; the client sees its answers, not a 503."""
    for _ in range(3):  # fill the pool with a few connections
        assert client.get("/v1/users/kid-1/friendship").status_code == 200
    with connect(settings.database_url) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s",
            (database_name(settings.database_url), APPLICATION_NAME),
        ).fetchone()
    assert ended is not None and ended[0] >= 1
    for _ in range(8):  # more reads than the pool had connections: each stale one is met
        answer = client.get("/v1/users/kid-1/friendship")
        assert answer.status_code == 200, answer.text
        assert answer.json()["user_id"] == "kid-1"


def test_topics_answer_sorted_with_all_labels(seeded: Seeded, client: TestClient[Any]) -> None:
    response = client.get("/v1/users/kid-1/topics")
    assert response.status_code == 200, response.text

    def sentiment(**counts: int) -> dict[str, int]:
        return {label: counts.get(label, 0) for label in SENTIMENT_LABELS}

    assert response.json() == {
        "user_id": "kid-1",
        "topics": [
            {
                "topic": "animals",
                "conversations": 0,
                "turns": 1,
                "duration_s": 0.0,
                "sentiment": sentiment(curious=1),
                "last_discussed_at": "2024-01-02T10:00:00Z",
            },
            {
                "topic": "dinosaurs",
                "conversations": 1,
                "turns": 2,
                "duration_s": 30.5,
                "sentiment": sentiment(happy=1),
                "last_discussed_at": "2024-01-01T00:05:00Z",
            },
        ],
    }
    assert list(response.json()["topics"][0]["sentiment"]) == list(SENTIMENT_LABELS)


def test_user_with_only_adjustments_has_no_topics(
    settings: Settings, client: TestClient[Any]
) -> None:
    with connect(settings.database_url) as conn:
        ensure_checkpoints(conn, settings.partitions)
        apply_batch(
            PostgresStore(conn),
            2,
            [LogRecord(0, encode(adjusted("kid-9", -5, "2024-01-01T00:00:00Z")))],
            -1,
            "t",
            keys=load_keys(settings),
        )
    assert client.get("/v1/users/kid-9/topics").json() == {"user_id": "kid-9", "topics": []}
    assert client.get("/v1/users/kid-9/friendship").json()["level"] == "stranger"


@pytest.mark.parametrize("path", ["friendship", "topics"])
def test_unknown_user_is_404(seeded: Seeded, client: TestClient[Any], path: str) -> None:
    assert_error(client.get(f"/v1/users/nobody/{path}"), 404, "user_not_found")


@pytest.mark.parametrize("path", ["friendship", "topics"])
@pytest.mark.parametrize("user_id", ["x" * 10_000, "bad%20id", "x" * 129, "caf%C3%A9"])
def test_a_user_id_that_breaks_the_contract_is_400_and_not_echoed(
    client: TestClient[Any], path: str, user_id: str
) -> None:
    # Regression: a 10,000-character id got 404 with the whole id echoed back.
    response = client.get(f"/v1/users/{user_id}/{path}")
    error = assert_error(response, 400, "invalid_user_id")
    assert "1 to 128 characters" in error["message"]
    assert len(response.text) < 500


def test_an_unknown_long_event_id_is_not_echoed_whole(client: TestClient[Any]) -> None:
    response = client.get(f"/v1/events/{'e' * 10_000}")
    assert_error(response, 404, "event_not_found")
    assert len(response.text) < 500


def test_an_unmatched_long_path_is_not_echoed_whole(client: TestClient[Any]) -> None:
    # Regression: the 404 for an unknown route quoted the whole path (10,000 characters here).
    response = client.get(f"/v1/users/{'x' * 10_000}/friendshipX")
    error = assert_error(response, 404, "not_found")
    assert error["message"].startswith("no route GET /v1/users/xxx")
    assert "(10022 characters)" in error["message"]
    assert len(response.text) < 500


def test_an_invalid_long_cursor_is_not_echoed_whole(client: TestClient[Any]) -> None:
    # Regression: the 400 invalid_cursor message quoted the whole cursor.
    response = client.get(f"/v1/dead-letters?cursor={'c' * 10_000}")
    error = assert_error(response, 400, "invalid_cursor")
    assert "10000 characters" in error["message"]
    assert len(response.text) < 500


def test_event_status_applied(seeded: Seeded, client: TestClient[Any]) -> None:
    response = client.get(f"/v1/events/{seeded.first_turn}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "event_id": seeded.first_turn,
        "status": "applied",
        "partition": 0,
        "offset": 0,
        "user_id": "kid-1",
        "type": "conversation.turn_recorded",
        "occurred_at": "2024-01-01T00:00:00Z",
    }
    # The same id in upper case names the same event.
    assert client.get(f"/v1/events/{seeded.first_turn.upper()}").json()["status"] == "applied"


def test_event_status_dead_lettered(seeded: Seeded, client: TestClient[Any]) -> None:
    answer = client.get(f"/v1/events/{seeded.dead_with_uuid}").json()
    dead_lettered_at = answer.pop("dead_lettered_at")
    assert dead_lettered_at.endswith("Z")
    assert answer == {
        "event_id": seeded.dead_with_uuid,
        "status": "dead_lettered",
        "partition": 1,
        "offset": 1,
        "field": "data.sentiment",
        "reason": answer["reason"],
        "raw": seeded.dead_raw_uuid_body.decode(),
        "raw_encoding": "utf-8",
    }
    assert answer["reason"]

    malformed = client.get("/v1/events/not-a-uuid")
    assert malformed.status_code == 200, malformed.text
    assert malformed.json()["status"] == "dead_lettered"
    assert (malformed.json()["partition"], malformed.json()["offset"]) == (1, 2)


@pytest.mark.parametrize("event_id", [str(uuid.uuid4()), "no-such-thing", "%20"])
def test_unknown_event_is_404(seeded: Seeded, client: TestClient[Any], event_id: str) -> None:
    assert_error(client.get(f"/v1/events/{event_id}"), 404, "event_not_found")


def test_stats(settings: Settings, seeded: Seeded, client: TestClient[Any]) -> None:
    with connect(settings.database_url) as owner:
        register_backend(owner, "test-host:42")
        assert try_acquire_lease(owner, 3)
        response = client.get("/v1/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    assert set(stats) == {
        "events_applied",
        "dead_lettered",
        "partitions",
        "fold_version",
        "fold_build",
        "tails_read_at",
        "tails_age_s",
    }
    assert stats["tails_read_at"].endswith("Z")
    assert 0 <= stats["tails_age_s"] < 60
    assert (stats["fold_version"], stats["fold_build"]) == (1, None)
    assert (stats["events_applied"], stats["dead_lettered"]) == (5, seeded.dead_letter_count)
    partitions = stats["partitions"]
    assert [p["partition"] for p in partitions] == list(range(16))
    assert all(set(p) == {"partition", "checkpoint", "lag", "owner"} for p in partitions)
    assert [p["checkpoint"] for p in partitions[:3]] == [4, 4, -1]
    assert all(p["lag"] == 0 for p in partitions)  # nothing was published to the streams
    assert {p["partition"]: p["owner"] for p in partitions if p["owner"] is not None} == {
        3: "test-host:42"
    }


def test_dead_letters_newest_first_with_cursor_pages(
    seeded: Seeded, client: TestClient[Any]
) -> None:
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get("/v1/dead-letters", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["dead_letters"]) <= 2
        seen.extend(page["dead_letters"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    # Newest first: the second batch (offsets 2..4) before the first (0..1), later offsets first.
    assert [(d["partition"], d["offset"]) for d in seen] == [(1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]
    assert all(
        set(d)
        == {
            "partition",
            "offset",
            "event_id",
            "field",
            "reason",
            "dead_lettered_at",
            "raw",
            "raw_encoding",
        }
        for d in seen
    )
    by_offset = {d["offset"]: d for d in seen}
    assert by_offset[3]["raw_encoding"] == "base64"
    assert base64.b64decode(by_offset[3]["raw"]) == b"\xff\xfe\x00"
    assert (by_offset[0]["raw"], by_offset[0]["event_id"]) == ("not json at all", None)
    assert by_offset[2]["event_id"] == "not-a-uuid"
    assert all(d["dead_lettered_at"].endswith("Z") for d in seen)

    everything = client.get("/v1/dead-letters").json()
    assert everything["dead_letters"] == seen and everything["next_cursor"] is None
    assert everything["limit"] == 50
    skipped = client.get("/v1/dead-letters", params={"offset": 3, "limit": 500}).json()
    assert skipped["dead_letters"] == seen[3:]
    # Without the bytes: the same items and pages, raw and raw_encoding absent.
    bare = client.get("/v1/dead-letters", params={"include_raw": "false"}).json()
    without = [{k: v for k, v in d.items() if k not in {"raw", "raw_encoding"}} for d in seen]
    assert bare["dead_letters"] == without and bare["next_cursor"] is None
    assert client.get("/v1/dead-letters", params={"include_raw": "true"}).json() == everything
    assert_error(client.get("/v1/dead-letters?include_raw=maybe"), 400, "invalid_parameters")
    operation = client.get("/schema/openapi.json").json()["paths"]["/v1/dead-letters"]["get"]
    assert "include_raw" in {p["name"] for p in operation["parameters"]}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_parameters"),
        ("limit=501", "invalid_parameters"),
        ("limit=abc", "invalid_parameters"),
        ("offset=-1", "invalid_parameters"),
        ("cursor=%25%25", "invalid_cursor"),
    ],
)
def test_dead_letters_bad_query_is_400(client: TestClient[Any], query: str, code: str) -> None:
    assert_error(client.get(f"/v1/dead-letters?{query}"), 400, code)


# -- operations --------------------------------------------------------------------------------


def test_health_and_readiness(client: TestClient[Any]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"broker": "ok", "database": "ok"}


def test_unreachable_broker_and_database(settings: Settings) -> None:
    missing = f"fs_test_missing_{uuid.uuid4().hex[:8]}"
    broken = settings.with_overrides(
        amqp_url=settings.amqp_url.rsplit("/", 1)[0] + f"/{missing}",
        database_url=settings.database_url.rsplit("/", 1)[0] + f"/{missing}",
    )
    with TestClient(app=create_app(broken)) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert {d["check"] for d in error["details"]} == {"broker", "database"}
        # Tokens are checked in the database: without it every authenticated call is a 503.
        client.headers["Authorization"] = "Bearer fst_0000000000000000secret"
        assert_error(client.get("/v1/users/kid-1/friendship"), 503, "database_unavailable")
        assert client.get("/healthz").status_code == 200
    broker_only = settings.with_overrides(amqp_url=broken.amqp_url)
    with TestClient(app=create_app(broker_only)) as client:
        client.headers["Authorization"] = f"Bearer {make_token(settings, 'ingest')}"
        event = adjusted("kid-1", 1, "2024-01-01T00:00:00Z")
        assert_error(client.post("/v1/events", content=encode(event)), 503, "broker_unavailable")


def test_metrics(seeded: Seeded, client: TestClient[Any]) -> None:
    # Each answer counts under its own status, and a route's repeated reads all count.
    assert client.get("/v1/users/kid-1/friendship").status_code == 200
    assert client.get("/v1/users/kid-1/friendship").status_code == 200
    assert client.get("/v1/users/nobody/friendship").status_code == 404
    client.get("/no/such/route")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    assert "friendship_events_applied_total 5.0" in lines
    assert f"friendship_dead_letters_total {seeded.dead_letter_count}.0" in lines
    assert 'friendship_partition_checkpoint{partition="0"} 4.0' in lines
    assert 'friendship_partition_lag{partition="15"} 0.0' in lines
    assert 'friendship_partition_owned{partition="0"} 0.0' in lines
    assert 'friendship_api_scrape_source_up{source="broker"} 1.0' in lines
    route = "/v1/users/{user_id}/friendship"
    assert (
        f'friendship_api_requests_total{{method="GET",route="{route}",status="200"}} 2.0' in lines
    )
    assert (
        f'friendship_api_requests_total{{method="GET",route="{route}",status="404"}} 1.0' in lines
    )
    assert (
        f'friendship_api_request_duration_seconds_count{{method="GET",route="{route}"}} 3.0'
        in lines
    )
    assert 'friendship_api_requests_total{method="GET",route="unmatched",status="404"} 1.0' in lines
    assert any(line.startswith("friendship_api_request_duration_seconds_bucket{") for line in lines)


def test_every_error_has_the_error_shape(client: TestClient[Any]) -> None:
    error = assert_error(client.get("/v1/no-such-route"), 404, "not_found")
    assert "/v1/no-such-route" in error["message"]
    assert_error(client.delete("/v1/stats"), 405, "method_not_allowed")
    assert_error(client.put("/v1/events", content=b"{}"), 405, "method_not_allowed")


def test_openapi_document(client: TestClient[Any]) -> None:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert "post" in document["paths"]["/v1/events"]
    assert "requestBody" in document["paths"]["/v1/events"]["post"]
    expected = {
        "/v1/users/{user_id}/friendship",
        "/v1/users/{user_id}/topics",
        "/v1/events/{event_id}",
        "/v1/stats",
        "/v1/dead-letters",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert expected <= set(document["paths"])


def test_unexpected_failure_is_500_with_the_error_shape(
    settings: Settings, client: TestClient[Any]
) -> None:
    with connect(settings.database_url) as conn:
        conn.execute("DROP TABLE friendships")
    error = assert_error(client.get("/v1/users/kid-1/friendship"), 500, "internal_error")
    assert "friendships" not in error["message"]  # internals stay in the log


def test_openapi_documents_the_400_of_the_user_routes(client: TestClient[Any]) -> None:
    # Without its own entry, a route gets Litestar's default 400 ({"status_code", "detail"}),
    # which is not the shape the API answers.
    paths = client.get("/schema/openapi.json").json()["paths"]
    for path in ("/v1/users/{user_id}/friendship", "/v1/users/{user_id}/topics"):
        responses = paths[path]["get"]["responses"]
        assert {"400", "404", "503"} <= set(responses), path
        schema = responses["400"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, path


#: A user id that must not reach a log line at INFO or above.
SECRET_USER = "secret-kid-7"


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record of the app at INFO or above, with its traceback, as one text (the test
    client's own ``httpx`` lines are left out)."""
    formatter = logging.Formatter()
    return "\n".join(
        formatter.format(record)
        for record in caplog.records
        if record.levelno >= logging.INFO and not record.name.startswith("httpx")
    )


def test_an_unexpected_failure_logs_neither_the_path_nor_the_parameters(
    settings: Settings, client: TestClient[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the log named the path (/v1/users/<id>/friendship) and the traceback repeated
    # the statement's parameters, so the user id was logged at ERROR.
    with connect(settings.database_url) as conn:
        conn.execute("DROP TABLE friendships")
    with caplog.at_level(logging.INFO):
        response = client.get(f"/v1/users/{SECRET_USER}/friendship")
    assert_error(response, 500, "internal_error")
    logged = logged_text(caplog)
    assert "/v1/users/{user_id}/friendship" in logged
    assert "friendships" in logged  # the cause is still logged
    assert SECRET_USER not in logged


def test_an_unreachable_database_log_names_no_parameters(
    client: TestClient[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: SQLAlchemy's message of an OperationalError (here a statement timeout) lists
    # the statement's parameters, and the 503 handler logged it at WARNING. The friendship read
    # runs on the async psycopg pool, in the token check's statement: its errors must not name
    # the parameters either.
    async def slow_read(conn: Any, user_id: str) -> None:
        # Point reads run in autocommit (no transaction for SET LOCAL): set it for the session
        # and put it back, since the connection returns to the pool.
        await conn.execute("SET statement_timeout = 1")
        try:
            await conn.execute("SELECT pg_sleep(1), %s::text", (user_id,))
        finally:
            await conn.execute("RESET statement_timeout")

    async def slow_token_checks_with_reads(
        conn: Any, _keys: object, _read: object, pairs: list[tuple[str, str]]
    ) -> None:
        await slow_read(conn, pairs[0][1])

    monkeypatch.setattr(queries, "friendship_of_async", slow_read)
    monkeypatch.setattr(context, "verify_tokens_with_reads_async", slow_token_checks_with_reads)
    with caplog.at_level(logging.INFO):
        response = client.get(f"/v1/users/{SECRET_USER}/friendship")
    assert_error(response, 503, "database_unavailable")
    logged = logged_text(caplog)
    assert "statement timeout" in logged
    assert SECRET_USER not in logged
