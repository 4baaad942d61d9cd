"""Apply replayed batches to the shadow schema on the live processor's worker pool.

Each partition is a lane of ``processor.applying.engine.WorkerPool``, the pool live owners run
on; its batches go through ``processor.applying.applier.PartitionApplier``, the applier live
owners use (transient errors retried, rejected records isolated and dead-lettered alike), on a
connection whose ``search_path`` is the shadow schema, so they lock and advance the shadow's
own checkpoint rows and write the shadow's tables. A partition's batches are applied in log
order and never by two threads at once; threads add concurrency across partitions only.

The reader hands batches over on its event loop (``deliver``); when more than
``max_pending_records`` wait, ``deliver`` returns an awaitable and reading pauses until the
workers catch up. A worker failure is kept and re-raised by ``check`` and ``drain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType

from processor import tuning
from processor.applying.applier import PartitionApplier
from processor.applying.batch import BatchResult
from processor.applying.engine import WorkerPool
from processor.applying.postgres import PostgresStore
from processor.privacy.keys import Keys
from processor.reading.log_record import LogRecord
from processor.replay.errors import ReplayError
from processor.replay.shadow import connect_shadow
from projections.fold import CONTRACT_RULES, FoldRules

#: Called by a worker after each committed batch (on that worker's thread).
OnApplied = Callable[[BatchResult, int], None]


class _ShadowLane:
    """The queued batches of one partition (a ``WorkerPool`` lane)."""

    def __init__(self, owner: ShadowApplier, applier: PartitionApplier) -> None:
        self.partition = applier.partition
        self.applier = applier
        self.batches: deque[list[LogRecord]] = deque()
        self._owner = owner

    def step(self, store: PostgresStore) -> bool:
        return self._owner.apply_next(self, store)

    def fail(self, error: Exception) -> None:
        self._owner.failed(error)


class ShadowApplier:
    """Worker threads applying batches to the shadow schema.

    Args:
        database_url: the deployment's database.
        shadow: the shadow schema's name.
        live: the live schema's name (the deployment's erasures and data keys are there).
        keys: opens encrypted events and finds erased children.
        checkpoints: the shadow's committed offset per partition (-1 = none); updated in place
            as batches commit.
        threads: worker threads (each with its own connection).
        owner: written on the shadow's checkpoint rows (``"replay <id>"``).
        on_applied: progress callback ``(result, records in the batch)``.
        max_pending_records: records waiting for a worker before ``deliver`` asks the reader to
            wait.
        rules: the fold version the shadow is built with.
    """

    def __init__(
        self,
        database_url: str,
        shadow: str,
        live: str,
        checkpoints: dict[int, int],
        keys: Keys,
        *,
        threads: int,
        owner: str,
        on_applied: OnApplied,
        max_pending_records: int,
        rules: FoldRules = CONTRACT_RULES,
    ) -> None:
        self.checkpoints = checkpoints
        self._rules = rules
        self._keys = keys
        self._owner = owner
        self._on_applied = on_applied
        self._max_pending = max_pending_records
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._lanes: dict[int, _ShadowLane] = {}
        self._pending_records = 0
        self._pending_batches = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.error: BaseException | None = None
        stores: list[PostgresStore] = []
        try:
            for _ in range(threads):
                name = f"friendship-stream {owner}"
                stores.append(
                    PostgresStore(connect_shadow(database_url, shadow, live, application_name=name))
                )
        except BaseException:
            for store in stores:
                store.conn.close()
            raise
        self._pool: WorkerPool[PostgresStore] = WorkerPool(
            threads,
            name="replay",
            context_factory=stores.pop,
            close_context=lambda store: store.conn.close(),
        )
        self._pool.start()

    def __enter__(self) -> ShadowApplier:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- reader side (event loop) ----------------------------------------------------------------

    def deliver(self, partition: int, records: list[LogRecord]) -> asyncio.Future[None] | None:
        """Queue a batch (``ranges.Deliver``); returns a future to wait on when workers lag."""
        with self._lock:
            if self.error is not None:
                return None
            lane = self._lanes.get(partition)
            if lane is None:
                checkpoint = self.checkpoints.get(partition, -1)
                lane = _ShadowLane(
                    self,
                    PartitionApplier(
                        partition, checkpoint, self._owner, self._keys, rules=self._rules
                    ),
                )
                self._lanes[partition] = lane
            lane.batches.append(records)
            self._pending_records += len(records)
            self._pending_batches += 1
            waiter = None
            if self._pending_records > self._max_pending:
                loop = asyncio.get_running_loop()
                waiter = loop.create_future()
                self._waiters.append((loop, waiter))
        self._pool.wake(lane)
        return waiter

    def check(self) -> None:
        """Re-raise a worker's failure (called by the reader's watchdog)."""
        if self.error is not None:
            raise self.error

    # -- caller side -----------------------------------------------------------------------------

    def drain(self) -> None:
        """Block until every queued batch is committed.

        Raises:
            Exception: the first failure of a worker (``apply_batch``'s errors, database errors).
        """
        with self._idle:
            self._idle.wait_for(lambda: self._pending_batches == 0 or self.error is not None)
        self.check()

    def close(self) -> None:
        """Stop the workers (after their batch in flight) and close their connections."""
        with self._lock:
            if self.error is None and self._pending_batches > 0:
                self.error = ReplayError("replay stopped with batches still queued")
            self._release_waiters()
        self._pool.stop(tuning.SHUTDOWN_TIMEOUT_S)

    # -- workers ---------------------------------------------------------------------------------

    def apply_next(self, lane: _ShadowLane, store: PostgresStore) -> bool:
        """Apply the lane's oldest batch; True when it has more (a worker thread)."""
        with self._lock:
            if self.error is not None or not lane.batches:
                return False
            records = lane.batches.popleft()
        result = lane.applier.apply(store, records)
        with self._lock:
            self.checkpoints[lane.partition] = lane.applier.checkpoint
            self._pending_records -= len(records)
            self._pending_batches -= 1
            if self._pending_records <= self._max_pending:
                self._release_waiters()
            if self._pending_batches == 0:
                self._idle.notify_all()
            more = bool(lane.batches)
        self._on_applied(result, len(records))
        return more

    def failed(self, error: BaseException) -> None:
        """A batch failed: keep the first error for ``check`` and ``drain``."""
        with self._lock:
            if self.error is None:
                self.error = error
            self._release_waiters()
            self._idle.notify_all()

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # the reader's loop is already closed
                loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
