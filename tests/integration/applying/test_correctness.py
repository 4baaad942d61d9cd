"""Correctness gaps found by probing with small hostile inputs, through the real broker and
database: new rows under concurrency, misrouted events, reused event ids, unreadable entries."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pika
from rstream.compression import (
    CompressionType,
    NoneCompressionCodec,
    StreamCompressionCodecs,
)

from processor.applying.applier import PartitionApplier
from processor.applying.batch import BatchResult, apply_batch
from processor.applying.checkpoint import ensure_checkpoints
from processor.applying.postgres import PostgresStore
from processor.privacy.keys import load_keys
from processor.publishing.publisher import OutgoingEvent
from processor.reading.log_record import LogRecord
from processor.settings import Settings, stream_name
from projections.database import connect
from testkit.services import Services, isolated_settings
from tests.integration.support import (
    count,
    drain,
    outgoing,
    processor_process,
    publish,
    reject_rows_of,
    settings_env,
    stored_projections,
    stream_producer,
    synthetic_events,
)
from tests.strategies import make_event

ADJUSTED = "friendship.adjusted"


def adjusted(user: str, delta: int, event_id: str | None = None) -> bytes:
    data = {"delta": delta, "reason": "probe"}
    return make_event(ADJUSTED, user, "2024-06-01T12:00:00Z", data, event_id)


def _waiting_backends(settings: Settings) -> int:
    return count(
        settings,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()",
    )


def _wait_for_waiting(settings: Settings, backends: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _waiting_backends(settings) < backends:
        assert time.monotonic() < deadline, f"fewer than {backends} backends waiting on a lock"
        time.sleep(0.02)


def test_two_transactions_on_a_new_user_lose_no_update(settings: Settings) -> None:
    # Regression: FOR UPDATE locked no row for a new user, so both batches folded from the
    # empty state and the later upsert overwrote the earlier: score 10, events_applied 1.
    with connect(settings.database_url) as conn:
        ensure_checkpoints(conn, settings.partitions)
    results: dict[int, BatchResult] = {}
    errors: list[BaseException] = []

    def apply(partition: int, body: bytes) -> None:
        try:
            with connect(settings.database_url) as conn:
                results[partition] = apply_batch(
                    PostgresStore(conn),
                    partition,
                    [LogRecord(0, body)],
                    -1,
                    f"owner-{partition}",
                    lease_epoch=0,
                    keys=load_keys(settings),
                )
        except BaseException as exc:
            errors.append(exc)

    with connect(settings.database_url) as blocker:
        # Hold every batch at its last statement (the advance, which inserts into the
        # checkpoint log and carries the upserts), with its missing rows created but not
        # committed.
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE checkpoint_log IN EXCLUSIVE MODE")
        first = threading.Thread(target=apply, args=(0, adjusted("new-kid", 10)))
        first.start()
        _wait_for_waiting(settings, 1)
        second = threading.Thread(target=apply, args=(1, adjusted("new-kid", 10)))
        second.start()
        _wait_for_waiting(settings, 2)  # the second waits for the first (row or log lock)
        blocker.execute("COMMIT")
        first.join(60)
        second.join(60)
    assert not errors, errors
    assert results[0].applied == results[1].applied == 1
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT score, events_applied FROM friendships WHERE user_id = 'new-kid'"
        ).fetchone()
    assert row == (20, 2)


def _publish_with_routing_keys(settings: Settings, messages: Sequence[tuple[str, bytes]]) -> None:
    """Publish ``(routing key, body)`` in one AMQP transaction, as a careless producer might."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        channel.tx_select()
        for routing_key, body in messages:
            channel.basic_publish(
                "events",
                routing_key,
                body,
                pika.BasicProperties(content_type="application/json", delivery_mode=2),
                mandatory=True,
            )
        channel.tx_commit()
    finally:
        connection.close()


