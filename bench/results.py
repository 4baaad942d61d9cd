"""What each benchmark step measured: plain frozen records, serialised as they are to JSON.

Rates are events per second, durations seconds, latencies milliseconds. A step that could not run
keeps its record with ``available = False`` and a ``reason``, so the report always has every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.http_load import LoadResult


@dataclass(frozen=True)
class IngestResult:
    """Publish ceiling: events published through the ``events`` exchange with confirms.

    ``seconds`` runs from the first publish to the last broker confirm (the connection is open
    before and a warm-up of ``warmup_events`` is published before the clock starts).
    """

    events: int
    warmup_events: int
    seconds: float
    events_per_s: float


@dataclass(frozen=True)
class DrainResult:
    """The processor draining a backlog of ``events`` already in the partition streams.

    ``seconds`` runs from starting ``python -m processor run`` (start-up included) until every
    partition's checkpoint reached its tail; ``steady_seconds`` from the first committed batch.
    ``mismatched_users`` counts users whose stored projection differs from the sequential fold.
    ``processor_cpu_cores`` is the processor's CPU time over the drain's wall time (one Python
    process: its threads share one GIL); ``machine_cpu_busy`` the share of all cores busy.
    ``cpu_us_per_event`` is the processor's CPU time from the first commit seen to the end over
    the events committed in that time, in microseconds (start-up left out: the figure the
    per-event work sets); ``cpu_us_per_event_with_startup`` the same from the process start
    over every event. ``processes`` is the number of member processes that shared the partitions
    (their CPU summed).
    """

    events: int
    users: int
    seconds: float
    steady_seconds: float
    events_per_s: float
    steady_events_per_s: float
    mismatched_users: int
    poll_interval_ms: float
    processor_cpu_cores: float = 0.0
    machine_cpu_busy: float = 0.0
    cpu_us_per_event: float = 0.0
    cpu_us_per_event_with_startup: float = 0.0
    processes: int = 1


@dataclass(frozen=True)
class PartitionLatency:
    """Publish-to-commit latency of the events of one partition, and how many checkpoint
    commits (batches) carried them."""

    partition: int
    events: int
    p50_ms: float
    p99_ms: float
    commits: int = 0


@dataclass(frozen=True)
class LatencyResult:
    """Publish-to-commit latency at a steady offered load.

    The publish time of an event is taken just before its ``basic.publish``; its commit time is
    the first poll of the checkpoint table, from a separate process every ``poll_interval_ms``,
    that showed its partition's checkpoint at or past its offset (offsets are read afterwards from
    ``applied_events``). A commit is therefore seen up to one poll interval plus one query late:
    ``resolution_ms`` is the mean interval between polls as measured. The CPU figures (as in
    ``DrainResult``) cover the load and the catch-up after it.
    """

    target_rate: float
    offered_rate: float
    seconds: float
    events: int
    committed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    poll_interval_ms: float
    resolution_ms: float
    drained_after_s: float
    processor_cpu_cores: float = 0.0
    machine_cpu_busy: float = 0.0
    cpu_us_per_event: float = 0.0
    worst_partitions: list[PartitionLatency] = field(default_factory=list)


@dataclass(frozen=True)
class SweepPoint:
    """One offered rate of the latency sweep: ``rate`` in events/s, ``share`` of the ingest
    ceiling (0..1), the p50 and p99 publish-to-commit latency in milliseconds (as in
    ``LatencyResult``) and the processors' CPU per committed event in microseconds."""

    rate: float
    share: float
    offered_rate: float
    p50_ms: float
    p99_ms: float
    events: int
    committed: int
    cpu_us_per_event: float = 0.0


@dataclass(frozen=True)
class LatencySweepResult:
    """Short latency runs at shares of the ingest ceiling, run when p99 at half the ceiling
    misses its goal: up from the first share while p99 is within ``goal_ms``, down from it while
    p99 misses (``bench.latency.next_sweep_share``); ``points`` in the order run.

    ``best_share`` (0..1) and ``best_rate`` (events/s) are the highest offered rate whose p99
    was within ``goal_ms`` (None when none was); ``processes`` the member processes used.
    """

    ceiling: float
    goal_ms: float
    seconds_each: float
    processes: int
    points: list[SweepPoint] = field(default_factory=list)
    best_share: float | None = None
    best_rate: float | None = None


@dataclass(frozen=True)
class PreviousDesignResult:
    """The previous design (one classic queue, thread pool, row locks per event) on a backlog.

    ``seconds`` runs from the consumer's start to the last ack; ``mismatched_users`` counts users
    whose final score differs from the sequential fold of the same events.
    """

    threads: int
    events: int
    users: int
    seconds: float
    events_per_s: float
    mismatched_users: int
    completed: bool
    errors: int = 0


