"""Step 2a, draining a backlog: publish the workload, then start ``python -m processor run`` and
time it until every partition's checkpoint reached its stream tail; then check every user's
stored projection against the sequential fold (``testkit.reference.reference_fold``)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

from bench.harness import (
    DRAIN_POLL_S,
    BenchError,
    child_pids,
    cpu_sample,
    cpu_us_per_event,
    cpu_use,
    deployment,
    mismatched_users,
    publish_timed,
    read_tails,
    wait_until_committed,
)
from bench.results import DrainResult
from bench.workload import Workload
from processor.privacy.data_keys import seal_events
from processor.privacy.keys import load_keys
from processor.publishing.publisher import OutgoingEvent
from processor.settings import Settings
from projections.database import connect
from testkit.processes import processor_process, stored_projections
from testkit.reference import reference_fold
from testkit.services import Services


def sealed(settings: Settings, events: list[OutgoingEvent]) -> list[OutgoingEvent]:
    """``events`` with their data encrypted by each child's data key (made on the way)."""
    with connect(settings.database_url) as conn:
        bodies = seal_events(conn, [e.body for e in events], load_keys(settings))
    return [replace(e, body=body) for e, body in zip(events, bodies, strict=True)]


#: Something run around the drain with the processor's process (a profiler), or None.
Observer = Callable[[subprocess.Popen[bytes]], AbstractContextManager[object]]


@contextmanager
def processor_members(
    settings: Settings, log_path: Path, processes: int, timeout_s: float = 60.0
) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """``python -m processor run`` with ``PROCESSOR_PROCESSES=processes`` (the product's own
    supervisor when more than one), logging to ``log_path``; yields the process and the pids
    whose CPU is the processor's (the supervisor and its member processes, once all started).

    Raises:
        BenchError: the member processes did not all start within ``timeout_s``.
    """
    with processor_process(settings.with_overrides(processes=processes), log_path) as process:
        pids = [process.pid]
        if processes > 1:
            deadline = time.monotonic() + timeout_s
            while len(children := child_pids(process.pid)) < processes:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{processes} member processes did not start; see {log_path}")
                time.sleep(0.01)
            pids += children
        yield process, pids


def measure_drain(
    services: Services,
    workload: Workload,
    log_path: Path,
    *,
    timeout_s: float = 600.0,
    observer: Observer | None = None,
    verify: bool = True,
    encrypted: bool = True,
    processes: int = 1,
) -> DrainResult:
    """Drain ``workload`` from the streams with ``processes`` processor processes (default
    settings otherwise) started together on this machine.

    Args:
        services: the broker and database server.
        workload: the events, published before the processor starts.
        log_path: the processor's log file.
        timeout_s: give up (``BenchError``) after this many seconds of draining.
        observer: entered with the processor's process once it started (e.g. py-spy).
        verify: compare every user with the sequential fold (else ``mismatched_users = -1``).
        encrypted: publish every event with its data encrypted, as the HTTP ingest and
            ``just publish`` do (the product's default); false publishes them in plain text.
        processes: ``PROCESSOR_PROCESSES``: member processes sharing the partitions under
            one ``processor run``; their CPU is summed (the observer sees the supervisor).
    """
    with deployment(services) as settings:
        published = sealed(settings, workload.events) if encrypted else workload.events
        publish_timed(settings, published)
        tails = read_tails(settings)
        started = time.monotonic()
        with (
            processor_members(settings, log_path, processes) as (process, pids),
            observer(process) if observer else nullcontext(),
        ):
            before = cpu_sample(*pids)
            times = wait_until_committed(settings, tails, timeout_s, pid=pids)
            after = cpu_sample(*pids)
            cpu = cpu_use(before, after, time.monotonic() - started)
        stored = stored_projections(settings) if verify else {}
    mismatched = mismatched_users(stored, reference_fold(workload.bodies)) if verify else -1
    seconds = times.done_at - started
    steady = times.done_at - times.first_commit_at
    events = len(workload.events)
    first_cpu = times.first_commit_cpu or before
    steady_events = events - times.first_commit_offsets
    return DrainResult(
        events=events,
        users=workload.distinct_users(),
        seconds=seconds,
        steady_seconds=steady,
        events_per_s=events / seconds if seconds > 0 else 0.0,
        steady_events_per_s=events / steady if steady > 0 else 0.0,
        mismatched_users=mismatched,
        poll_interval_ms=DRAIN_POLL_S * 1000,
        processor_cpu_cores=cpu.process_cores,
        machine_cpu_busy=cpu.machine_busy,
        cpu_us_per_event=cpu_us_per_event(first_cpu, after, steady_events),
        cpu_us_per_event_with_startup=cpu_us_per_event(before, after, events),
        processes=processes,
    )
