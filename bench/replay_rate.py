"""Step 4, the replay rate next to the raw stream read rate of the same log.

The workload is published into a fresh vhost and drained by a processor (replay verifies against
live projections), then:

- the harness's own raw read (``bench.raw_read``: rstream, as a second client) reads it;
- ``processor.replay``'s ``verify`` rebuilds it into a shadow schema and compares it with live.
  Its report gives the replay phases' records and seconds, and its own raw read of the same
  records without the database (the replay reader, ``measure_read``).

The replay rate is compared with the faster of the two raw reads: the stricter baseline.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.harness import deployment, publish_timed, read_tails, wait_until_committed
from bench.raw_read import measure_raw_read
from bench.results import ReplayResult
from bench.workload import Workload
from processor.replay.options import ReplayOptions
from processor.replay.progress import ReplayProgress
from processor.replay.run import verify
from processor.settings import Settings
from testkit.processes import processor_process
from testkit.services import Services


@dataclass(frozen=True)
class ReplayTiming:
    """One replay run: records replayed and seconds, its own raw read, and its verdict."""

    records: int
    seconds: float
    method: str
    raw_records: int = 0
    raw_seconds: float = 0.0
    identical: bool | None = None
    cpu_seconds: float = 0.0


def time_replay(settings: Settings) -> ReplayTiming:
    """``processor.replay.run.verify`` in this process, its progress bars sent nowhere."""
    cpu_started = time.process_time()
    with ReplayProgress(Console(file=io.StringIO())) as progress:
        report = verify(settings, ReplayOptions(), progress)
    cpu_seconds = time.process_time() - cpu_started
    replayed = report.replayed
    raw = report.raw_read
    comparison = report.comparison
    return ReplayTiming(
        records=int(replayed.records),
        seconds=float(replayed.seconds),
        method="processor.replay.run.verify: rebuild phases",
        raw_records=int(raw.records) if raw is not None else 0,
        raw_seconds=float(raw.seconds) if raw is not None else 0.0,
        identical=bool(comparison.identical) if comparison is not None else None,
        cpu_seconds=cpu_seconds,
    )


def measure_replay(services: Services, workload: Workload, log_dir: Path) -> ReplayResult:
    """Publish and drain ``workload``, then time the raw read and the replay of its log."""
    with deployment(services) as settings:
        publish_timed(settings, workload.events)
        tails = read_tails(settings)
        entries, raw_seconds = measure_raw_read(settings, tails)
        raw_rate = entries / raw_seconds if raw_seconds > 0 else 0.0
        with processor_process(settings, log_dir / "replay-processor.log"):
            wait_until_committed(settings, tails, timeout_s=600.0)
        timing = time_replay(settings)
    return ReplayResult(
        events=entries,
        raw_read_seconds=raw_seconds,
        raw_read_events_per_s=raw_rate,
        available=True,
        replay_seconds=timing.seconds,
        replay_events_per_s=timing.records / timing.seconds if timing.seconds > 0 else 0.0,
        replay_method=timing.method,
        replay_raw_read_seconds=timing.raw_seconds,
        replay_raw_read_events_per_s=(
            timing.raw_records / timing.raw_seconds if timing.raw_seconds > 0 else 0.0
        ),
        replay_identical=timing.identical,
        replay_cpu_us_per_event=(
            timing.cpu_seconds / timing.records * 1e6 if timing.records > 0 else 0.0
        ),
    )
