"""Apply replayed batches to the shadow schema: worker threads, one partition per thread at a time.

Each batch goes through ``projections.batch.apply_batch``, the code path of live processing (with
the live owner's handling of a batch the database rejects, ``apply_replayed_batch``), on a
connection whose ``search_path`` is the shadow schema, so it locks and advances the shadow's own
checkpoint rows and writes the shadow's tables. A partition's batches are applied in log order
and never by two threads at once (as in ``processor.runtime``); threads add concurrency across
partitions only.

The reader hands batches over on its event loop (``deliver``); when more than
``max_pending_records`` wait, ``deliver`` returns an awaitable and reading pauses until the
workers catch up. A worker failure is kept and re-raised by ``check`` and ``drain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import psycopg

from processor.replay.shadow import connect_shadow
from projections.batch import BatchResult, LogRecord, apply_batch, apply_isolating_rejects

#: Called by a worker after each committed batch (on that worker's thread).
OnApplied = Callable[[BatchResult, int], None]


def apply_replayed_batch(
    conn: psycopg.Connection,
    partition: int,
    records: list[LogRecord],
    expected_checkpoint: int,
    owner: str,
) -> BatchResult:
    """``apply_batch`` the way a live owner uses it: a batch the database rejects
    (``DataError``) is applied one record per transaction and a rejected record is dead-lettered
    with the reason live writes (``projections.batch.apply_isolating_rejects``). Inside the
    caller's transaction each attempt is a savepoint.

    Raises:
        the errors of ``projections.batch.apply_batch`` other than ``DataError``.
    """
    checkpoint = expected_checkpoint

    def apply(batch: Sequence[LogRecord], poisoned: Mapping[int, str] | None) -> BatchResult:
        nonlocal checkpoint
        result = apply_batch(conn, partition, batch, checkpoint, owner, poisoned=poisoned)
        checkpoint = result.last_offset
        return result

    return apply_isolating_rejects(apply, partition, records)


class ShadowApplier:
    """Worker threads applying batches to the shadow schema.

    Args:
        database_url: the deployment's database.
        shadow: the shadow schema's name.
        checkpoints: the shadow's committed offset per partition (-1 = none); updated in place
            as batches commit.
        threads: worker threads (each with its own connection).
        owner: written on the shadow's checkpoint rows (``"replay <id>"``).
        on_applied: progress callback ``(result, records in the batch)``.
        max_pending_records: records waiting for a worker before ``deliver`` asks the reader to
            wait.
    """

    def __init__(
        self,
        database_url: str,
        shadow: str,
        checkpoints: dict[int, int],
        *,
        threads: int,
        owner: str,
        on_applied: OnApplied,
        max_pending_records: int,
    ) -> None:
        self._database_url = database_url
        self._shadow = shadow
        self.checkpoints = checkpoints
        self._owner = owner
        self._on_applied = on_applied
        self._max_pending = max_pending_records
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queues: dict[int, deque[list[LogRecord]]] = {}
        self._scheduled: set[int] = set()
        self._ready: queue.Queue[int | None] = queue.Queue()
        self._pending_records = 0
        self._pending_batches = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.error: BaseException | None = None
        self._connections = [
            connect_shadow(database_url, shadow, application_name=f"friendship-stream {owner}")
            for _ in range(threads)
        ]
        self._threads = [
            threading.Thread(target=self._work, args=(conn,), name=f"replay-{i}", daemon=True)
            for i, conn in enumerate(self._connections)
        ]
        for thread in self._threads:
            thread.start()

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
        """Queue a batch (``reader.Deliver``); returns a future to wait on when workers lag."""
        with self._lock:
            if self.error is not None:
                return None
            self._queues.setdefault(partition, deque()).append(records)
            self._pending_records += len(records)
            self._pending_batches += 1
            if partition not in self._scheduled:
                self._scheduled.add(partition)
                self._ready.put(partition)
            if self._pending_records <= self._max_pending:
                return None
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
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
            while self._pending_batches > 0 and self.error is None:
                self._idle.wait(0.1)
        self.check()

    def close(self) -> None:
        """Stop the workers (after their batch in flight) and close their connections."""
        with self._lock:
            if self.error is None and self._pending_batches > 0:
                self.error = RuntimeError("replay stopped with batches still queued")
            self._release_waiters()
        for _ in self._threads:
            self._ready.put(None)
        for thread in self._threads:
            thread.join()
        for conn in self._connections:
            conn.close()

    # -- workers ---------------------------------------------------------------------------------

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # the reader's loop is already closed
                loop.call_soon_threadsafe(_resolve, waiter)

    def _work(self, conn: psycopg.Connection) -> None:
        while True:
            partition = self._ready.get()
            if partition is None:
                return
            with self._lock:
                if self.error is not None:
                    continue
                records = self._queues[partition].popleft()
            try:
                expected = self.checkpoints.get(partition, -1)
                result = apply_replayed_batch(conn, partition, records, expected, self._owner)
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised by check/drain
                with self._lock:
                    self.error = exc
                    self._release_waiters()
                    self._idle.notify_all()
                continue
            with self._lock:
                self.checkpoints[partition] = result.last_offset
                self._pending_records -= len(records)
                self._pending_batches -= 1
                if self._pending_records <= self._max_pending:
                    self._release_waiters()
                if self._queues[partition]:
                    self._ready.put(partition)
                else:
                    self._scheduled.discard(partition)
                if self._pending_batches == 0:
                    self._idle.notify_all()
            self._on_applied(result, len(records))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
