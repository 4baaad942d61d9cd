"""The processor process: leases, partition owners, the stream reader and the worker threads.

How the parts relate (see README "Partitions, threads and processes"):

- a *partition* is a stream and the unit of order: one owner at a time, in the whole cluster;
- a *process* (a member) owns the partitions whose leases it holds: about partitions / live
  members, handing off its surplus when a member joins and taking over the partitions of a
  member that died or was fenced (see ``processor.membership`` and ``processor.balance``);
- its *threads* apply batches: a worker takes a partition whose batch is ready, applies it in one
  transaction, and goes on with whichever partition is ready next. A partition is never run by two
  threads at once, so threads add concurrency across partitions, never inside one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

import psycopg

from processor.balance import plan_balance
from processor.errors import LogStartUnknown, LogTruncated
from processor.feed import PartitionFeed
from processor.leases import (
    current_lease_holders,
    member_id,
    try_acquire_lease,
)
from processor.membership import (
    MEMBER_APPLICATION_PREFIX,
    OWNER_APPLICATION_PREFIX,
    fence,
    heartbeat,
    join,
    leave,
    read_membership,
    register_backend,
)
from processor.owner import PartitionOwner
from processor.settings import Settings
from processor.streams import StreamReader
from processor.topology import declare_topology
from projections.batch import OffsetGap
from projections.checkpoints import CheckpointConflict, begin_lease_epoch, ensure_checkpoints
from projections.database import connect, migrate

log = logging.getLogger(__name__)

#: Seconds between progress log lines.
PROGRESS_EVERY_S: Final = 10.0
#: Seconds a worker may take to finish its batch at shutdown.
SHUTDOWN_TIMEOUT_S: Final = 60.0


class Processor:
    """Runs partition owners in this process until ``stop()``.

    Args:
        settings: configuration (partitions, threads, batch size and wait, URLs).
        member: this process's owner name (default ``host:pid``).
    """

    def __init__(self, settings: Settings, member: str | None = None) -> None:
        self.settings = settings
        self.member = member or member_id()
        self._stop = threading.Event()
        self._ready: queue.Queue[PartitionOwner | None] = queue.Queue()
        self._owners: dict[int, PartitionOwner] = {}
        self._owners_lock = threading.Lock()
        self._stopped_partitions: dict[int, Exception] = {}
        self._workers: list[threading.Thread] = []
        self._reader = StreamReader(settings, name=f"friendship-stream {self.member}")
        self._control: psycopg.Connection | None = None
        self._totals_lock = threading.Lock()
        self.applied_total = 0
        self.dead_lettered_total = 0
        self.duplicates_total = 0

    # -- public -----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Migrate the database, declare the topology and create the checkpoint rows."""
        migrate(self.settings.database_url)
        declare_topology(self.settings)
        with connect(self.settings.database_url) as conn:
            ensure_checkpoints(conn, self.settings.partitions)

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Own partitions and apply their batches until ``stop()``; returns the exit code (0).

        On stop, the batches in flight finish and commit; records read but not yet applied are
        dropped and read again by the next owner from the checkpoint.
        """
        self._control = self._join()
        self._reader.start()
        for index in range(self.settings.threads):
            worker = threading.Thread(target=self._work, name=f"worker-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        log.info(
            "processor %s started: %d partitions, %d threads, batch %d events / %.3f s",
            self.member,
            self.settings.partitions,
            self.settings.threads,
            self.settings.batch_size,
            self.settings.batch_wait_s,
        )
        if on_started is not None:
            on_started()
        last_progress = time.monotonic()
        applied_at_last = 0
        try:
            while not self._stop.is_set():
                self._maintain_leases()
                now = time.monotonic()
                if now - last_progress >= PROGRESS_EVERY_S:
                    self._log_progress(now - last_progress, applied_at_last)
                    applied_at_last = self.applied_total
                    last_progress = now
                self._stop.wait(self.settings.lease_interval_s)
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        """Finish the batches in flight and return from ``run`` (callable from any thread)."""
        self._stop.set()

    def owned_partitions(self) -> list[int]:
        """The partitions this process owns now."""
        with self._owners_lock:
            return sorted(self._owners)

    # -- membership and leases -----------------------------------------------------------------

    def _join(self) -> psycopg.Connection:
        control = connect(
            self.settings.database_url,
            application_name=f"{MEMBER_APPLICATION_PREFIX}{self.member}",
        )
        register_backend(control, self.member)
        join(control, self.member)
        log.info("member %s joined", self.member)
        return control

    def _maintain_leases(self) -> None:
        """Heartbeat, fence stale members, then take or hand off partitions towards a fair share."""
        try:
            if self._control is None or self._control.closed:
                self._control = self._join()
            control = self._control
            heartbeat(control, self.member)
            view = read_membership(control, self.settings.member_timeout_s)
            for stale in view.stale:
                if stale != self.member:
                    terminated = fence(control, stale)
                    log.warning(
                        "member %s missed its heartbeats for %.1f s: fenced (%d connections "
                        "terminated); its partitions will be taken over",
                        stale,
                        self.settings.member_timeout_s,
                        terminated,
                    )
            holders = current_lease_holders(control)
        except (psycopg.Error, RuntimeError) as exc:
            log.warning("membership check failed (%s: %s); retrying", type(exc).__name__, exc)
            if self._control is not None:
                self._control.close()
            self._control = None
            return
        # A lease lives on its connection: one this member no longer holds was lost with that
        # connection (terminated, database restarted). Give the partition up now, not at its
        # next batch (which may never come on an idle partition), so it is owned again.
        with self._owners_lock:
            lost = [p for p in self._owners if p not in holders or holders[p].owner != self.member]
        for partition in lost:
            self._hand_off(
                partition, "its lease was lost with its database connection", logging.WARNING
            )
        with self._owners_lock:
            owned = set(self._owners)
            unavailable = set(self._stopped_partitions)
        plan = plan_balance(
            self.settings.partitions,
            view.live,
            self.member,
            owned=owned,
            held_by_others={p for p in holders if p not in owned},
            unavailable=unavailable,
        )
        for partition in plan.hand_off:
            self._hand_off(partition, f"rebalance: fair share is {plan.share}")
        for partition in plan.take:
            if self._stop.is_set():
                return
            self._try_own(partition)

    def _try_connect(self, application_name: str) -> psycopg.Connection | None:
        try:
            return connect(self.settings.database_url, application_name=application_name)
        except psycopg.OperationalError as exc:
            log.warning("cannot connect to the database: %s", exc)
            return None

    def _try_own(self, partition: int) -> None:
        conn = self._try_connect(f"{OWNER_APPLICATION_PREFIX}{self.member}")
        if conn is None:
            return
        try:
            register_backend(conn, self.member)
            if not try_acquire_lease(conn, partition):
                conn.close()
                return
            checkpoint, epoch = begin_lease_epoch(conn, partition, self.member)
        except (psycopg.Error, LookupError) as exc:
            log.warning("partition %d: taking the lease failed: %s", partition, exc)
            conn.close()
            return
        owner = PartitionOwner(
            partition,
            conn,
            checkpoint=checkpoint,
            member=self.member,
            batch_size=self.settings.batch_size,
            lease_epoch=epoch,
        )
        owner.feed = PartitionFeed(
            partition,
            next_offset=checkpoint + 1,
            batch_size=self.settings.batch_size,
            batch_wait_s=self.settings.batch_wait_s,
            loop=self._reader.loop,
            on_ready=lambda: self._schedule(owner),
            first_offset_probe=self._reader.first_offset,
        )
        with self._owners_lock:
            self._owners[partition] = owner
        self._reader.subscribe(partition, owner.feed)
        log.info(
            "partition %d: lease taken (epoch %d), resuming after offset %d",
            partition,
            epoch,
            checkpoint,
        )

    def _hand_off(self, partition: int, reason: str, level: int = logging.INFO) -> None:
        """Release a partition gracefully: the batch in flight (if any) commits first."""
        with self._owners_lock:
            owner = self._owners.get(partition)
        if owner is None:
            return
        with owner.lock:
            owner.draining = True
            busy = owner.scheduled
        self._reader.unsubscribe(partition)
        if not busy:
            self._release(owner, f"handed off ({reason})", level=level)

    def _release(self, owner: PartitionOwner, reason: str, level: int = logging.WARNING) -> None:
        """Give a partition up: stop reading it and close the lease connection."""
        with owner.lock:
            if owner.released:
                return
            owner.released = True
        with self._owners_lock:
            if self._owners.get(owner.partition) is owner:
                del self._owners[owner.partition]
        self._reader.unsubscribe(owner.partition)
        owner.conn.close()
        log.log(level, "partition %d: released (%s)", owner.partition, reason)

    # -- workers ----------------------------------------------------------------------------------

    def _schedule(self, owner: PartitionOwner) -> None:
        with owner.lock:
            if owner.scheduled or owner.released:
                return
            owner.scheduled = True
        self._ready.put(owner)

    def _work(self) -> None:
        while True:
            owner = self._ready.get()
            if owner is None:
                return
            if self._stop.is_set():
                continue
            self._run_owner(owner)

    def _run_owner(self, owner: PartitionOwner) -> None:
        if owner.draining:
            self._release(owner, "handed off", level=logging.INFO)
            return
        try:
            result = owner.apply_next_batch()
        except CheckpointConflict as exc:
            self._release(owner, f"fenced: {exc}")
            return
        except LogTruncated as exc:
            log.error("%s; partition %d stopped, operator action needed", exc, owner.partition)
            with self._owners_lock:
                self._stopped_partitions[owner.partition] = exc
            self._reader.unsubscribe(owner.partition)
            return
        except (psycopg.Error, OffsetGap, LogStartUnknown) as exc:
            self._release(owner, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            log.exception("partition %d: unexpected failure", owner.partition)
            self._release(owner, f"{type(exc).__name__}: {exc}")
            return
        if result is not None:
            with self._totals_lock:
                self.applied_total += result.applied
                self.dead_lettered_total += result.dead_lettered
                self.duplicates_total += result.duplicates
            log.debug(
                "partition %d: committed offsets %d..%d (%d applied, %d duplicates, %d dead)",
                owner.partition,
                result.first_offset,
                result.last_offset,
                result.applied,
                result.duplicates,
                result.dead_lettered,
            )
        with owner.lock:
            owner.scheduled = False
            draining = owner.draining
        if draining:
            self._release(owner, "handed off after its batch committed", level=logging.INFO)
            return
        feed = owner.feed
        if feed is not None and (feed.has_records() or feed.error is not None):
            self._schedule(owner)

    # -- shutdown and progress ----------------------------------------------------------------

    def _shutdown(self) -> None:
        log.info("processor %s stopping: finishing batches in flight", self.member)
        self._reader.stop()
        for _ in self._workers:
            self._ready.put(None)
        for worker in self._workers:
            worker.join(timeout=SHUTDOWN_TIMEOUT_S)
            if worker.is_alive():
                log.error(
                    "%s still busy after %.0f s; closing its connection (its batch rolls back)",
                    worker.name,
                    SHUTDOWN_TIMEOUT_S,
                )
        with self._owners_lock:
            owners = list(self._owners.values())
            self._owners.clear()
        for owner in owners:
            owner.conn.close()
        if self._control is not None:
            try:
                leave(self._control, self.member)
            except psycopg.Error as exc:
                log.warning("could not deregister member %s: %s", self.member, exc)
            self._control.close()
        log.info(
            "processor %s stopped: %d events applied, %d duplicates, %d dead-lettered",
            self.member,
            self.applied_total,
            self.duplicates_total,
            self.dead_lettered_total,
        )

    def _log_progress(self, elapsed_s: float, applied_before: int) -> None:
        rate = (self.applied_total - applied_before) / elapsed_s if elapsed_s > 0 else 0.0
        log.info(
            "owning %d partitions; %d events applied (%.0f/s), %d duplicates, %d dead-lettered",
            len(self.owned_partitions()),
            self.applied_total,
            rate,
            self.duplicates_total,
            self.dead_lettered_total,
        )
