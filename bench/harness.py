"""What every step shares: the services, an isolated deployment, timed publishing, and a precise
"every partition committed up to its tail" wait that polls the checkpoint table.

Every step runs in its own vhost and database (``testkit.services.isolated_settings``), deleted
afterwards; nothing here touches the default vhost or the ``events`` database.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from processor.applying.checkpoint import ensure_checkpoints, read_checkpoints
from processor.publishing.publisher import AsyncPublisher, OutgoingEvent
from processor.publishing.topology import declare_topology
from processor.reading.probes import read_tail_offsets
from processor.settings import Settings
from projections.database import connect
from testkit.services import Services, isolated_settings, local_services

#: Seconds between two reads of the checkpoint table while waiting for a drain.
DRAIN_POLL_S: Final = 0.01


class BenchError(RuntimeError):
    """A step could not run (services down, a timeout); the message says which and why."""


def require_services() -> Services:
    """The machine's RabbitMQ and PostgreSQL.

    Raises:
        BenchError: they do not answer (``just services`` starts them).
    """
    services = local_services()
    if services is None:
        raise BenchError(
            "RabbitMQ (5672, 5552, 15672) or PostgreSQL (5432) does not answer on this machine; "
            "run `just services`"
        )
    return services


@contextmanager
def deployment(services: Services, **overrides: object) -> Iterator[Settings]:
    """A fresh vhost (exchange and streams declared) and a migrated database with checkpoint rows;
    both are deleted on exit."""
    with isolated_settings(services, **overrides) as settings:
        declare_topology(settings)
        with connect(settings.database_url) as conn:
            ensure_checkpoints(conn, settings.partitions)
        yield settings


async def _publish_timed(settings: Settings, events: Sequence[OutgoingEvent], warmup: int) -> float:
    publisher = AsyncPublisher(settings)
    await publisher.connect()
    try:
        if warmup:
            await publisher.publish(events[:warmup])
        started = time.perf_counter()
        await publisher.publish(events[warmup:])
        return time.perf_counter() - started
    finally:
        await publisher.close()


def publish_timed(settings: Settings, events: Sequence[OutgoingEvent], warmup: int = 0) -> float:
    """Publish ``events`` with confirms, in order; returns the seconds from the first publish after
    the ``warmup`` events to the last confirm (the connection is opened before the clock)."""
    return asyncio.run(_publish_timed(settings, events, warmup))


def read_tails(settings: Settings) -> dict[int, int]:
    """The last offset of every partition stream (-1 when empty)."""
    return asyncio.run(read_tail_offsets(settings))


@dataclass(frozen=True)
class CommitTimes:
    """``time.monotonic()`` of the first poll that saw a new commit, and of the poll that saw
    every partition at its tail; with a ``pid``, that process's CPU at the first commit and how
    many offsets the first commits covered (so CPU per event can leave start-up out)."""

    first_commit_at: float
    done_at: float
    first_commit_cpu: CpuSample | None = None
    first_commit_offsets: int = 0


def wait_until_committed(
    settings: Settings,
    tails: Mapping[int, int],
    timeout_s: float,
    poll_s: float = DRAIN_POLL_S,
    pid: int | Sequence[int] | None = None,
) -> CommitTimes:
    """Poll the checkpoint table until every partition's checkpoint reached its tail.

    Args:
        settings: where the database is.
        tails: the last offset of each partition that must be committed.
        timeout_s: give up after this many seconds.
        poll_s: seconds between polls (the resolution of the returned times).
        pid: a process (or processes, summed) whose CPU is sampled at the first commit seen
            (None: none).

    Raises:
        BenchError: not every partition reached its tail in time (names the lagging ones).
    """
    deadline = time.monotonic() + timeout_s
    pids = () if pid is None else (pid,) if isinstance(pid, int) else tuple(pid)
    with connect(settings.database_url, application_name="bench-drain-poll") as conn:
        initial = read_checkpoints(conn)
        first_commit_at: float | None = None
        first_cpu: CpuSample | None = None
        first_offsets = 0
        while True:
            offsets = read_checkpoints(conn)
            now = time.monotonic()
            if first_commit_at is None and any(
                offsets.get(p, -1) != initial.get(p, -1) for p in offsets
            ):
                first_commit_at = now
                first_cpu = cpu_sample(*pids) if pids else None
                first_offsets = sum(o - initial.get(p, -1) for p, o in offsets.items())
            lagging = {
                p: t - offsets.get(p, -1) for p, t in tails.items() if offsets.get(p, -1) < t
            }
            if not lagging:
                return CommitTimes(
                    first_commit_at if first_commit_at is not None else now,
                    now,
                    first_cpu,
                    first_offsets,
                )
            if now >= deadline:
                detail = ", ".join(f"p{p}: lag {lag}" for p, lag in sorted(lagging.items())[:6])
                raise BenchError(f"not drained after {timeout_s:.0f} s ({detail})")
            time.sleep(poll_s)


#: Columns of the ``cpu`` line of /proc/stat: idle and iowait ticks (proc(5)).
_IDLE: Final = 3
_IOWAIT: Final = 4


@dataclass(frozen=True)
class CpuSample:
    """CPU clock ticks: one process's (user + system, its threads included) and the machine's
    busy and total ticks over every core (``/proc``; zeros where it does not exist)."""

    process: int
    busy: int
    total: int


def cpu_sample(*pids: int) -> CpuSample:
    """The CPU ticks used so far by the processes ``pids`` (summed) and by the machine."""
    try:
        process = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                # Fields after the command name, which may hold spaces: utime and stime are 14, 15.
                fields = stat.read().rpartition(")")[2].split()
            process += int(fields[11]) + int(fields[12])
        with open("/proc/stat") as machine:
            ticks = [int(v) for v in machine.readline().split()[1:]]
    except (OSError, ValueError, IndexError):
        return CpuSample(0, 0, 0)
    idle = ticks[_IDLE] + (ticks[_IOWAIT] if len(ticks) > _IOWAIT else 0)
    return CpuSample(process, sum(ticks) - idle, sum(ticks))


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``/proc/*/stat`` field 4; empty without ``/proc``)."""
    children = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry.parent.name))
    return sorted(children)


@dataclass(frozen=True)
class CpuUse:
    """CPU used between two samples: the process in cores (1.0 = one core all the time) and the
    machine's busy share of all its cores (0..1)."""

    process_cores: float
    machine_busy: float


def cpu_use(before: CpuSample, after: CpuSample, seconds: float) -> CpuUse:
    """What a process and the machine used between ``before`` and ``after``."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    total = after.total - before.total
    return CpuUse(
        process_cores=(after.process - before.process) / ticks_per_s / seconds if seconds else 0.0,
        machine_busy=(after.busy - before.busy) / total if total > 0 else 0.0,
    )


def cpu_us_per_event(before: CpuSample, after: CpuSample, events: int) -> float:
    """A process's CPU time between two samples over ``events``, in microseconds per event
    (0.0 when nothing was counted: no events, or no ``/proc``)."""
    ticks = after.process - before.process
    if events <= 0 or ticks <= 0:
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK") / events * 1e6


def mismatched_users(stored: Mapping[str, object], expected: Mapping[str, object]) -> int:
    """How many users' projections differ between ``stored`` and ``expected`` (either missing
    counts as a difference)."""
    return sum(1 for user in set(stored) | set(expected) if stored.get(user) != expected.get(user))
