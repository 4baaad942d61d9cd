"""Replay progress: one rich progress bar per phase (events, events/s, ETA) and the rate lines.

The bars have the layout of every long command (``processor.progress.new_progress``).

Bars go to stderr so that stdout carries only the report. Rates are events per second measured
on the monotonic clock; nothing here reads the wall clock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, TaskID

from processor.progress import new_progress

if TYPE_CHECKING:
    from processor.applying.batch import BatchResult


@dataclass
class Phase:
    """One phase's counters (records read or applied, seconds on the monotonic clock)."""

    name: str
    #: Records the phase is to go through (an upper bound: offsets may have holes).
    total: int = 0
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    #: Events and dead letters of erased children, skipped (docs/contract.md, "Erasure").
    erased_skipped: int = 0
    seconds: float = 0.0

    @property
    def records_per_s(self) -> float:
        """Records per second of the phase (0 when it took no time)."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ReplayProgress:
    """The bars of one replay run and the counters behind its final line.

    Use as a context manager; ``phase()`` starts a bar, ``advance()`` moves it (thread-safe).
    """

    console: Console
    phases: list[Phase] = field(default_factory=list)
    _progress: Progress | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> ReplayProgress:
        self._progress = new_progress(self.console)
        self._progress.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, name: str, total: int) -> PhaseBar:
        """Start a bar of ``total`` records (an upper bound: offsets may have holes)."""
        phase = Phase(name, total)
        self.phases.append(phase)
        task = self._progress.add_task(name, total=total, rate=0.0) if self._progress else None
        return PhaseBar(self, phase, task)

    def _advance(self, task: TaskID | None, records: int, rate: float) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, advance=records, rate=rate)

    def _finish(self, task: TaskID | None, records: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, total=max(records, 1), completed=max(records, 1))
            self._progress.stop_task(task)


@dataclass
class PhaseBar:
    """A running phase: ``advance`` from any thread, ``finish`` once, from the caller."""

    owner: ReplayProgress
    phase: Phase
    task: TaskID | None
    started: float = field(default_factory=time.monotonic)

    def advance(self, records: int, result: BatchResult | None = None) -> None:
        """Count ``records`` done (read, or applied as ``result`` counts them)."""
        with self.owner._lock:
            self.phase.records += records
            if result is not None:
                self.phase.applied += result.applied
                self.phase.duplicates += result.duplicates
                self.phase.dead_lettered += result.dead_lettered
                self.phase.erased_skipped += result.erased_skipped
            elapsed = time.monotonic() - self.started
            speed = self.phase.records / elapsed if elapsed > 0 else 0.0
        self.owner._advance(self.task, records, speed)

    def finish(self) -> Phase:
        """Stop the clock and the bar; returns the phase's counters."""
        self.phase.seconds = time.monotonic() - self.started
        self.owner._finish(self.task, self.phase.records)
        return self.phase
