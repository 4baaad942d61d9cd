"""Replay against the real broker and database: rebuild, verify, swap, history, refusals.

Every test runs the real command (``python -m processor replay ...``) in a subprocess next to a
real processor process, in its own vhost and database, and compares with the live projections
and with the sequential reference fold of what was published.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from processor.publishing.publisher import OutgoingEvent
from processor.publishing.topology import declare_topology
from processor.settings import Settings, stream_name
from projections.database import connect
from testkit.reference import reference_fold
from testkit.services import Services, isolated_settings, settings_env
from tests.integration.support import (
    assert_projections_equal,
    count,
    drain,
    outgoing,
    processor_process,
    publish,
    stored_projections,
    stream_producer,
    synthetic_events,
)

REPLAY_TIMEOUT_S = 300
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FAR_AHEAD_SITECUSTOMIZE = '''
"""Moves this process's wall clock 40 years ahead at the Python level (time.time, time_ns)."""
import time as _time

_SHIFT_S = 40 * 365.25 * 86_400
_real_time, _real_time_ns = _time.time, _time.time_ns
_time.time = lambda: _real_time() + _SHIFT_S
_time.time_ns = lambda: _real_time_ns() + int(_SHIFT_S * 1e9)
'''


def replay(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m processor replay ARGS`` for ``settings``; stdout and stderr captured."""
    environment = settings_env(settings)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "processor", "replay", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=REPLAY_TIMEOUT_S,
        check=False,
    )


def invalid_events(users: Sequence[str], how_many: int, seed: int) -> list[OutgoingEvent]:
    """Invalid bodies routed like real users' events (so they spread over the partitions)."""
    rng = random.Random(seed)
    result = []
    for index in range(how_many):
        user = rng.choice(users)
        kind = index % 5
        base: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "type": "friendship.adjusted",
            "user_id": user,
            "occurred_at": "2024-02-01T10:00:00+02:00",
            "data": {"delta": 3, "reason": "invalid on purpose"},
        }
        if kind == 0:
            body = b"not json {" + str(index).encode()
        elif kind == 1:
            body = json.dumps([1, 2, index]).encode()
        elif kind == 2:
            body = json.dumps({**base, "occurred_at": "2024-02-01T10:00:00"}).encode()
        elif kind == 3:
            body = json.dumps({**base, "type": "robot.danced"}).encode()
        else:
            body = json.dumps({**base, "data": {"delta": 500, "reason": "too much"}}).encode()
        result.append(OutgoingEvent(f"invalid-{index}", user, body))
    return result


def write_raw_entries(settings: Settings, partition: int, entries: Sequence[bytes]) -> None:
    """Append entries that are not AMQP messages to a partition stream (stream protocol)."""

    async def write() -> None:
        producer = stream_producer(settings)
        await producer.start()
        try:
            for entry in entries:
                await producer.send_wait(stream_name(partition), entry)
        finally:
            await producer.close()

    asyncio.run(write())


def user_ids(bodies: Sequence[bytes]) -> list[str]:
    return sorted({json.loads(b)["user_id"] for b in bodies})


def dead_letter_rows(settings: Settings, schema: str = "public") -> list[tuple[Any, ...]]:
    with connect(settings.database_url) as conn:
        return conn.execute(
            f"SELECT id, partition, log_offset, event_id, field, reason, raw, dead_lettered_at "
            f"FROM {schema}.dead_letters ORDER BY id"
        ).fetchall()


def applied_rows(settings: Settings) -> list[tuple[Any, ...]]:
    with connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT event_id, partition, log_offset, user_id, type, occurred_at "
            "FROM applied_events ORDER BY event_id"
        ).fetchall()


def replay_schemas(settings: Settings) -> list[str]:
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'replay%' ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"replay exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def test_live_verify_and_swap_agree_on_20000_events_with_duplicates_and_invalid_bodies(
    settings: Settings, tmp_path: Path
) -> None:
    # Few users, so scores hit 0 and 100 often: clamping makes the order of events matter.
    bodies = synthetic_events(20_000, users=400, seed=41)
    invalid = invalid_events(user_ids(bodies), 150, seed=42)
    stream = outgoing(bodies)
    for index, bad in enumerate(invalid):  # interleaved with the valid events
        stream.insert(index * 130, bad)
    duplicates = outgoing(bodies[3_000:4_000])
    shouted = [  # the same event ids in upper case: still duplicates
        OutgoingEvent(
            e.event_id.upper(),
            e.user_id,
            e.body.replace(e.event_id.encode(), e.event_id.upper().encode()),
        )
        for e in outgoing(bodies[9_000:9_100])
    ]
    publish(settings, stream[:10_000])
    write_raw_entries(settings, 3, [b"\x01 not an AMQP message", b"\xff\xfe"])
    publish(settings, stream[10_000:])
    write_raw_entries(settings, 11, [b"raw bytes"])
    publish(settings, duplicates + shouted)

    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
        live = stored_projections(settings)
        live_dead = dead_letter_rows(settings)
        live_applied = applied_rows(settings)
        assert_projections_equal(live, reference_fold(bodies))
        assert len(live_dead) == len(invalid) + 3
        assert sum("not an AMQP 1.0 message" in str(row[5]) for row in live_dead) == 3
        assert len(live_applied) == len(bodies)

        verified = replay(settings, "--verify")
        assert_ok(verified)
        assert "live and replay are identical" in verified.stdout
        assert "events/s" in verified.stdout and "raw stream read" in verified.stdout
        assert replay_schemas(settings) == [], "verify must drop its shadow schema"

        swapped = replay(settings, "--swap")
        assert_ok(swapped)
        assert "swap:" in swapped.stdout
        drain(settings)
        assert_projections_equal(stored_projections(settings), live)
        assert applied_rows(settings) == live_applied
        # Dead letters keep their ids and times across the swap (the list's order and cursors).
        assert dead_letter_rows(settings) == live_dead
        (replaced,) = replay_schemas(settings)
        assert replaced.endswith("_replaced")
        assert dead_letter_rows(settings, replaced) == live_dead

        again = replay(settings, "--verify", "--no-read-rate")
        assert_ok(again)
        assert "live and replay are identical" in again.stdout
    assert "fenced" not in (tmp_path / "processor.log").read_text()


def test_verify_reports_a_corrupted_live_row_with_the_user_and_both_values(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(3_000, users=120, seed=8)
    publish(settings, outgoing(bodies))
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    expected = reference_fold(bodies)
    victim = sorted(expected)[7]
    true_score = expected[victim]["score"]
    wrong_score = (true_score + 37) % 101
    topic_victim = sorted(expected)[11]
    topic = sorted(expected[topic_victim]["topics"])[0]
    true_turns = expected[topic_victim]["topics"][topic]["turns"]
    with connect(settings.database_url) as conn:
        conn.execute("UPDATE friendships SET score = %s WHERE user_id = %s", (wrong_score, victim))
        conn.execute(
            "UPDATE topic_metrics SET turns = turns + 5 WHERE user_id = %s AND topic = %s",
            (topic_victim, topic),
        )

    result = replay(settings, "--verify", "--no-read-rate")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "DIFFER in 2 rows" in result.stdout
    friendship_line = next(
        line for line in result.stdout.splitlines() if victim in line and "score:" in line
    )
    assert f"score: live {wrong_score}, replay {true_score}" in friendship_line
    topic_line = next(
        line for line in result.stdout.splitlines() if topic_victim in line and "turns:" in line
    )
    assert f"topic {topic}" in topic_line
    assert f"turns: live {true_turns + 5}, replay {true_turns}" in topic_line
    assert replay_schemas(settings) == []


def test_verify_and_swap_while_events_keep_arriving_end_with_the_fold_of_all_published(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(80_000, users=600, seed=77)
    first, rest = bodies[:8_000], bodies[8_000:]
    publish(settings, outgoing(first))
    published: list[bytes] = list(first)
    swap_done = threading.Event()
    publisher_failed: list[BaseException] = []
    after_swap_chunks = 4

    def keep_publishing() -> None:
        remaining = list(rest)
        extra = after_swap_chunks
        try:
            while remaining and (not swap_done.is_set() or extra > 0):
                if swap_done.is_set():
                    extra -= 1
                chunk, remaining = remaining[:150], remaining[150:]
                publish(settings, outgoing(chunk))
                published.extend(chunk)
                time.sleep(0.1)  # a steady trickle, well below what the processor keeps up with
            if extra > 0:
                raise AssertionError("the pool ran out before the swap was over")
        except BaseException as exc:
            publisher_failed.append(exc)

    # Small batches: every owner connection runs the same statements many times, so psycopg
    # has prepared them (after 5 runs) before the swap moves the tables under them.
    live_settings = settings.with_overrides(batch_size=50, threads=2)
    with processor_process(live_settings, tmp_path / "processor.log") as processor:
        drain(settings)
        with connect(settings.database_url) as prepared_conn:
            probe = "SELECT count(*) FROM applied_events"
            prepared_conn.execute(probe, prepare=True)
            publisher = threading.Thread(target=keep_publishing)
            publisher.start()
            try:
                # Verify compares at one snapshot of live while live keeps committing.
                verified = replay(settings, "--verify", "--no-read-rate", "--batch-size", "2000")
                swapped = replay(settings, "--swap", "--no-read-rate", "--batch-size", "2000")
            finally:
                swap_done.set()
                publisher.join(timeout=120)
            assert not publisher_failed, publisher_failed
            assert_ok(verified)
            assert "live and replay are identical" in verified.stdout
            assert_ok(swapped)
            assert processor.poll() is None, "the processor died during the swap"
            drain(settings)
            row = prepared_conn.execute(probe, prepare=True).fetchone()
            assert row is not None
            via_prepared = int(row[0])

    assert len(published) > len(first), "nothing was published during the swap"
    assert_projections_equal(stored_projections(settings), reference_fold(published))
    assert count(settings, "SELECT count(*) FROM applied_events") == len(published)
    (replaced,) = replay_schemas(settings)
    frozen = count(settings, f"SELECT count(*) FROM {replaced}.applied_events")
    # The prepared statement was re-planned onto the new table: it sees events after the swap.
    assert via_prepared == len(published) > frozen
    assert count(settings, f"SELECT sum(committed_offset) FROM {replaced}.checkpoints") > 0
    log = (tmp_path / "processor.log").read_text()
    # No owner was fenced: its batches waited on the swap's lock, then went on.
    assert "fenced" not in log and "CheckpointConflict" not in log, log[-3000:]


def test_replay_with_the_clock_far_ahead_gives_the_same_result(
    services: Services, tmp_path: Path
) -> None:
    """The replay process runs 40 years ahead: Python's clock (a sitecustomize shifting
    ``time.time``) and, where libfaketime is installed, the C library's realtime clock too.
    Tiny stream segments give the offsets holes as well."""
    (tmp_path / "sitecustomize.py").write_text(FAR_AHEAD_SITECUSTOMIZE)
    far_ahead = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    if LIBFAKETIME.exists():
        far_ahead.update(
            {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+40y", "DONT_FAKE_MONOTONIC": "1"}
        )
    with isolated_settings(services, stream_max_segment_size_bytes=20_000) as settings:
        declare_topology(settings)
        bodies = synthetic_events(4_000, users=60, seed=12)
        invalid = invalid_events(user_ids(bodies), 20, seed=13)
        publish(settings, outgoing(bodies) + invalid)
        with processor_process(settings, tmp_path / "processor.log"):
            drain(settings)
        live = stored_projections(settings)
        live_dead = dead_letter_rows(settings)
        assert count(settings, "SELECT sum(committed_offset + 1) FROM checkpoints") > 4_020

        clock = subprocess.run(
            [
                sys.executable,
                "-c",
                "import time, datetime; print(time.time(), datetime.datetime.now().year)",
            ],
            env={**settings_env(settings), **far_ahead},
            capture_output=True,
            text=True,
            check=True,
        )
        seconds, year = clock.stdout.split()
        assert float(seconds) > 2_000_000_000  # after 2033: the Python clock is far ahead
        if LIBFAKETIME.exists():
            assert int(year) >= 2060

        verified = replay(settings, "--verify", env=far_ahead)
        assert_ok(verified)
        assert "live and replay are identical" in verified.stdout
        swapped = replay(settings, "--swap", "--drop-replaced", env=far_ahead)
        assert_ok(swapped)

        assert_projections_equal(stored_projections(settings), live)
        assert_projections_equal(live, reference_fold(bodies))
        assert dead_letter_rows(settings) == live_dead
        assert replay_schemas(settings) == []


def test_a_truncated_log_is_refused_naming_the_partition_and_the_missing_range(
    services: Services,
) -> None:
    retention = {"stream_max_length_bytes": 30_000, "stream_max_segment_size_bytes": 10_000}
    with isolated_settings(services, **retention) as settings:
        declare_topology(settings)
        lost = synthetic_events(2_000, users=1, seed=5)  # one user: one partition, truncated
        for start in range(0, len(lost), 100):  # many chunks, so retention drops segments
            publish(settings, outgoing(lost[start : start + 100]))

        result = replay(settings, "--verify")

        assert result.returncode == 1
        assert "the log is truncated" in result.stderr
        line = next(x for x in result.stderr.splitlines() if "the log is truncated" in x)
        partition = int(line.split("partition ")[1].split(" ")[0])
        assert f"(events.p{partition:03d}): offsets 0.." in line
        first_missing_end = int(line.split("offsets 0..")[1].split(" ")[0])
        assert first_missing_end > 0
        assert replay_schemas(settings) == []


def test_user_history_shows_order_clamping_duplicates_and_dead_letters(
    settings: Settings, tmp_path: Path
) -> None:
    def adjusted(second: int, delta: int, event_id: str | None = None) -> bytes:
        return json.dumps(
            {
                "event_id": event_id or str(uuid.uuid4()),
                "type": "friendship.adjusted",
                "user_id": "solo-user",
                "occurred_at": f"2024-05-01T10:00:{second:02d}+02:00",
                "data": {"delta": delta, "reason": f"step {second}"},
            }
        ).encode()

    solo = [adjusted(s, d) for s, d in enumerate([-5, 10, 30, -100, 7, 50])]
    naive = json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "friendship.adjusted",
            "user_id": "solo-user",
            "occurred_at": "2024-05-01T10:00:00",
            "data": {"delta": 40, "reason": "naive"},
        }
    ).encode()
    others = synthetic_events(500, users=30, seed=2)
    stream = [
        *outgoing(others[:250] + solo[:3]),
        OutgoingEvent("naive", "solo-user", naive),
        *outgoing(solo[3:] + solo[1:2] + others[250:]),
    ]
    publish(settings, stream)
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)

    result = replay(settings, "--user", "solo-user")

    assert_ok(result)
    out = result.stdout
    assert "solo-user: score 57 (buddy), 6 events applied" in out
    assert "live: score 57, 6 events (matches)" in out
    assert out.count("clamped") == 2  # -5 from 0, and -100 from 40
    assert "dead letter: occurred_at" in out
    # A duplicate changed nothing: no delta (its +10) and no score next to "no effect".
    duplicate_rows = [line for line in out.splitlines() if "duplicate of offset" in line]
    assert len(duplicate_rows) == 1
    assert "+10" not in duplicate_rows[0]
    # Times in UTC with Z, as the HTTP API writes them (the events say +02:00).
    assert "2024-05-01T08:00:01Z" in out
    assert "+02:00" not in out
    assert "+00:00" not in out

    unknown = replay(settings, "--user", "nobody-at-all")
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert "nobody-at-all: no events of this user in the log" in unknown.stdout
    assert "score 0 (stranger)" not in unknown.stdout


def test_prepared_statements_follow_a_table_moved_in_by_name(settings: Settings) -> None:
    """What the swap relies on, shown directly: a statement psycopg prepared is re-analysed by
    PostgreSQL after ``ALTER TABLE ... SET SCHEMA`` and then reads the table now at that name."""
    with connect(settings.database_url) as reader, connect(settings.database_url) as admin:
        reader.execute("INSERT INTO friendships VALUES ('old-row', 1, 1, now())")
        statement = "SELECT count(*), min(user_id) FROM friendships"
        assert reader.execute(statement, prepare=True).fetchone() == (1, "old-row")
        admin.execute("CREATE SCHEMA replay_probe")
        admin.execute("CREATE TABLE replay_probe.friendships (LIKE friendships INCLUDING ALL)")
        admin.execute("INSERT INTO replay_probe.friendships VALUES ('new-a', 2, 2, now())")
        admin.execute("INSERT INTO replay_probe.friendships VALUES ('new-b', 3, 3, now())")
        with admin.transaction():
            admin.execute("CREATE SCHEMA replay_probe_replaced")
            admin.execute("ALTER TABLE friendships SET SCHEMA replay_probe_replaced")
            admin.execute("ALTER TABLE replay_probe.friendships SET SCHEMA public")
        assert reader.execute(statement, prepare=True).fetchone() == (2, "new-a")
        prepared = reader.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert prepared is not None and prepared[0] >= 1
