"""The processor process: the reader, the worker pool and the membership loop, wired together.

How the parts relate (README "Partitions, threads and processes", docs/architecture.md):

- a *partition* is a stream and the unit of order: one owner at a time, in the whole cluster;
- a *process* (a member) owns the partitions whose leases it holds: about partitions / live
  members. ``processor.ownership.coordinator`` runs that loop: heartbeats, fencing, lost
  leases, hand-offs and takes;
- each owned partition has a ``PartitionOwner``: its lease connection, its feed of records
  read by the one ``StreamReader`` of the process, and its applier;
- its *threads* are a ``WorkerPool``: a worker takes an owner whose batch is ready and applies
  it in one transaction. A partition never runs on two threads at once, so threads add
  concurrency across partitions, never inside one;
- its *fold versions* (``processor.versions``): owners fold with the version the live tables
  are at; a process whose rules are newer builds its version in the background and swaps it
  in, and a process that meets a version it does not know stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from processor import tuning
from processor.applying.applier import PartitionApplier
from processor.applying.checkpoint import ensure_checkpoints
from processor.applying.engine import WorkerPool
from processor.monitoring.metrics import PartitionView, ProcessorMetrics, Totals
from processor.monitoring.server import MetricsServer
from processor.ownership.coordinator import Coordinator
from processor.ownership.membership import member_id
from processor.ownership.owner import ApplyCounters, OwnerLinks, PartitionOwner
from processor.privacy.key_ids import check_keys
from processor.privacy.keys import load_keys
from processor.publishing.topology import declare_topology
from processor.reading.feed import PartitionFeed
from processor.reading.reader import StreamReader
from processor.reading.tails import TailCache
from processor.settings import Settings, SettingsError
from processor.versions.builds import VersionPlan, live_fold_version, plan
from processor.versions.errors import FoldVersionUnknown
from projections.database import connect, migrate
from projections.rules import load_rule_versions

log = logging.getLogger(__name__)


class Processor:
    """Owns partitions and applies their batches in this process until ``stop()``.

    Args:
        settings: configuration (partitions, threads, batch size and wait, URLs, intervals).
        member: this process's member id (default ``host:pid``).

    Raises:
        KeyMissing: the hash key or the key-encryption key is not configured.
        SettingsError: ``FOLD_RULES`` names no valid fold versions.
    """

    def __init__(self, settings: Settings, member: str | None = None) -> None:
        self.settings = settings
        self.member = member or member_id()
        self.keys = load_keys(settings)
        try:
            self.rules = load_rule_versions(settings.fold_rules)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        self.versions: VersionPlan | None = None
        self._fatal: FoldVersionUnknown | None = None
        self.counters = ApplyCounters()
        self._stop = threading.Event()
        self._reader = StreamReader(settings, name=f"friendship-stream {self.member}")
        self._pool: WorkerPool[None] = WorkerPool(
            settings.threads, name="worker", context_factory=lambda: None
        )
        self.metrics = ProcessorMetrics(self._totals, self._partition_views)
        self._coordinator = Coordinator(
            settings, self.member, self._make_owner, on_take=self.metrics.lease_takes.inc
        )
        self._links = OwnerLinks(
            wake=self._pool.wake,
            subscribe=self._reader.subscribe,
            unsubscribe=self._reader.unsubscribe,
            released=self._coordinator.forget,
            stopped=self._coordinator.stopped,
            counters=self.counters,
            batch_committed=self.metrics.batch_committed,
            lease_released=lambda lost: self.metrics.lease_released(lost=lost),
        )
        # The owned partitions' stream tails, for the lag gauges (one stream connection, opened
        # only when the metrics are served; read every PROCESSOR_TAILS_REFRESH_S, not every
        # second as the API does: the reader's own offsets keep the gauge live meanwhile).
        self._tails = TailCache(
            settings,
            self._coordinator.owned_partitions,
            refresh_s=tuning.PROCESSOR_TAILS_REFRESH_S,
            name=f"friendship-stream tails {self.member}",
        )
        self._metrics_server: MetricsServer | None = None
        if settings.metrics_port is not None:
            self._metrics_server = MetricsServer(
                self.metrics.registry,
                settings.metrics_host,
                settings.metrics_port,
                settings.metrics_token,
            )

    def prepare(self) -> None:
        """Migrate the database, declare the topology, create the checkpoint rows, check the
        keys and decide what to do about fold versions (``processor.versions.plan``).

        Raises:
            KeyMissing: the stored data keys were wrapped by another key-encryption key.
            FoldVersionUnknown: the live projections are at a fold version this code cannot
                serve.
        """
        migrate(self.settings.database_url)
        declare_topology(self.settings)
        current = self.rules.current.version
        with connect(self.settings.database_url) as conn:
            ensure_checkpoints(conn, self.settings.partitions, fold_version=current)
            check_keys(conn, self.keys)
            self.versions = plan(live_fold_version(conn, current), self.rules)
        if self.versions.build is not None:
            log.info(
                "the live projections are at fold version %d, this processor's rule is %d: "
                "serving %d while %d is built beside it",
                self.versions.live_version,
                current,
                self.versions.live_version,
                current,
            )

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Own partitions and apply their batches until ``stop()``; returns the exit code (0).

        On stop, the batches in flight finish and commit; records read but not yet applied are
        dropped and read again by the next owner from the checkpoint.

        Raises:
            SettingsError: the metrics port is in use (``PROCESSOR_METRICS_PORT``).
            MemberIdInUse: another live process joined with this member id.
            psycopg.Error: the database cannot be reached at the start.
            FoldVersionUnknown: a partition's projections moved to a fold version this code
                does not know (a newer processor swapped it in): this one stopped writing.
        """
        if self._metrics_server is not None:
            self._metrics_server.start()  # first: a port in use stops the process before it joins
            log.info(
                "processor metrics at %s%s",
                self._metrics_server.url,
                " (bearer token required)" if self.settings.metrics_token else "",
            )
        try:
            self._coordinator.join()
        except BaseException:
            self._stop_metrics()
            raise
        self._reader.start()
        if self._metrics_server is not None:
            self._tails.start()  # only the lag gauges need it
        self._pool.start()
        if self.versions is not None and self.versions.build is not None:
            # Only then: the builder brings replay's swap, SQLAlchemy and Alembic with it.
            from processor.versions.builder import ProjectionBuilder  # noqa: PLC0415

            ProjectionBuilder(self.settings, self.versions.build, self.member, self._stop).start()
        settings = self.settings
        log.info(
            "processor %s started: %d partitions, %d threads, batch %d events / %.3f s",
            self.member,
            settings.partitions,
            settings.threads,
            settings.batch_size,
            settings.batch_wait_s,
        )
        if on_started is not None:
            on_started()
        try:
            self._loop()
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal
        return 0

    def stop(self) -> None:
        """Finish the batches in flight and return from ``run`` (callable from any thread)."""
        self._stop.set()

    def owned_partitions(self) -> list[int]:
        """The partitions this process owns now."""
        return self._coordinator.owned_partitions()

    def _loop(self) -> None:
        last_progress = time.monotonic()
        applied_before = 0
        while not self._stop.is_set():
            self._coordinator.tick(self._stop.is_set)
            now = time.monotonic()
            if now - last_progress >= tuning.PROGRESS_EVERY_S:
                self._log_progress(now - last_progress, applied_before)
                applied_before = self.counters.applied
                last_progress = now
            self._stop.wait(self.settings.lease_interval_s)

    def _totals(self) -> Totals:
        counters = self.counters
        return Totals(
            applied=counters.applied,
            duplicates=counters.duplicates,
            dead_lettered=counters.dead_lettered,
            erased_skipped=counters.erased_skipped,
            reconnects=self._reader.reconnects,
        )

    def _partition_views(self) -> list[PartitionView]:
        """The owned partitions' checkpoints and tails, from memory (no I/O)."""
        views = []
        for owner in self._coordinator.owners():
            checkpoint = owner.applier.checkpoint
            received = self._reader.received_tail(owner.partition)
            read = self._tails.tail(owner.partition)
            tail = max(
                checkpoint, -1 if received is None else received, -1 if read is None else read
            )
            views.append(PartitionView(owner.partition, checkpoint, tail))
        return views

    def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()

    def _make_owner(
        self, partition: int, conn: psycopg.Connection, checkpoint: int, epoch: int, version: int
    ) -> PartitionOwner | None:
        """The owner of a partition whose lease ``conn`` just took (not reading yet), folding
        with the partition's fold ``version``; None, and the process stops, when this code does
        not know that version."""
        rules = self.rules.get(version)
        if rules is None:
            self._fatal = FoldVersionUnknown(
                f"partition {partition}: the projections are at fold version {version} now; this "
                f"processor knows {self.rules.describe()}: it stops writing (deploy the processor "
                "that knows the new version)"
            )
            log.error("%s", self._fatal)
            self._stop.set()
            return None
        settings = self.settings
        owner: PartitionOwner | None = None

        def wake() -> None:
            if owner is not None:
                owner.wake()

        feed = PartitionFeed(
            partition,
            next_offset=checkpoint + 1,
            batch_size=settings.batch_size,
            batch_wait_s=settings.batch_wait_s,
            loop=self._reader.loop,
            on_ready=wake,
            first_offset_probe=self._reader.first_offset,
        )
        applier = PartitionApplier(
            partition,
            checkpoint,
            self.member,
            self.keys,
            lease_epoch=epoch,
            rules=rules,
            on_retry=self.metrics.batch_retries.inc,
        )
        owner = PartitionOwner(
            conn, applier, feed, batch_size=settings.batch_size, links=self._links
        )
        return owner

    def _shutdown(self) -> None:
        log.info("processor %s stopping: finishing batches in flight", self.member)
        self._tails.stop()
        self._reader.stop()
        for name in self._pool.stop(tuning.SHUTDOWN_TIMEOUT_S):
            log.error(
                "%s still busy after %.0f s; closing its connection (its batch rolls back)",
                name,
                tuning.SHUTDOWN_TIMEOUT_S,
            )
        self._coordinator.leave()
        log.info(
            "processor %s stopped: %d events applied, %d duplicates, %d dead-lettered, %d of "
            "erased children skipped",
            self.member,
            self.counters.applied,
            self.counters.duplicates,
            self.counters.dead_lettered,
            self.counters.erased_skipped,
        )
        self._stop_metrics()

    def _log_progress(self, elapsed_s: float, applied_before: int) -> None:
        rate = (self.counters.applied - applied_before) / elapsed_s if elapsed_s > 0 else 0.0
        log.info(
            "owning %d partitions; %d events applied (%.0f/s), %d duplicates, %d dead-lettered, "
            "%d of erased children skipped",
            len(self.owned_partitions()),
            self.counters.applied,
            rate,
            self.counters.duplicates,
            self.counters.dead_lettered,
            self.counters.erased_skipped,
        )
