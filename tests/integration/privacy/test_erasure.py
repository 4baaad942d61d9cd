"""Erasure while the child's events keep arriving, with a live processor, the HTTP API and
replay (docs/contract.md, "Erasure"): the child ends absent from every table and answer, its
encrypted log entries unreadable, and no replay brings it back."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from processor.api import create_app
from processor.applying.postgres import PostgresStore
from processor.privacy.crypto import envelope_of
from processor.privacy.erasure import erase_user
from processor.privacy.keys import load_keys
from processor.privacy.opening import NO_DATA_KEY, open_batch
from processor.publishing.publisher import OutgoingEvent
from processor.reading.log_record import LogRecord
from processor.settings import Settings
from projections.database import connect
from testkit.privacy import leaks
from testkit.reference import reference_fold
from testkit.services import make_token
from tests.integration.support import (
    assert_projections_equal,
    count,
    drain,
    outgoing,
    processor_process,
    publish,
    read_stream_bodies,
    run_command,
    settings_env,
    stored_projections,
)
from tests.strategies import ADJUSTED, COMPLETED, TURN_RECORDED, make_event

CHILD = "kid-to-forget"
OTHERS = [f"kid-{i:02d}" for i in range(12)]
SECRET_TOPIC = "dinosaurs"


def turn(user: str, second: int) -> bytes:
    data = {
        "conversation_id": f"conv-{user}-{second // 10}",
        "topic": SECRET_TOPIC if user == CHILD else "space",
        "speaker": "child",
        "sentiment": random.choice(["happy", "sad", "curious"]),
    }
    return make_event(
        TURN_RECORDED, user, f"2024-06-01T10:{second // 60:02d}:{second % 60:02d}Z", data
    )


def completed(user: str, second: int) -> bytes:
    data = {
        "conversation_id": f"conv-{user}-{second // 10}",
        "topic": "space",
        "turns": 3,
        "duration_s": 45.0,
        "rating": "good",
    }
    at = f"2024-06-01T11:{second // 60:02d}:{second % 60:02d}Z"
    return make_event(COMPLETED, user, at, data)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(settings)) as client:
        yield client


def tables_naming(settings: Settings, user: str) -> dict[str, int]:
    """Rows that name ``user`` in every table that holds user ids."""
    with connect(settings.database_url) as conn:
        return {
            table: int(
                conn.execute(
                    f"SELECT count(*) FROM {table} WHERE user_id = %s", (user,)
                ).fetchone()[0]  # type: ignore[index]
            )
            for table in (
                "friendships",
                "topic_metrics",
                "applied_events",
                "dead_letters",
                "data_keys",
            )
        }


def test_an_erased_child_is_gone_everywhere_and_stays_gone(
    settings: Settings, api: TestClient[Any], tmp_path: Path
) -> None:
    ingest = {"Authorization": f"Bearer {make_token(settings, 'ingest')}"}
    admin = {"Authorization": f"Bearer {make_token(settings, 'admin')}"}
    reader = {"Authorization": f"Bearer {make_token(settings, 'read')}"}
    accepted_others: list[bytes] = []
    refused = 0
    erased = threading.Event()
    lock = threading.Lock()
    poster_errors: list[BaseException] = []

    def post(bodies: list[bytes]) -> int:
        response = api.post("/v1/events", content=b"[" + b",".join(bodies) + b"]", headers=ingest)
        return response.status_code

    with processor_process(settings, tmp_path / "processor.log"):
        # Before the erasure: the child and the others, through the HTTP ingest (encrypted).
        first = [turn(CHILD, s) for s in range(40)] + [turn(u, s) for u in OTHERS for s in range(5)]
        assert post(first) == 202
        accepted_others.extend(b for b in first if json.loads(b)["user_id"] != CHILD)
        drain(settings)
        assert api.get(f"/v1/users/{CHILD}/friendship", headers=reader).status_code == 200
        child_event = json.loads(first[0])["event_id"]

        def keep_posting() -> None:
            try:
                post_while_erasing()
            except BaseException as exc:
                poster_errors.append(exc)

        def post_while_erasing() -> None:
            nonlocal refused
            for second in range(5, 60):
                others = [completed(u, second) for u in OTHERS[: 1 + second % len(OTHERS)]]
                status = post([turn(CHILD, 100 + second), *others])
                with lock:
                    if status == 202:
                        accepted_others.extend(others)
                    elif status == 409:
                        refused += 1
                        assert erased.is_set(), "refused before the erasure"
                        assert post(others) == 202
                        accepted_others.extend(others)
                    else:
                        raise AssertionError(f"unexpected answer {status}")
                time.sleep(0.02)

        poster = threading.Thread(target=keep_posting)
        poster.start()
        time.sleep(0.3)
        erased.set()  # from here on a 409 is expected (the erasure may commit any moment)
        erasure = api.delete(f"/v1/users/{CHILD}", headers=admin)
        poster.join(60)
        assert not poster.is_alive(), "the ingest kept hanging after the erasure"
        if poster_errors:
            raise poster_errors[0]
        assert erasure.status_code == 200, erasure.text
        report = erasure.json()
        assert report["removed"]["applied_events"] >= 40 and report["data_key_destroyed"]
        assert report["plain_events_in_log"] == 0 and CHILD not in erasure.text
        # Another producer, straight to the exchange in plain text: skipped, not applied.
        publish(settings, outgoing([turn(CHILD, 500), turn(CHILD, 501)]))
        drain(settings)

    assert refused > 0, "the ingest went on refusing the child after the erasure"
    assert tables_naming(settings, CHILD) == dict.fromkeys(
        ["friendships", "topic_metrics", "applied_events", "dead_letters", "data_keys"], 0
    )
    for path in (
        f"/v1/users/{CHILD}/friendship",
        f"/v1/users/{CHILD}/topics",
        f"/v1/events/{child_event}",
    ):
        assert api.get(path, headers=reader).status_code == 404, path
    assert count(settings, "SELECT count(*) FROM erasures") == 1
    with connect(settings.database_url) as conn:
        erasure_row = conn.execute("SELECT * FROM erasures").fetchone()
    assert CHILD.encode() not in repr(erasure_row).encode()

    # The log still holds the child's encrypted events, and nothing opens them any more.
    keys = load_keys(settings)
    child_entries = [
        body
        for partition in range(settings.partitions)
        for body in read_stream_bodies(settings, partition)
        if CHILD.encode() in body
    ]
    encrypted = [b for b in child_entries if envelope_of(b) is not None]
    assert len(encrypted) >= 40
    assert all(SECRET_TOPIC.encode() not in body for body in encrypted)
    assert tables_naming(settings, CHILD)["data_keys"] == 0
    records = [LogRecord(offset, b) for offset, b in enumerate(encrypted)]
    with connect(settings.database_url) as conn:
        opened = open_batch(PostgresStore(conn), records, keys)
    assert not opened.plaintexts and set(opened.unopened) == set(range(len(encrypted)))
    assert {reason for reason in opened.unopened.values()} == {NO_DATA_KEY}

    # Projections equal the fold of the others' accepted events; replay agrees, and swaps
    # in a rebuild without the child.
    assert_projections_equal(stored_projections(settings), reference_fold(accepted_others))
    verify = run_command(["replay", "--verify"], settings_env(settings))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "identical" in verify.stdout
    swapped = run_command(["replay", "--swap", "--drop-replaced"], settings_env(settings))
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    assert tables_naming(settings, CHILD)["friendships"] == 0
    assert_projections_equal(stored_projections(settings), reference_fold(accepted_others))
    history = run_command(["replay", "--user", CHILD], settings_env(settings))
    assert history.returncode == 1 and "erased" in history.stdout
    assert SECRET_TOPIC not in history.stdout
    outputs = {
        f"{name} {stream}": getattr(result, stream)
        for name, result in (("verify", verify), ("swap", swapped), ("history", history))
        for stream in ("stdout", "stderr")
    }
    found = leaks(outputs)
    assert not found, "replay wrote personal data:\n" + "\n".join(found[:20])


def test_the_erasure_report_counts_the_childs_events_published_in_plain_text(
    settings: Settings, api: TestClient[Any], tmp_path: Path
) -> None:
    ingest = {"Authorization": f"Bearer {make_token(settings, 'ingest')}"}
    admin = {"Authorization": f"Bearer {make_token(settings, 'admin')}"}
    sealed = [turn("kid-mixed", s) for s in range(3)]
    plain = [turn("kid-mixed", s) for s in range(10, 14)]
    assert (
        api.post("/v1/events", content=b"[" + b",".join(sealed) + b"]", headers=ingest).status_code
        == 202
    )
    invalid = make_event(ADJUSTED, "kid-mixed", "2024-06-01T12:00:00Z", {"delta": 500})
    publish(settings, outgoing([*plain, invalid]))  # another producer, straight to the exchange
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    report = api.delete("/v1/users/kid-mixed", headers=admin).json()
    assert report["removed"]["applied_events"] == 7
    assert report["removed"]["dead_letters"] == 1
    assert report["plain_events_in_log"] == 5, "4 plain events and a plain dead letter"
    again = api.delete("/v1/users/kid-mixed", headers=admin).json()
    assert again["already_erased"] and again["removed"]["applied_events"] == 0


def test_an_id_the_erased_child_used_stays_used_live_and_in_a_replay(
    settings: Settings, tmp_path: Path
) -> None:
    """Another child's event reusing the erased child's event id was dead-lettered live; it
    stays a dead letter, and a replay (which skips the erased child) decides the same."""
    reused = json.loads(turn(CHILD, 1))["event_id"]

    def with_reused_id(body: bytes) -> bytes:
        return json.dumps({**json.loads(body), "event_id": reused}).encode()

    with processor_process(settings, tmp_path / "processor.log"):
        publish(settings, outgoing([with_reused_id(turn(CHILD, 2))]))
        drain(settings)  # the child's use comes first (the partitions may differ)
        publish(settings, outgoing([with_reused_id(turn("kid-reuser", 3))]))
        drain(settings)
        erased = run_command(["erase", CHILD], settings_env(settings))
        assert erased.returncode == 0, erased.stderr
        publish(settings, outgoing([with_reused_id(turn("kid-late", 4))]))
        drain(settings)

    with connect(settings.database_url) as conn:
        dead = conn.execute("SELECT user_id, reason FROM dead_letters ORDER BY user_id").fetchall()
    assert [user for user, _ in dead] == ["kid-late", "kid-reuser"]
    assert all("another user (partition" in reason and CHILD not in reason for _, reason in dead)
    assert count(settings, "SELECT count(*) FROM erased_event_ids") == 1
    verify = run_command(["replay", "--verify"], settings_env(settings))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "identical" in verify.stdout


def test_an_erased_childs_id_as_another_events_routing_key_is_taken_out_live_and_in_a_replay(
    settings: Settings, api: TestClient[Any], tmp_path: Path
) -> None:
    """A producer published another child's event with the erased child's id as routing key:
    that dead letter stays (it is the other child's), but neither live, a replay nor
    ``replay --user`` quotes the erased id any more."""
    admin = {"Authorization": f"Bearer {make_token(settings, 'admin')}"}

    def misrouted(second: int) -> OutgoingEvent:
        body = turn("kid-sender", second)
        return OutgoingEvent(json.loads(body)["event_id"], CHILD, body)

    with processor_process(settings, tmp_path / "processor.log"):
        publish(settings, [*outgoing([turn(CHILD, 1)]), misrouted(2)])
        drain(settings)
        report = api.delete(f"/v1/users/{CHILD}", headers=admin).json()
        publish(settings, [misrouted(3), *outgoing([turn(CHILD, 4)])])  # a late one of the child
        drain(settings)

    assert report["redacted_dead_letters"] == 1
    with connect(settings.database_url) as conn:
        dead = conn.execute("SELECT user_id, reason, routing_key FROM dead_letters").fetchall()
    assert [(user, key) for user, _, key in dead] == [("kid-sender", None)] * 2
    assert all(CHILD not in reason and "an erased child's id" in reason for _, reason, _ in dead)
    verify = run_command(["replay", "--verify"], settings_env(settings))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "identical" in verify.stdout
    assert "2 of erased children skipped" in " ".join(verify.stdout.split())
    log_text = (tmp_path / "processor.log").read_text()
    assert "dead-lettered, 1 of erased children skipped" in log_text, "the late one is counted"
    history = run_command(["replay", "--user", "kid-sender"], settings_env(settings))
    assert history.returncode == 0, history.stderr
    assert "an erased child's id" in history.stdout and CHILD not in history.stdout


def test_an_erasure_works_beside_a_snapshot_kept_by_an_older_version(settings: Settings) -> None:
    """A swap's snapshot made before dead letters had ``routing_key`` must not stop erasures."""
    with connect(settings.database_url) as conn:
        conn.execute("CREATE SCHEMA replay_old_replaced")
        for table in ("friendships", "topic_metrics", "applied_events", "dead_letters"):
            conn.execute(
                f"CREATE TABLE replay_old_replaced.{table} (LIKE public.{table} INCLUDING ALL)"
            )
        conn.execute("ALTER TABLE replay_old_replaced.dead_letters DROP COLUMN routing_key")
        conn.execute(
            "CREATE TABLE replay_old_replaced.checkpoints AS SELECT * FROM public.checkpoints"
        )
        conn.execute(
            "INSERT INTO replay_old_replaced.friendships (user_id, score, events_applied) "
            "VALUES (%s, 5, 1)",
            (CHILD,),
        )
        report = erase_user(conn, CHILD, load_keys(settings))
        left = conn.execute(
            "SELECT count(*) FROM replay_old_replaced.friendships WHERE user_id = %s", (CHILD,)
        ).fetchone()
    assert report.removed.redacted_dead_letters == 0
    assert left == (0,), "the snapshot still names the erased child"
