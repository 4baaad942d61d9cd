"""The Prometheus metrics of one processor process (README "Metrics", docs/contract.md §6.7).

Each process has a registry of its own (never prometheus-client's global one). Counters that
the runtime already keeps (``ApplyCounters``, the reader's reconnects) and the partition gauges
are read when the registry is rendered (``ProcessCollector``); the rest are updated where the
event happens. Names:

- ``friendship_processor_events_applied_total``: events applied to the projections.
- ``friendship_processor_duplicates_total``: records whose event id was already applied.
- ``friendship_processor_dead_letters_total``: records dead-lettered.
- ``friendship_processor_skipped_erased_total``: events of erased children skipped.
- ``friendship_processor_batch_records``: histogram of records per committed batch.
- ``friendship_processor_batch_commit_duration_seconds``: histogram, seconds from taking a
  batch off the feed to its commit (retries included).
- ``friendship_processor_partition_lag{partition}``: records between the partition's committed
  checkpoint and its stream tail, owned partitions only (see ``PartitionView``).
- ``friendship_processor_partition_checkpoint{partition}``: committed offset, owned partitions.
- ``friendship_processor_owned_partitions``: partitions this process owns.
- ``friendship_processor_lease_takes_total``: leases taken.
- ``friendship_processor_lease_handoffs_total``: leases given back (rebalance, another fold
  version, a failed read or an unexpected failure).
- ``friendship_processor_leases_lost_total``: leases lost (the lease connection died or was
  terminated, a commit was fenced, a database error on the lease connection).
- ``friendship_processor_stream_reconnects_total``: reconnects of the live stream reader.
- ``friendship_processor_batch_retries_total``: batch attempts repeated on transient database
  errors.
- ``process_*``: CPU seconds, resident memory, open files, start time (prometheus-client's
  ``ProcessCollector``, Linux).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX: Final = "friendship_processor_"
#: Records per batch: 1 up to the largest ``BATCH_SIZE`` one would set.
BATCH_RECORD_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10_000)
#: Seconds from a batch's start to its commit.
COMMIT_SECONDS_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class PartitionView:
    """One owned partition at scrape time.

    ``checkpoint`` is the committed offset (-1 = none); ``tail`` the last offset known in the
    stream (-1 = none known): the greater of the last offset the reader received and the last
    tail the process's ``TailCache`` read (at most ``tuning.PROCESSOR_TAILS_REFRESH_S`` seconds
    old plus a round). Lag is ``max(0, tail - checkpoint)``.
    """

    partition: int
    checkpoint: int
    tail: int

    @property
    def lag(self) -> int:
        """Records in the stream after the checkpoint."""
        return max(0, self.tail - self.checkpoint)


@dataclass(frozen=True)
class Totals:
    """Counts a process keeps anyway (``ApplyCounters``, ``StreamReader.reconnects``)."""

    applied: int
    duplicates: int
    dead_lettered: int
    erased_skipped: int
    reconnects: int


class _ScrapeCollector(Collector):
    """Reads the runtime's counters and owned partitions when the registry is rendered (in
    memory only: no database, no broker)."""

    def __init__(
        self,
        totals: Callable[[], Totals],
        partitions: Callable[[], Sequence[PartitionView]],
    ) -> None:
        self._totals = totals
        self._partitions = partitions

    def describe(self) -> Iterable[Metric]:
        """Nothing: the families are built at scrape time."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The counters and the owned partitions' gauges, now."""
        totals = self._totals()
        for name, documentation, value in (
            ("events_applied", "Events applied to the projections", totals.applied),
            (
                "duplicates",
                "Records whose event id was already applied (no effect)",
                totals.duplicates,
            ),
            ("dead_letters", "Records dead-lettered", totals.dead_lettered),
            ("skipped_erased", "Events of erased children skipped", totals.erased_skipped),
            ("stream_reconnects", "Reconnects of the live stream reader", totals.reconnects),
        ):
            yield CounterMetricFamily(PREFIX + name, documentation, value=value)
        views = list(self._partitions())
        lag = GaugeMetricFamily(
            PREFIX + "partition_lag",
            "Records between the committed checkpoint and the stream tail (owned partitions)",
            labels=["partition"],
        )
        checkpoint = GaugeMetricFamily(
            PREFIX + "partition_checkpoint",
            "Committed offset of each owned partition (-1 = none)",
            labels=["partition"],
        )
        for view in views:
            label = [str(view.partition)]
            lag.add_metric(label, view.lag)
            checkpoint.add_metric(label, view.checkpoint)
        yield lag
        yield checkpoint
        yield GaugeMetricFamily(
            PREFIX + "owned_partitions", "Partitions this process owns", value=len(views)
        )


class ProcessorMetrics:
    """One process's registry and the metrics updated as things happen (thread-safe).

    Args:
        totals: the runtime's counters, read at scrape time.
        partitions: the owned partitions' checkpoints and tails, read at scrape time.
        process_collector: also register prometheus-client's ``process_*`` metrics.
    """

    def __init__(
        self,
        totals: Callable[[], Totals],
        partitions: Callable[[], Sequence[PartitionView]],
        *,
        process_collector: bool = True,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ScrapeCollector(totals, partitions))
        if process_collector:
            ProcessCollector(registry=self.registry)
        self.batch_records = Histogram(
            PREFIX + "batch_records",
            "Records per committed batch",
            buckets=BATCH_RECORD_BUCKETS,
            registry=self.registry,
        )
        self.batch_commit_seconds = Histogram(
            PREFIX + "batch_commit_duration_seconds",
            "Seconds from a batch's start to its commit",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.lease_takes = Counter(
            PREFIX + "lease_takes", "Partition leases taken", registry=self.registry
        )
        self.lease_handoffs = Counter(
            PREFIX + "lease_handoffs", "Partition leases given back", registry=self.registry
        )
        self.leases_lost = Counter(
            PREFIX + "leases_lost",
            "Partition leases lost (connection gone, fenced, database error)",
            registry=self.registry,
        )
        self.batch_retries = Counter(
            PREFIX + "batch_retries",
            "Batch attempts repeated after a transient database error",
            registry=self.registry,
        )

    def batch_committed(self, records: int, seconds: float) -> None:
        """A batch of ``records`` committed ``seconds`` after it started."""
        self.batch_records.observe(records)
        self.batch_commit_seconds.observe(seconds)

    def lease_released(self, *, lost: bool) -> None:
        """A lease ended: lost, or given back."""
        (self.leases_lost if lost else self.lease_handoffs).inc()