def test_an_event_routed_by_another_key_than_its_user_id_is_dead_lettered(
    settings: Settings, tmp_path: Path
) -> None:
    right, wrong = str(uuid.uuid4()), str(uuid.uuid4())
    _publish_with_routing_keys(
        settings, [("u", adjusted("u", 10, right)), ("u#other-key", adjusted("u", 10, wrong))]
    )
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    with connect(settings.database_url) as conn:
        friendship = conn.execute(
            "SELECT score, events_applied FROM friendships WHERE user_id = 'u'"
        ).fetchone()
        applied = conn.execute("SELECT event_id::text, partition FROM applied_events").fetchall()
        dead = conn.execute(
            "SELECT event_id, field, reason, partition FROM dead_letters"
        ).fetchall()
    assert friendship == (10, 1)
    assert [event_id for event_id, _ in applied] == [right]
    assert len(dead) == 1
    event_id, field, reason, partition = dead[0]
    assert (event_id, field) == (wrong, "user_id")
    assert "routing key 'u#other-key' is not the user_id 'u'" in reason
    assert partition != applied[0][1]  # the key chose another partition


def _apply_log(settings: Settings, bodies: Sequence[bytes], batch_size: int) -> None:
    with connect(settings.database_url) as conn:
        ensure_checkpoints(conn, settings.partitions)
        checkpoint = -1
        records = [LogRecord(offset, body) for offset, body in enumerate(bodies)]
        for start in range(0, len(records), batch_size):
            result = apply_batch(
                PostgresStore(conn),
                0,
                records[start : start + batch_size],
                checkpoint,
                "t",
                keys=load_keys(settings),
            )
            checkpoint = result.last_offset


def _outcome(settings: Settings) -> tuple[object, ...]:
    with connect(settings.database_url) as conn:
        applied = conn.execute(
            "SELECT event_id::text, user_id, log_offset FROM applied_events ORDER BY 1"
        ).fetchall()
        dead = conn.execute(
            "SELECT log_offset, event_id, field, reason FROM dead_letters ORDER BY 1"
        ).fetchall()
    return applied, dead, stored_projections(settings)


def test_an_event_id_reused_for_another_user_gets_one_answer_whatever_the_batching(
    settings: Settings, services: Services
) -> None:
    # Regression: in the same batch the second copy was a duplicate, in a later batch a dead
    # letter, so live (BATCH_SIZE=1) and replay (large batches) disagreed.
    reused = str(uuid.uuid4())
    bodies = [
        adjusted("kid-a", 5, reused),
        adjusted("kid-b", 7, reused),
        adjusted("kid-a", 5, reused),
        adjusted("kid-b", 1),
    ]
    _apply_log(settings, bodies, batch_size=len(bodies))
    with isolated_settings(services) as one_by_one:
        _apply_log(one_by_one, bodies, batch_size=1)
        assert _outcome(one_by_one) == _outcome(settings)
    applied, dead, projections = _outcome(settings)
    assert [(row[1], row[2]) for row in applied if row[0] == reused] == [("kid-a", 0)]
    assert [(row[0], row[2]) for row in dead] == [(1, "event_id")]
    assert "(partition 0, offset 0)" in dead[0][3] and "kid-a" not in dead[0][3]
    assert projections["kid-a"]["score"] == 5
    assert projections["kid-b"]["score"] == 1


class _FlaggedZstd(NoneCompressionCodec):
    """Writes a sub-entry batch uncompressed but flagged as zstd (type 4), which the reader
    does not support: the broker stores it as it is."""

    def compression_type(self) -> int:
        return CompressionType.Zstd.value


def write_zstd_flagged_batch(settings: Settings, partition: int, bodies: Sequence[bytes]) -> None:
    """Append one sub-entry batch flagged with zstd compression to a partition stream."""

    async def write() -> None:
        producer = stream_producer(settings)
        StreamCompressionCodecs.register_codec(CompressionType.Zstd, _FlaggedZstd())
        await producer.start()
        try:
            confirmed = asyncio.Event()
            await producer.send_sub_entry(
                stream_name(partition),
                list(bodies),
                compression_type=CompressionType.Zstd,
                on_publish_confirm=lambda _status: confirmed.set(),
            )
            await asyncio.wait_for(confirmed.wait(), timeout=30)
        finally:
            await producer.close()

    asyncio.run(write())


