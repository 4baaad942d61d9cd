"""A slow consumer: projection writes that take longer than the member timeout.

Two processors share the partitions; every projection write of the slow phase sleeps longer than
``MEMBER_TIMEOUT_S``, and small batches fill the feeds so the stream reader waits on
back-pressure. Heartbeats run off the slow path: both members' heartbeats advance *while* a
write sleeps, nobody is fenced, the stream connections the broker listed at the start are the
ones it lists at the end (no reconnect), and the result is the fold.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from processor.settings import Settings
from projections.database import connect
from testkit.services import Services
from tests.faults.scale import size
from tests.faults.support import (
    FaultReport,
    connection_label,
    log_text,
    reconnect_delays,
    slow_projection_writes,
    slow_writes_done,
    stream_connections,
    verify,
    wait_until,
)
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    synthetic_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MEMBER_TIMEOUT_S = 3.0
SLOW_WRITE_S = 4.0


def sleeping_writes(settings: Settings) -> list[tuple[int, datetime]]:
    """``(pid, query_start)`` of every processor session sleeping in a slowed write."""
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT pid, query_start FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'friendship-stream owner %' AND wait_event = 'PgSleep' "
            "ORDER BY query_start"
        ).fetchall()
    return [(int(pid), started) for pid, started in rows]


def still_sleeping(settings: Settings, write: tuple[int, datetime]) -> bool:
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query_start = %s "
            "AND wait_event = 'PgSleep'",
            write,
        ).fetchone()
    return row is not None


def heartbeats(settings: Settings) -> dict[str, datetime]:
    with connect(settings.database_url) as conn:
        return dict(conn.execute("SELECT member_id, heartbeat_at FROM members").fetchall())


def test_slow_projection_writes_do_not_stop_heartbeats_or_the_broker_connection(
    services: Services, settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    slow_writes = size(12, 40)
    wanted_observations = size(3, 10)
    bodies = synthetic_events(size(4_000, 20_000), users=400, seed=601)
    quick = settings.with_overrides(
        batch_size=50, threads=2, lease_interval_s=0.5, member_timeout_s=MEMBER_TIMEOUT_S
    )
    slow_projection_writes(settings, SLOW_WRITE_S, first=slow_writes)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    observations = 0
    with (
        processor_process(quick, logs[0]) as first,
        processor_process(quick, logs[1]) as second,
    ):
        readers = {f"friendship-stream {socket.gethostname()}:{p.pid}" for p in (first, second)}
        wait_until(lambda: len(heartbeats(settings)) == 2, "both members joined")
        publish(settings, outgoing(bodies))
        at_start: set[str] = set()

        def readers_listed() -> bool:
            at_start.clear()
            at_start.update(
                c["name"]
                for c in stream_connections(services, settings)
                if connection_label(c) in readers
            )
            return len(at_start) == 2

        wait_until(readers_listed, "both readers' connections in the broker's listing")
        deadline = time.monotonic() + 180
        seen: set[tuple[int, datetime]] = set()
        while observations < wanted_observations:
            assert time.monotonic() < deadline, "the slow phase did not progress"
            fresh = [w for w in sleeping_writes(settings) if w not in seen]
            if not fresh:
                if slow_writes_done(settings) >= slow_writes and not sleeping_writes(settings):
                    break  # the slow phase is over
                time.sleep(0.05)
                continue
            write = fresh[0]
            seen.add(write)
            before = heartbeats(settings)
            while still_sleeping(settings, write):
                now = heartbeats(settings)
                if len(now) == 2 and all(now[m] > before.get(m, now[m]) for m in now):
                    observations += 1
                    break
                time.sleep(0.05)
        wait_until(lambda: slow_writes_done(settings) >= slow_writes, "the slow phase to end")
        drain(settings)
        at_end = {
            c["name"]
            for c in stream_connections(services, settings)
            if connection_label(c) in readers
        }
        assert first.poll() is None and second.poll() is None
    text = "".join(log_text(path) for path in logs)
    verify(
        settings,
        fault_report,
        scenario=f"slow consumer: writes sleep {SLOW_WRITE_S:.0f} s > member timeout",
        rounds=slow_writes,
        valid=bodies,
        notes=f"heartbeats seen advancing during a sleeping write {observations} times; "
        "0 fenced, 0 reconnects",
    )
    assert observations >= wanted_observations, "heartbeats did not advance during slow writes"
    assert "missed its heartbeats" not in text, "a member was fenced"
    assert "membership check failed" not in text
    assert not any(reconnect_delays(path) for path in logs), "the broker connection was lost"
    assert "closed by the broker" not in text
    assert at_end == at_start, "the readers' broker connections changed"
