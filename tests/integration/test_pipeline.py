"""The pipeline end to end: real broker, real database, real processor processes.

Each test publishes through the ``events`` exchange and compares what the processor stored with
the sequential reference fold (``testkit.reference``) of what was published.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

from processor.publishing.publisher import OutgoingEvent
from processor.publishing.topology import declare_topology
from processor.reading.probes import read_first_offset, read_tail_offsets
from processor.settings import Settings
from testkit.reference import reference_fold
from testkit.services import Services, isolated_settings
from tests.integration.support import (
    assert_projections_equal,
    count,
    drain,
    drain_except,
    outgoing,
    processor_process,
    publish,
    read_stream_bodies,
    stored_projections,
    synthetic_events,
)


def test_20000_events_over_2000_users_equal_the_sequential_fold(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(20_000, users=2_000, seed=20)
    publish(settings, outgoing(bodies))
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    expected = reference_fold(bodies)
    assert_projections_equal(stored_projections(settings), expected)
    assert count(settings, "SELECT count(*) FROM applied_events") == 20_000
    # Every partition received events (the hash ring spreads users over all 16).
    assert count(settings, "SELECT count(*) FROM checkpoints WHERE committed_offset >= 0") == 16


def test_redelivered_and_republished_events_apply_once(settings: Settings, tmp_path: Path) -> None:
    bodies = synthetic_events(3_000, users=50, seed=7)
    first, second = bodies[:2_000], bodies[2_000:]
    # Re-publish part of the first half twice, interleaved with new events.
    republished = first[500:1_500]
    publish(settings, outgoing(first))
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
        publish(settings, outgoing(republished + second[:500] + republished + second[500:]))
        drain(settings)
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))
    assert count(settings, "SELECT sum(events_applied) FROM friendships") == 3_000


def test_invalid_bodies_are_dead_lettered_while_the_partition_keeps_progressing(
    settings: Settings, tmp_path: Path
) -> None:
    # One user, so every event (valid or not) lands in the same partition.
    valid = [
        json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "type": "friendship.adjusted",
                "user_id": "solo-user",
                "occurred_at": f"2024-05-01T10:00:{second:02d}+02:00",
                "data": {"delta": delta, "reason": "test"},
            }
        ).encode()
        for second, delta in enumerate([-5, 10, 30, -100, 7, 50])
    ]
    invalid = [
        b"not json at all",
        b"[1, 2, 3]",
        json.dumps({"event_id": "nope", "type": "friendship.adjusted"}).encode(),
        json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "type": "friendship.adjusted",
                "user_id": "solo-user",
                "occurred_at": "2024-05-01T10:00:00",
                "data": {"delta": 1, "reason": "naive time"},
            }
        ).encode(),
    ]
    stream: list[OutgoingEvent] = []
    for index, body in enumerate(valid):
        stream.extend(outgoing([body]))
        if index < len(invalid):
            stream.append(OutgoingEvent(f"bad-{index}", "solo-user", invalid[index]))
    publish(settings, stream)
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)

    assert_projections_equal(stored_projections(settings), reference_fold(valid))
    assert count(settings, "SELECT count(*) FROM dead_letters") == len(invalid)
    from projections.database import connect  # noqa: PLC0415

    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT partition, log_offset, field, reason, raw FROM dead_letters ORDER BY log_offset"
        ).fetchall()
        partitions = {r[0] for r in conn.execute("SELECT DISTINCT partition FROM applied_events")}
    assert [bytes(r[4]) for r in rows] == invalid
    assert [r[1] for r in rows] == [1, 3, 5, 7]  # interleaved offsets in the same partition
    assert {r[0] for r in rows} == partitions  # same partition as the valid events
    assert rows[0][2] == "" and "not valid JSON" in rows[0][3]
    assert rows[1][2] == "" and "object" in rows[1][3]
    assert rows[2][2] in {"event_id", "user_id", "occurred_at", "data"}
    assert rows[3][2] == "occurred_at"  # the naive timestamp is named
    assert "no time zone" in rows[3][3]


def test_processor_killed_mid_stream_and_restarted_ends_with_exactly_the_fold(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(20_000, users=2_000, seed=99)
    publish(settings, outgoing(bodies))
    small_batches = settings.with_overrides(batch_size=100, threads=2)
    with processor_process(small_batches, tmp_path / "first.log") as first:
        deadline = time.monotonic() + 120
        while count(settings, "SELECT count(*) FROM applied_events") < 2_000:
            assert first.poll() is None, "processor exited early"
            assert time.monotonic() < deadline, "processor made no progress"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    applied_at_kill = count(settings, "SELECT count(*) FROM applied_events")
    assert applied_at_kill < 20_000, "the kill came too late to be mid-stream"
    with processor_process(settings, tmp_path / "second.log"):
        drain(settings)
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))
    assert count(settings, "SELECT sum(events_applied) FROM friendships") == 20_000


def test_sigterm_finishes_the_batch_in_flight_and_exits_0(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(10_000, users=500, seed=3)
    publish(settings, outgoing(bodies))
    with processor_process(
        settings.with_overrides(batch_size=200), tmp_path / "processor.log"
    ) as process:
        deadline = time.monotonic() + 120
        while count(settings, "SELECT count(*) FROM applied_events") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    # Whatever was committed is consistent: no applied event lies beyond its checkpoint, and
    # every friendship counts exactly the applied events of its user.
    beyond = count(
        settings,
        "SELECT count(*) FROM applied_events a JOIN checkpoints c USING (partition) "
        "WHERE a.log_offset > c.committed_offset",
    )
    assert beyond == 0
    assert count(settings, "SELECT count(*) FROM applied_events") == count(
        settings, "SELECT coalesce(sum(events_applied), 0) FROM friendships"
    )
    with processor_process(settings, tmp_path / "again.log"):
        drain(settings)
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))


def test_offsets_with_segment_holes_are_processed_without_loss(
    services: Services, tmp_path: Path
) -> None:
    # Tiny segments: RabbitMQ gives each new segment's header chunk an offset consumers never
    # see, so the offsets the processor reads have holes (every few dozen events here).
    with isolated_settings(services, stream_max_segment_size_bytes=20_000) as settings:
        declare_topology(settings)
        bodies = synthetic_events(5_000, users=40, seed=11)
        publish(settings, outgoing(bodies))
        with processor_process(settings, tmp_path / "processor.log"):
            drain(settings)
        assert_projections_equal(stored_projections(settings), reference_fold(bodies))
        assert count(settings, "SELECT sum(committed_offset + 1) FROM checkpoints") > 5_000


def test_a_truncated_log_stops_only_its_partition_with_a_loud_error(
    services: Services, tmp_path: Path
) -> None:
    retention = {"stream_max_length_bytes": 30_000, "stream_max_segment_size_bytes": 10_000}
    with isolated_settings(services, **retention) as settings:
        declare_topology(settings)
        lost = synthetic_events(2_000, users=1, seed=5)  # one user: one partition, truncated
        for start in range(0, len(lost), 100):  # many chunks, so retention drops segments
            publish(settings, outgoing(lost[start : start + 100]))
        tails = asyncio.run(read_tail_offsets(settings))
        truncated = next(p for p, tail in tails.items() if tail >= 0)
        assert (asyncio.run(read_first_offset(settings, truncated)) or 0) > 0
        others = [
            body
            for body in synthetic_events(400, users=200, seed=6)
            if json.loads(body)["user_id"] != json.loads(lost[0])["user_id"]
        ]
        publish(settings, outgoing(others))
        log_path = tmp_path / "processor.log"
        with processor_process(settings, log_path) as process:
            deadline = time.monotonic() + 60
            while "the log is truncated" not in log_path.read_text():
                assert time.monotonic() < deadline, "no truncation error was logged"
                time.sleep(0.1)
            statuses = drain_except(settings, truncated)
            assert process.poll() is None, "the processor must keep running"
        log_text = log_path.read_text()
        line = next(x for x in log_text.splitlines() if "the log is truncated" in x)
        assert f"partition {truncated} (events.p{truncated:03d}): offsets 0.." in line
        assert "refusing to skip them" in line and "ERROR" in line
        assert statuses[truncated].checkpoint == -1
        assert (
            count(settings, f"SELECT count(*) FROM applied_events WHERE partition = {truncated}")
            == 0
        )
        # Every other partition was fully applied; the users of the stopped one are untouched.
        stopped_users = {json.loads(b)["user_id"] for b in read_stream_bodies(settings, truncated)}
        expected = {
            user: projection
            for user, projection in reference_fold(others).items()
            if user not in stopped_users
        }
        assert_projections_equal(stored_projections(settings), expected)