def test_hostile_inputs_mixed_into_traffic_are_handled_and_replay_verifies_identical(
    settings: Settings, tmp_path: Path
) -> None:
    traffic = outgoing(synthetic_events(3_000, users=60, seed=10))
    reused = str(uuid.uuid4())
    publish(settings, traffic[:1_000])
    write_zstd_flagged_batch(settings, 3, [adjusted("zstd-kid", 1) for _ in range(3)])
    _publish_with_routing_keys(
        settings,
        [
            ("kid-x", adjusted("kid-x", 3, reused)),
            ("kid-y", adjusted("kid-y", 4, reused)),  # same id, another user
            ("kid-x#elsewhere", adjusted("kid-x", 50)),  # misrouted
        ],
    )
    late = make_event(
        ADJUSTED, "kid-t", "2024-12-31T23:59:59.9999996Z", {"delta": 1, "reason": "edge"}
    )
    surrogate = adjusted("kid-t", 1).replace(b'"probe"', b'"\\ud800"')
    publish(settings, [*outgoing([late]), OutgoingEvent("surrogate", "kid-t", surrogate)])
    publish(settings, traffic[1_000:])
    # Live one event per batch; replay below uses its own (large) batches.
    with processor_process(settings.with_overrides(batch_size=1), tmp_path / "p.log"):
        drain(settings)

    with connect(settings.database_url) as conn:
        dead = conn.execute("SELECT partition, field, reason FROM dead_letters").fetchall()
        statuses = conn.execute("SELECT partition, committed_offset FROM checkpoints").fetchall()
    reasons = sorted(reason for _, _, reason in dead)
    assert len(dead) == 4, reasons
    assert any("lone UTF-16 surrogate" in r for r in reasons)
    assert any("sub-entry compression 4 (zstd) is not supported" in r for r in reasons)
    assert any("3 records from offset" in r for r in reasons)
    assert any("routing key 'kid-x#elsewhere' is not the user_id 'kid-x'" in r for r in reasons)
    reuse = [r for r in reasons if "already applied for another user (partition" in r]
    assert len(reuse) == 1 and "kid-x" not in reuse[0], "names where, never whose"
    assert count(settings, "SELECT count(*) FROM friendships WHERE user_id = 'zstd-kid'") == 0
    with connect(settings.database_url) as conn:
        last = conn.execute(
            "SELECT last_event_at FROM friendships WHERE user_id = 'kid-t'"
        ).fetchone()
    # Truncated to the microsecond, not rounded into the next year.
    assert last == (datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),)
    assert all(offset >= 0 for _, offset in statuses)

    verify = subprocess.run(
        [sys.executable, "-m", "processor", "replay", "--verify", "--no-read-rate"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verify: live and replay are identical" in verify.stdout


def test_a_record_the_database_rejects_is_dead_lettered_alike_live_and_replay(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    # One partition's batch: the database refuses one user's row (a DataError, as for a value
    # out of a column's range). Live isolates the culprit; replay's applier does the same.
    bodies = [adjusted(user, 3) for user in ("kid-1", "poison-kid", "kid-2", "poison-kid")]
    records = [LogRecord(offset, body) for offset, body in enumerate(bodies)]
    with isolated_settings(services) as replayed:
        for target in (settings, replayed):
            with connect(target.database_url) as conn:
                ensure_checkpoints(conn, target.partitions)
                conn.execute(reject_rows_of("poison-kid", "INSERT OR UPDATE"))
        with connect(replayed.database_url) as conn, conn.transaction():
            replay_result = PartitionApplier(0, -1, "replay test", load_keys(replayed)).apply(
                PostgresStore(conn), records
            )
        replay_dead = count(replayed, "SELECT count(*) FROM dead_letters")
        replay_outcome = _outcome(replayed)
    publish(settings, outgoing(bodies))
    with processor_process(settings, tmp_path / "p.log"):
        drain(settings)
    _, dead, projections = _outcome(settings)
    assert sorted(projections) == ["kid-1", "kid-2"]
    assert len(dead) == 2
    assert all("the database rejected this event" in row[3] for row in dead)
    assert (replay_result.applied, replay_result.dead_lettered, replay_dead) == (2, 2, 2)
    assert sorted(replay_outcome[2]) == ["kid-1", "kid-2"]
    assert [row[3] for row in replay_outcome[1]] == [row[3] for row in dead]
