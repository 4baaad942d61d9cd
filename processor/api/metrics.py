"""Prometheus metrics of the API: request counters and latencies, and a scrape-time collector.

Each app has its own ``CollectorRegistry`` (no process-global state, so several apps, e.g. in
tests, never clash). ``GET /metrics`` renders it in a worker thread: the ``ProjectionCollector``
then reads the database (events applied, dead letters, checkpoints, owners) at that moment, and
takes the stream tails from the API's tail cache (``processor.reading.tails``: read in the
background every ``tuning.TAILS_REFRESH_S``), so a scrape never opens a broker connection.

Metric names:

- ``friendship_api_requests_total{method,route,status}``: answered requests; ``route`` is the
  route template (``/v1/users/{user_id:str}/friendship``), ``unmatched`` when no route matched.
- ``friendship_api_request_duration_seconds{method,route}``: handling time histogram, seconds.
- ``friendship_api_events_accepted_total``: events published and confirmed via ``POST /v1/events``.
- ``friendship_api_events_rejected_total``: invalid events refused by ``POST /v1/events``.
- ``friendship_events_applied_total``: distinct events applied to the projections.
- ``friendship_dead_letters_total``: invalid records dead-lettered.
- ``friendship_partition_checkpoint{partition}``, ``friendship_partition_tail{partition}``:
  committed and last stream offsets (-1 = none); ``friendship_partition_lag{partition}``: events
  in the log not yet applied; ``friendship_partition_owned{partition}``: 1 when a process owns it.
- ``friendship_api_scrape_source_up{source}``: 1 when ``database`` answered the scrape /
  ``broker`` answered the tail cache's last read.
- ``friendship_api_tails_age_seconds``: seconds since the tails were last read (absent before
  the first read).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from processor.api.errors import DATABASE_ERRORS
from processor.errors import loggable
from processor.reading.errors import ReadError
from processor.reading.tails import Tails
from processor.status import PartitionStatus
from projections.queries import Totals

log = logging.getLogger(__name__)

#: Content type of the Prometheus text exposition format 0.0.4 (Litestar adds the charset).
CONTENT_TYPE: Final = "text/plain; version=0.0.4"
#: ``route`` label of requests no route matched.
UNMATCHED_ROUTE: Final = "unmatched"
#: Latency buckets in seconds.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ProjectionCollector(Collector):
    """Reads projection totals and partition status when the registry is rendered.

    Args:
        read_totals: blocking call answering the events applied and dead letters.
        read_partitions: blocking call answering the status of every partition (the database
            and the cached tails).
        tails: the tail cache's last read (never waits).

    A source that fails is logged and reported as ``friendship_api_scrape_source_up 0``; the
    other metrics are still rendered.
    """

    def __init__(
        self,
        read_totals: Callable[[], Totals],
        read_partitions: Callable[[], Sequence[PartitionStatus]],
        tails: Callable[[], Tails],
    ) -> None:
        self._read_totals = read_totals
        self._read_partitions = read_partitions
        self._tails = tails

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not touch the database or the broker."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Read the sources now and yield their metric families."""
        up = GaugeMetricFamily(
            "friendship_api_scrape_source_up",
            "1 when the source answered this scrape, 0 when it failed",
            labels=["source"],
        )
        try:
            totals = self._read_totals()
        except Exception as exc:  # noqa: BLE001 - a failed source must not fail the scrape
            log.warning("metrics: reading totals failed: %s", loggable(exc))
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            yield CounterMetricFamily(
                "friendship_events_applied",
                "Distinct events applied to the projections",
                value=totals.events_applied,
            )
            yield CounterMetricFamily(
                "friendship_dead_letters",
                "Invalid records dead-lettered",
                value=totals.dead_lettered,
            )
        tails = self._tails()
        age = tails.age_s()
        up.add_metric(["broker"], 1 if age is not None and tails.error is None else 0)
        if age is not None:
            yield GaugeMetricFamily(
                "friendship_api_tails_age_seconds",
                "Seconds since the stream tails behind the lag gauges were read",
                value=age,
            )
        try:
            statuses = self._read_partitions()
        except (ReadError, OSError, *DATABASE_ERRORS) as exc:
            log.warning("metrics: reading partition status failed: %s", loggable(exc))
        else:
            yield from _partition_families(statuses)
        yield up


def _partition_families(statuses: Sequence[PartitionStatus]) -> Iterable[Metric]:
    checkpoint = GaugeMetricFamily(
        "friendship_partition_checkpoint",
        "Offset of the last event whose effects are committed (-1 = none)",
        labels=["partition"],
    )
    tail = GaugeMetricFamily(
        "friendship_partition_tail",
        "Offset of the last event in the partition stream (-1 = empty)",
        labels=["partition"],
    )
    lag = GaugeMetricFamily(
        "friendship_partition_lag",
        "Events in the partition stream not applied yet",
        labels=["partition"],
    )
    owned = GaugeMetricFamily(
        "friendship_partition_owned",
        "1 when a processor holds the partition's lease",
        labels=["partition"],
    )
    for status in statuses:
        label = [str(status.partition)]
        checkpoint.add_metric(label, status.checkpoint)
        tail.add_metric(label, status.tail)
        lag.add_metric(label, status.lag)
        owned.add_metric(label, 0 if status.owner is None else 1)
    return (checkpoint, tail, lag, owned)


class ApiMetrics:
    """The app's registry with its request and ingest metrics (thread-safe to update)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "friendship_api_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "friendship_api_request_duration_seconds",
            "Time to answer an HTTP request, in seconds",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._latencies: dict[tuple[str, str], Histogram] = {}
        self.events_accepted = Counter(
            "friendship_api_events_accepted",
            "Events published with broker confirms via POST /v1/events",
            registry=self.registry,
        )
        self.events_rejected = Counter(
            "friendship_api_events_rejected",
            "Invalid events refused by POST /v1/events",
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and record its handling time (``seconds``).

        The labelled children are kept per ``(method, route, status)`` and ``(method, route)``:
        ``labels()`` checks and joins the label values and takes the metric's lock on every
        call. Only routed requests come here (a route's template and one of its methods), so
        the keys are as few as the app's routes, methods and statuses.
        """
        key = (method, route, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(method, route, str(status))
        latency = self._latencies.get(key[:2])
        if latency is None:
            latency = self._latencies[key[:2]] = self.latency.labels(method, route)
        counter.inc()
        latency.observe(seconds)

    def add_collector(self, collector: Collector) -> None:
        """Register a scrape-time collector (it is not called now)."""
        self.registry.register(collector)

    def record_unmatched(self, method: str, status: int) -> None:
        """Count a request that matched no route (routing errors skip the middleware)."""
        self.requests.labels(method, UNMATCHED_ROUTE, str(status)).inc()

    def render(self) -> bytes:
        """The registry in the text format (blocking: runs the collectors)."""
        return generate_latest(self.registry)


class RequestMetricsMiddleware(ASGIMiddleware):
    """Counts every routed HTTP request by method, route template and status, and times it."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Pass the request on, noting the answer's status and the time taken."""
        started = time.perf_counter()
        status = 500
        method = str(scope.get("method", ""))
        route = str(scope.get("path_template", UNMATCHED_ROUTE))

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await next_app(scope, receive, capture)
        finally:
            self._metrics.observe(method, route, status, time.perf_counter() - started)