@dataclass(frozen=True)
class ReplayResult:
    """Replay rate next to the raw stream read rate of the same log.

    ``raw_read_events_per_s`` reads every partition from its first offset on one stream
    connection and extracts each body; nothing is decoded or stored. ``replay_*`` is the replay
    feature's own run over the same log, when it exists: its rebuild phases, its own raw read of
    the same records (its reader, no database) and whether its verify found live identical.
    ``replay_cpu_us_per_event`` is the CPU time of the verify run (it runs in the benchmark's
    process: its raw read, the rebuild and the comparison with live) over the replayed events,
    in microseconds.
    """

    events: int
    raw_read_seconds: float
    raw_read_events_per_s: float
    available: bool
    reason: str = ""
    replay_seconds: float = 0.0
    replay_events_per_s: float = 0.0
    replay_method: str = ""
    replay_raw_read_seconds: float = 0.0
    replay_raw_read_events_per_s: float = 0.0
    replay_identical: bool | None = None
    replay_cpu_us_per_event: float = 0.0

    @property
    def best_raw_read_events_per_s(self) -> float:
        """The faster of the two raw reads: the replay is held to the stricter baseline."""
        return max(self.raw_read_events_per_s, self.replay_raw_read_events_per_s)


@dataclass(frozen=True)
class FrameCount:
    """One frame (``function (file)``) and its share of a thread group's samples."""

    frame: str
    samples: int
    percent: float


@dataclass(frozen=True)
class ThreadProfile:
    """Self time of the busiest frames of one group of threads (same entry function)."""

    thread: str
    samples: int
    self_time: list[FrameCount]
    inclusive: list[FrameCount]


@dataclass(frozen=True)
class ProfileResult:
    """A py-spy recording of the processor, summarised per thread group.

    ``mode`` says what the processor did meanwhile: ``drain`` (a backlog) or ``live`` (a steady
    offered load of ``offered_rate`` events/s). ``sampling`` is ``gil`` (only the thread holding
    the GIL: where Python spends CPU; ``gil_held`` is the share of the recording's wall time in
    which some thread held it) or ``wall`` (every thread, waiting included).
    """

    available: bool
    mode: str = "drain"
    reason: str = ""
    sampling: str = ""
    events: int = 0
    rate_hz: int = 0
    seconds: float = 0.0
    gil_held: float = 0.0
    raw_path: str = ""
    offered_rate: float = 0.0
    threads: list[ThreadProfile] = field(default_factory=list)


@dataclass
class BenchResults:
    """Everything one run measured (a step not run stays None)."""

    meta: dict[str, object] = field(default_factory=dict)
    ingest: IngestResult | None = None
    #: The backlog drain with the product's defaults: every event's data encrypted.
    drain: DrainResult | None = None
    #: The same drain with plain events, in the same run: what encryption costs.
    drain_plain: DrainResult | None = None
    #: The encrypted drain with two member processes (``PROCESSOR_PROCESSES=2``), same run.
    drain_two_processes: DrainResult | None = None
    latency: LatencyResult | None = None
    light_latency: LatencyResult | None = None
    #: Rising offered rates when ``latency`` missed its p99 goal (None: not needed or not run).
    latency_sweep: LatencySweepResult | None = None
    previous: list[PreviousDesignResult] = field(default_factory=list)
    replay: ReplayResult | None = None
    profiles: list[ProfileResult] = field(default_factory=list)
    #: Point reads under 50 clients against ``/healthz`` on the same API process.
    reads: ReadsResult | None = None
    #: Steps that failed, with the error (their rows say "not run").
    failures: dict[str, str] = field(default_factory=dict)
    #: With ``--baseline``: the comparison with that commit's run (``bench.baseline.as_json``:
    #: ``commit`` and ``figures``, each with ``baseline``, ``current`` and ``ratio``).
    baseline: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReadsResult:
    """Point reads under concurrency: ``GET /v1/users/{id}/friendship`` and ``GET /healthz`` on
    the same API process, ``clients`` keep-alive clients, ``seconds`` each (``bench.reads``).

    ``friendship_per_s`` and ``healthz_per_s`` count 200 answers per second; ``ratio`` is the
    first over the second. ``p50_ms``, ``p99_ms``, ``max_ms``: friendship read latency in the
    client. ``errors`` / ``healthz_errors``: answers other than 200 plus requests that got no
    answer (``friendship.statuses`` and ``.failure_kinds`` say which). ``api_cpu_us_per_request``
    (and ``_per_healthz``): the API process's CPU time over the requests answered, in
    microseconds; ``client_cpu_us_per_request`` the load generator's.
    """

    clients: int
    seconds: float
    users: int
    friendship: LoadResult
    healthz: LoadResult
    friendship_per_s: float
    healthz_per_s: float
    ratio: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    healthz_errors: int
    api_cpu_us_per_request: float
    api_cpu_us_per_healthz: float
    client_cpu_us_per_request: float
