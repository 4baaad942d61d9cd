"""A partition owner: one partition's lease, feed and applier, and the states it goes through.

An owner exists only while its process holds the partition's lease (a PostgreSQL advisory lock
on ``conn``). It runs its own states; the membership loop only asks (``hand_off``) and the
worker pool only runs it (``step``):

```
ACTIVE ──hand_off──▶ DRAINING ──batch in flight ended──▶ RELEASED
  │  ╰──lease lost, fenced, database error, unexpected failure──▶ RELEASED
  ╰──log truncated──▶ STOPPED ──lease lost, process stops──▶ RELEASED
```

In ACTIVE it applies batches: ``start`` subscribes its feed, the feed wakes it when a batch is
ready, and the pool runs ``step`` on a worker thread, one batch at a time. STOPPED, it reads no
more but keeps its lease, so no process retries a log that lost records until an operator acts
(the coordinator does not hand a stopped partition off to balance). Released, it has stopped
reading and closed the lease connection, so another owner can take the partition from its
checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import psycopg

from processor import tuning
from processor.applying.applier import PartitionApplier
from processor.applying.batch import BatchResult
from processor.applying.errors import ApplyError, CheckpointConflict, FoldVersionChanged
from processor.applying.postgres import PostgresStore
from processor.errors import loggable
from processor.reading.errors import LogTruncated, ReadError
from processor.reading.feed import PartitionFeed

log = logging.getLogger(__name__)


class OwnerState(Enum):
    """Where an owner is in its life (see the module doc)."""

    ACTIVE = "active"
    DRAINING = "draining"
    STOPPED = "stopped"
    RELEASED = "released"


@dataclass
class ApplyCounters:
    """Events one process committed, over all its owners (thread-safe)."""

    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    #: Events and dead letters of erased children, skipped (docs/contract.md, "Erasure").
    erased_skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: BatchResult) -> None:
        """Count a committed batch."""
        with self._lock:
            self.applied += result.applied
            self.duplicates += result.duplicates
            self.dead_lettered += result.dead_lettered
            self.erased_skipped += result.erased_skipped


@dataclass(frozen=True)
class OwnerLinks:
    """What an owner tells the rest of its process.

    Attributes:
        wake: schedule the owner on a worker (``WorkerPool.wake``).
        subscribe: start reading a partition into a feed (``StreamReader.subscribe``).
        unsubscribe: stop reading a partition (``StreamReader.unsubscribe``).
        released: the owner gave its partition up (its lease is gone).
        stopped: the owner stopped its partition on ``error`` and keeps the lease.
        counters: where committed batches are counted.
        batch_committed: a batch of ``records`` committed ``seconds`` after it was taken off
            the feed (the process's metrics).
        lease_released: the owner let its lease go; ``lost`` when the lease was lost (its
            connection died, a commit was fenced, a database error), else handed off.
    """

    wake: Callable[[PartitionOwner], None]
    subscribe: Callable[[int, PartitionFeed], None]
    unsubscribe: Callable[[int], object]
    released: Callable[[PartitionOwner], None]
    stopped: Callable[[PartitionOwner, Exception], None]
    counters: ApplyCounters
    batch_committed: Callable[[int, float], None] = lambda _records, _seconds: None
    lease_released: Callable[[bool], None] = lambda _lost: None


class PartitionOwner:
    """Owns one partition while holding its lease on ``conn``.

    Args:
        conn: the autocommit connection that holds the lease; batches commit on it.
        applier: the partition's applier, at the checkpoint read when the lease was taken and
            under the lease epoch taken with it.
        feed: the records read for the partition, in log order.
        batch_size: most records per transaction.
        links: the process's pool, reader and bookkeeping.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        applier: PartitionApplier,
        feed: PartitionFeed,
        *,
        batch_size: int,
        links: OwnerLinks,
    ) -> None:
        self.partition = applier.partition
        self.conn = conn
        self.applier = applier
        self.feed = feed
        self._store = PostgresStore(conn)
        self._batch_size = batch_size
        self._links = links
        self._lock = threading.Lock()
        self._state = OwnerState.ACTIVE
        self._applying = False
        self._lost = False

    @property
    def state(self) -> OwnerState:
        """The owner's state now."""
        with self._lock:
            return self._state

    def start(self) -> None:
        """Start reading the partition from the checkpoint (call once, after registering)."""
        self._links.subscribe(self.partition, self.feed)

    def wake(self) -> None:
        """A batch is ready (or the feed failed): run ``step`` on a worker (any thread)."""
        if self.state is OwnerState.ACTIVE:
            self._links.wake(self)

    # -- worker side -----------------------------------------------------------------------------

    def step(self, _context: object = None) -> bool:
        """Apply the next batch (``engine.Lane``); True when more records wait.

        Runs on one worker thread at a time. Failures end here: a fenced owner, a lost
        connection or a failed read releases the partition; a truncated log stops it. An owner
        handed off during the batch is released once the batch ended. Anything else propagates
        to the pool, which calls ``fail``.
        """
        with self._lock:
            if self._state is not OwnerState.ACTIVE:
                return False
            self._applying = True
        try:
            self._apply_next()
        finally:
            with self._lock:
                self._applying = False
                state: OwnerState = self._state  # hand_off may have changed it meanwhile
        if state is OwnerState.DRAINING:
            self.release("handed off after its batch committed", logging.INFO)
            return False
        return state is OwnerState.ACTIVE and (
            self.feed.has_records() or self.feed.error is not None
        )

    def fail(self, error: Exception) -> None:
        """``step`` failed in a way nobody expected (``engine.Lane``): log it and let go."""
        log.error("partition %d: unexpected failure (%s)", self.partition, loggable(error))
        log.debug("partition %d: the failure's traceback", self.partition, exc_info=error)
        self.release(loggable(error))

    def _apply_next(self) -> None:
        try:
            if self.feed.error is not None:
                raise self.feed.error
            records = self.feed.take(self._batch_size)
            if not records:
                return
            started = time.perf_counter()
            result = self.applier.apply(self._store, records)
            self._links.batch_committed(len(records), time.perf_counter() - started)
        except FoldVersionChanged as exc:
            # A rebuild with another rule is live: whoever takes the partition next folds
            # with the version it finds (processor.versions).
            self.release(
                f"the projections are at fold version {exc.live_version} now", logging.INFO
            )
            return
        except CheckpointConflict as exc:
            self.release(f"fenced: {exc}", lost=True)
            return
        except LogTruncated as exc:
            self._stop(exc)
            return
        except psycopg.Error as exc:
            self.release(loggable(exc), lost=True)
            return
        except (ApplyError, ReadError) as exc:
            self.release(loggable(exc))
            return
        self._links.counters.add(result)
        log.debug(
            "partition %d: committed offsets %d..%d (%d applied, %d duplicates, %d dead, "
            "%d of erased children skipped)",
            self.partition,
            result.first_offset,
            result.last_offset,
            result.applied,
            result.duplicates,
            result.dead_lettered,
            result.erased_skipped,
        )

    # -- life cycle ------------------------------------------------------------------------------

    def hand_off(self, reason: str, level: int = logging.INFO, *, lost: bool = False) -> None:
        """Give the partition up gracefully: a batch in flight ends first (any thread).

        ``lost``: the lease is already gone (counted as lost, not as handed off).
        """
        with self._lock:
            if self._state in (OwnerState.RELEASED, OwnerState.DRAINING):
                return
            busy = self._applying
            if busy:
                self._state = OwnerState.DRAINING
                self._lost = lost
        if busy:
            self._links.unsubscribe(self.partition)  # read no more; released after the batch
        else:
            self.release(f"handed off ({reason})", level, lost=lost)

    def release(self, reason: str, level: int = logging.WARNING, *, lost: bool = False) -> None:
        """Give the partition up now: stop reading it and close the lease connection.

        Called by the owner itself (or by ``hand_off`` when no batch is in flight), never
        while a batch runs on the connection from another thread. ``lost``: the lease was lost
        rather than given back (the metrics count the two apart).
        """
        with self._lock:
            if self._state is OwnerState.RELEASED:
                return
            self._state = OwnerState.RELEASED
            lost = lost or self._lost
        self._links.unsubscribe(self.partition)
        self.conn.close()
        self._links.released(self)
        self._links.lease_released(lost)
        log.log(level, "partition %d: released (%s)", self.partition, reason)

    def abandon(self) -> None:
        """Let go at shutdown, even of a batch still in flight on a worker: the database is
        asked to cancel its statement (thread-safe), then the connection closes and the
        transaction rolls back. The next owner reads the batch again from the checkpoint."""
        with self._lock:
            if self._state is OwnerState.RELEASED:
                return
            self._state = OwnerState.RELEASED
            busy = self._applying
        if busy:
            with contextlib.suppress(psycopg.Error):
                self.conn.cancel_safe(timeout=tuning.CANCEL_TIMEOUT_S)
        self.conn.close()

    def _stop(self, error: LogTruncated) -> None:
        with self._lock:
            if self._state is not OwnerState.ACTIVE:
                return
            self._state = OwnerState.STOPPED
        self._links.unsubscribe(self.partition)
        log.error("%s; partition %d stopped, operator action needed", error, self.partition)
        self._links.stopped(self, error)
