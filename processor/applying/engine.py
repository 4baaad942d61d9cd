"""The worker pool: partitions scheduled on threads, never one partition on two threads at once.

Live processing and replay both apply through it. A *lane* is the work of one partition (a
live owner, or a replay partition's queue of batches). ``wake(lane)`` says the lane has work;
a worker thread then calls ``lane.step(context)``, which applies one batch. The pool guarantees:

- a lane runs on at most one thread at a time, so a partition's batches commit in log order;
- a wake that arrives while the lane runs is not lost: the lane runs again right after;
- a lane whose ``step`` answers True (more work ready now) runs again;
- threads add concurrency across partitions only; more threads than busy lanes idle.

Each worker thread may hold a context of its own (replay: a database connection per thread),
made by ``context_factory`` on that thread and closed by ``close_context`` when it ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from enum import Enum
from typing import Generic, Protocol, TypeVar

from processor.errors import loggable

log = logging.getLogger(__name__)

ContextT = TypeVar("ContextT")
ContextT_contra = TypeVar("ContextT_contra", contravariant=True)


class Lane(Protocol[ContextT_contra]):
    """The work of one partition, run by the pool."""

    def step(self, context: ContextT_contra) -> bool:
        """Do one unit of work (apply one batch); True when more work is ready right now.

        Handles its own errors: whatever it raises is passed to ``fail``.
        """
        ...

    def fail(self, error: Exception) -> None:
        """``step`` raised ``error``: stop this lane's work (the pool goes on with others)."""
        ...


class _Run(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    #: Woken while running: queue it again when the step ends.
    RUNNING_WOKEN = "running, woken"


class WorkerPool(Generic[ContextT]):
    """Threads that run lanes (see the module doc).

    Args:
        threads: worker threads.
        name: thread name prefix (``worker`` gives ``worker-0`` ...).
        context_factory: makes a worker's context, on the worker's thread.
        close_context: called with it when the worker ends.
    """

    def __init__(
        self,
        threads: int,
        *,
        name: str,
        context_factory: Callable[[], ContextT],
        close_context: Callable[[ContextT], None] | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"a worker pool needs at least one thread, got {threads}")
        self._ready: queue.SimpleQueue[Lane[ContextT] | None] = queue.SimpleQueue()
        self._runs: dict[Lane[ContextT], _Run] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = False
        self._context_factory = context_factory
        self._close_context = close_context
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
            for index in range(threads)
        ]
        self._started: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads."""
        for thread in self._threads:
            thread.start()
            self._started.append(thread)

    def wake(self, lane: Lane[ContextT]) -> None:
        """Schedule ``lane`` to run soon (thread-safe; a no-op once the pool is stopping)."""
        with self._lock:
            if self._stopping:
                return
            run = self._runs.get(lane)
            if run is None:
                self._runs[lane] = _Run.QUEUED
                self._ready.put(lane)
            elif run is _Run.RUNNING:
                self._runs[lane] = _Run.RUNNING_WOKEN

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no lane is queued or running; False when ``timeout_s`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._runs, timeout_s)

    def stop(self, timeout_s: float) -> list[str]:
        """Let the steps in flight finish, drop the queued lanes and end the threads.

        Args:
            timeout_s: seconds to wait for each thread's step in flight.

        Returns:
            The names of the threads still busy after the timeout (their steps go on, daemon).
        """
        with self._lock:
            self._stopping = True
        for _ in self._started:
            self._ready.put(None)
        busy = []
        for thread in self._started:
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                busy.append(thread.name)
        return busy

    # -- worker threads --------------------------------------------------------------------------

    def _work(self) -> None:
        context = self._context_factory()
        try:
            while (lane := self._ready.get()) is not None:
                with self._lock:
                    if self._stopping:
                        self._forget(lane)
                        continue
                    self._runs[lane] = _Run.RUNNING
                self._run(lane, context)
        finally:
            if self._close_context is not None:
                self._close_context(context)

    def _run(self, lane: Lane[ContextT], context: ContextT) -> None:
        try:
            again = lane.step(context)
        except Exception as exc:  # noqa: BLE001 - a lane's failure stops that lane only
            again = False
            try:
                lane.fail(exc)
            except Exception as failure:  # noqa: BLE001 - the worker lives on for the other lanes
                log.error("lane %r could not handle its failure: %s", lane, loggable(failure))
        with self._lock:
            woken = self._runs.get(lane) is _Run.RUNNING_WOKEN
            if (again or woken) and not self._stopping:
                self._runs[lane] = _Run.QUEUED
                self._ready.put(lane)
            else:
                self._forget(lane)

    def _forget(self, lane: Lane[ContextT]) -> None:
        """Drop ``lane`` from the runs (the caller holds the lock)."""
        self._runs.pop(lane, None)
        if not self._runs:
            self._idle.notify_all()
