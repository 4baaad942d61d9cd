"""Step 4, the replay rate next to the raw stream read rate of the same log.

The workload is published into a fresh vhost and drained by a processor (replay verifies against
live projections), then:

- the harness's own raw read (``bench.raw_read``: rstream, as a second client) reads it;
- ``processor.replay``'s ``verify`` rebuilds it into a shadow schema and compares it with live.
  Its report gives the replay phases' records and seconds, and its own raw read of the same
  records without the database (the replay reader, ``measure_read``).

The replay rate is compared with the faster of the two raw reads: the stricter baseline.

Replay is being built beside this harness, so it is loaded by name at run time: when
``processor.replay`` is missing the step says "not available" (the raw read is still measured);
when its Python API differs from what this module expects, ``python -m processor replay
--verify`` is timed instead (wall time, interpreter start-up included).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness import BenchError, deployment, publish_timed, read_tails, wait_until_committed
from bench.raw_read import measure_raw_read
from bench.results import ReplayResult
from bench.workload import Workload
from processor.settings import Settings
from testkit.processes import processor_process
from testkit.services import Services, settings_env


@dataclass(frozen=True)
class ReplayTiming:
    """One replay run: records replayed and seconds, its own raw read, and its verdict."""

    records: int
    seconds: float
    method: str
    raw_records: int = 0
    raw_seconds: float = 0.0
    identical: bool | None = None


def replay_unavailable() -> str | None:
    """Why the replay cannot be benchmarked, or None when ``processor.replay`` exists."""
    if importlib.util.find_spec("processor.replay") is None:
        return "processor.replay does not exist yet"
    return None


def _replay_in_process(settings: Settings) -> ReplayTiming:
    """``processor.replay.run.verify`` in this process, its progress bars sent nowhere.

    Raises:
        AttributeError, TypeError, ImportError: the replay's API is not the expected one.
    """
    # Loaded by name (typed Any): the harness must type-check and import before replay lands.
    run: Any = importlib.import_module("processor.replay.run")
    progress_module: Any = importlib.import_module("processor.replay.progress")
    with progress_module.ReplayProgress(Console(file=io.StringIO())) as progress:
        report = run.verify(settings, run.ReplayOptions(), progress)
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
    )


def _replay_command(settings: Settings, records: int, log_path: Path) -> ReplayTiming:
    """``python -m processor replay --verify`` as a subprocess; its wall time.

    Raises:
        BenchError: the command failed (its log says why).
    """
    arguments = ["replay", "--verify"]
    with log_path.open("ab") as log:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "processor", *arguments],
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
        seconds = time.monotonic() - started
    if done.returncode not in {0, 1}:
        raise BenchError(f"`processor {' '.join(arguments)}` exited {done.returncode}; {log_path}")
    return ReplayTiming(
        records=records,
        seconds=seconds,
        method="python -m processor replay --verify (wall time)",
        identical=done.returncode == 0,
    )


def time_replay(settings: Settings, records: int, log_path: Path) -> ReplayTiming:
    """The replay of ``settings``' log: in process when its API is the expected one, else the
    command."""
    try:
        return _replay_in_process(settings)
    except (AttributeError, TypeError, ImportError) as exc:
        with log_path.open("a") as log:
            log.write(f"replay API not as expected ({exc!r}); timing the command instead\n")
        return _replay_command(settings, records, log_path)


def measure_replay(services: Services, workload: Workload, log_dir: Path) -> ReplayResult:
    """Publish and drain ``workload``, then time the raw read and the replay of its log."""
    missing = replay_unavailable()
    with deployment(services) as settings:
        publish_timed(settings, workload.events)
        tails = read_tails(settings)
        entries, raw_seconds = measure_raw_read(settings, tails)
        raw_rate = entries / raw_seconds if raw_seconds > 0 else 0.0
        if missing is not None:
            return ReplayResult(
                events=entries,
                raw_read_seconds=raw_seconds,
                raw_read_events_per_s=raw_rate,
                available=False,
                reason=missing,
            )
        with processor_process(settings, log_dir / "replay-processor.log"):
            wait_until_committed(settings, tails, timeout_s=600.0)
        timing = time_replay(settings, entries, log_dir / "replay.log")
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
    )
