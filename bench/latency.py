"""Step 2b, publish-to-commit latency at a steady offered load (half the ingest ceiling).

Method, with nothing added to the product:

1. a processor process runs on a fresh vhost and database; a warm-up load is published and
   drained first, so every partition is owned and every connection is open;
2. the load is published at a fixed rate: every 5 ms the events that are due are published
   (confirms awaited concurrently, so a slow confirm never delays the schedule), and each
   event's publish time is ``time.monotonic()`` just before its ``basic.publish``;
3. a separate process polls the checkpoints
   (``processor.applying.checkpoint.read_checkpoints``) every ``poll_s`` and records each
   change with the ``time.monotonic()`` taken after the answer (CLOCK_MONOTONIC is
   system-wide, so both processes share the clock);
4. afterwards ``applied_events`` gives each event's partition and offset; its commit time is the
   first recorded change at or past its offset. The checkpoint commits in the same transaction as
   the event's effects, so that is when the event became visible.

A commit is seen at most one poll interval plus one query late and never early, so the figures are
upper bounds with that resolution. An event not committed before the drain timeout counts as
infinitely late.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from bisect import bisect_left
from collections.abc import Sequence
from contextlib import nullcontext
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Final

from bench.drain import Observer, processor_members
from bench.harness import (
    BenchError,
    cpu_sample,
    cpu_us_per_event,
    cpu_use,
    deployment,
    publish_timed,
    read_tails,
    wait_until_committed,
)
from bench.results import LatencyResult, PartitionLatency, SweepPoint
from bench.workload import Workload
from processor.applying.checkpoint import read_checkpoints
from processor.publishing.publisher import AsyncPublisher, OutgoingEvent
from processor.settings import Settings
from projections.database import connect
from testkit.services import Services

#: Seconds between two checkpoint polls (the resolution of commit times).
POLL_S: Final = 0.005
#: Seconds between two rounds of publishing what is due.
TICK_S: Final = 0.005

#: (monotonic time, partition, committed offset) of each checkpoint change seen by the poller.
Change = tuple[float, int, int]


def _poll_checkpoints(database_url: str, poll_s: float, stop: EventType, out: Connection) -> None:
    """Runs in its own process: record every checkpoint change until ``stop``; sends ``"ready"``
    after the first poll, then ``(changes, polls, seconds)`` through ``out``."""
    changes: list[Change] = []
    last: dict[int, int] = {}
    polls = 0
    with connect(database_url, application_name="bench-latency-poll") as conn:
        started = time.monotonic()
        while True:
            # The poll after ``stop`` was set sees every commit made before it.
            stopping = stop.is_set()
            rows = read_checkpoints(conn)
            now = time.monotonic()
            polls += 1
            for partition, offset in rows.items():
                if last.get(partition) != offset:
                    last[partition] = offset
                    changes.append((now, int(partition), int(offset)))
            if polls == 1:
                out.send("ready")
            if stopping:
                break
            pause = started + polls * poll_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        out.send((changes, polls, time.monotonic() - started))


class _CheckpointPoller:
    """``_poll_checkpoints`` in a spawned process for the duration of a ``with`` block; its
    recording is ``result`` afterwards (``(changes, polls, seconds)``)."""

    def __init__(self, database_url: str, poll_s: float = POLL_S) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_poll_checkpoints,
            args=(database_url, poll_s, self._stop, sender),
            name="bench-latency-poll",
        )
        self.result: tuple[list[Change], int, float] = ([], 0, 0.0)

    def __enter__(self) -> _CheckpointPoller:
        self._process.start()
        if not self._receiver.poll(60) or self._receiver.recv() != "ready":
            self._process.kill()
            raise BenchError("the checkpoint poller did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._receiver.poll(30):
            self.result = self._receiver.recv()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


async def _offered_load(
    settings: Settings, events: Sequence[OutgoingEvent], rate: float
) -> tuple[list[float], float]:
    """Publish ``events`` at ``rate`` events/s; returns each event's publish time and the
    seconds from the first to the last publish."""
    publisher = AsyncPublisher(settings)
    await publisher.connect()
    published_at = [0.0] * len(events)

    async def send(low: int, high: int) -> None:
        now = time.monotonic()
        for index in range(low, high):
            published_at[index] = now
        await publisher.publish(events[low:high])

    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    sent = 0
    try:
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - started) * rate) + 1)
            if due > sent:
                tasks.append(asyncio.create_task(send(sent, due)))
                sent = due
            await asyncio.sleep(TICK_S)
        await asyncio.gather(*tasks)
    finally:
        await publisher.close()
    return published_at, published_at[-1] - published_at[0] if events else 0.0


def _event_offsets(settings: Settings) -> dict[str, tuple[int, int]]:
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT event_id::text, partition, log_offset FROM applied_events"
        ).fetchall()
    return {str(e): (int(p), int(o)) for e, p, o in rows}


def commit_latencies(
    events: Sequence[OutgoingEvent],
    published_at: Sequence[float],
    offsets: dict[str, tuple[int, int]],
    changes: Sequence[Change],
) -> list[float]:
    """Each event's seconds from publish to the first checkpoint change covering its offset
    (``inf`` when none did), in event order."""
    by_partition: dict[int, tuple[list[int], list[float]]] = {}
    for at, partition, offset in sorted(changes):
        seen_offsets, seen_times = by_partition.setdefault(partition, ([], []))
        if not seen_offsets or offset > seen_offsets[-1]:
            seen_offsets.append(offset)
            seen_times.append(at)
    latencies = []
    for event, published in zip(events, published_at, strict=True):
        where = offsets.get(event.event_id.lower())
        latency = math.inf
        if where is not None and where[0] in by_partition:
            seen_offsets, seen_times = by_partition[where[0]]
            index = bisect_left(seen_offsets, where[1])
            if index < len(seen_offsets):
                latency = seen_times[index] - published
        latencies.append(latency)
    return latencies


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending sequence (``fraction`` in 0..1)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure_latency(
    services: Services,
    load: Workload,
    warmup: Workload,
    rate: float,
    log_path: Path,
    *,
    drain_timeout_s: float = 120.0,
    observer: Observer | None = None,
    processes: int = 1,
) -> LatencyResult:
    """Publish ``load`` at ``rate`` events/s to a running processor; publish-to-commit latency.

    Args:
        services: the broker and database server.
        load: the measured events (their count / rate is the load's duration).
        warmup: events published and drained before the measurement.
        rate: offered load in events per second.
        log_path: the processor's log file.
        drain_timeout_s: how long, after the last publish, the processor may take to catch up.
        observer: entered with the processor's process around the measured load (a profiler).
        processes: ``PROCESSOR_PROCESSES`` of the processor (member CPU summed; the observer
            sees the supervisor).
    """
    drained_after = math.inf
    with (
        deployment(services) as settings,
        processor_members(settings, log_path, processes) as (process, pids),
    ):
        publish_timed(settings, warmup.events)
        wait_until_committed(settings, read_tails(settings), timeout_s=120.0)
        with (
            _CheckpointPoller(settings.database_url) as poller,
            observer(process) if observer else nullcontext(),
        ):
            before, load_started = cpu_sample(*pids), time.monotonic()
            published_at, seconds = asyncio.run(_offered_load(settings, load.events, rate))
            last_publish = time.monotonic()
            try:
                times = wait_until_committed(settings, read_tails(settings), drain_timeout_s)
                drained_after = times.done_at - last_publish
            except BenchError:
                pass
            after = cpu_sample(*pids)
            cpu = cpu_use(before, after, time.monotonic() - load_started)
        offsets = _event_offsets(settings)
    changes, polls, poll_seconds = poller.result
    in_order = commit_latencies(load.events, published_at, offsets, changes)
    latencies = sorted(in_order)
    committed = sum(1 for latency in latencies if math.isfinite(latency))
    count = len(load.events)
    return LatencyResult(
        target_rate=rate,
        offered_rate=count / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        events=count,
        committed=committed,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p90_ms=percentile(latencies, 0.90) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=latencies[-1] * 1000 if latencies else math.nan,
        poll_interval_ms=POLL_S * 1000,
        resolution_ms=poll_seconds / polls * 1000 if polls else math.nan,
        drained_after_s=drained_after,
        processor_cpu_cores=cpu.process_cores,
        machine_cpu_busy=cpu.machine_busy,
        cpu_us_per_event=cpu_us_per_event(before, after, committed),
        worst_partitions=worst_partitions(load.events, in_order, offsets, changes),
    )


def worst_partitions(
    events: Sequence[OutgoingEvent],
    latencies: Sequence[float],
    offsets: dict[str, tuple[int, int]],
    changes: Sequence[Change],
    count: int = 3,
) -> list[PartitionLatency]:
    """The ``count`` partitions with the highest p99 (a hot partition that falls behind shows
    here while the others commit in milliseconds), with how many commits carried its events."""
    by_partition: dict[int, list[float]] = {}
    lowest: dict[int, int] = {}
    highest: dict[int, int] = {}
    for event, latency in zip(events, latencies, strict=True):
        where = offsets.get(event.event_id.lower())
        if where is not None:
            partition, offset = where
            by_partition.setdefault(partition, []).append(latency)
            lowest[partition] = min(lowest.get(partition, offset), offset)
            highest[partition] = max(highest.get(partition, offset), offset)
    summaries = []
    for partition, values in by_partition.items():
        values.sort()
        commits = {
            offset
            for _at, p, offset in changes
            if p == partition and lowest[partition] <= offset <= highest[partition]
        }
        summaries.append(
            PartitionLatency(
                partition,
                len(values),
                percentile(values, 0.50) * 1000,
                percentile(values, 0.99) * 1000,
                commits=len(commits),
            )
        )
    summaries.sort(key=lambda s: s.p99_ms, reverse=True)
    return summaries[:count]


def next_sweep_share(
    points: Sequence[SweepPoint],
    rising: Sequence[float],
    falling: Sequence[float],
    goal_ms: float,
) -> float | None:
    """The next share of the ingest ceiling the latency sweep offers, or None when it is done.

    The sweep starts at the lowest of ``rising`` (shares 0..1) and climbs them while p99 stays
    within ``goal_ms``; when even the lowest of them misses, it descends ``falling`` (shares
    below it) until one is met. Either way its highest met share is found with the fewest
    runs. Pure.

    Args:
        points: the runs so far, in the order they ran.
        rising: shares tried upwards (any order; sorted here).
        falling: shares tried downwards when the first rising one misses (any order).
        goal_ms: the p99 goal in milliseconds (NaN and infinity miss it).
    """
    up = sorted(rising)
    if not up:
        return None
    if not points:
        return up[0]
    last = points[-1]
    met = last.p99_ms <= goal_ms
    # Below the first share, or the first share itself missed: the sweep goes down.
    if last.share < up[0] or (not met and len(points) == 1):
        if met:
            return None  # the first met share on the way down is the highest
        return next((share for share in sorted(falling, reverse=True) if share < last.share), None)
    if not met:
        return None  # the share below this one was met: the highest met share is known
    return next((share for share in up if share > last.share), None)


def best_within(points: Sequence[SweepPoint], goal_ms: float) -> SweepPoint | None:
    """The highest offered share whose p99 is within ``goal_ms`` (None when none is; an event
    never committed makes p99 infinite, a run without events NaN: both miss)."""
    within = [p for p in points if p.p99_ms <= goal_ms]
    return max(within, key=lambda p: p.share) if within else None
