"""Helpers of the cluster scenarios: the figures table, the lost / applied-twice verdict, and
per-partition progress watched while nodes die and come back."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from processor.settings import Settings
from projections.database import connect
from testkit.reference import reference_fold
from tests.faults.support import assert_batches_atomic
from tests.integration.support import assert_projections_equal, stored_projections


@dataclass(frozen=True)
class Row:
    """One line of the cluster figures table (durations in seconds; None: not measured)."""

    scenario: str
    events: int | None = None
    lost: int | None = None
    applied_twice: int | None = None
    resume_median_s: float | None = None
    resume_max_s: float | None = None
    notes: str = ""


@dataclass
class ClusterReport:
    """The rows recorded by the cluster tests of this session."""

    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)


def _cell(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def render_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| scenario | events | lost | applied twice | resume per partition, median / max (s) "
        "| notes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        resume = (
            "-"
            if r.resume_max_s is None
            else f"{_cell(r.resume_median_s)} / {_cell(r.resume_max_s)}"
        )
        lines.append(
            f"| {r.scenario} | {_cell(r.events)} | {_cell(r.lost)} | {_cell(r.applied_twice)} "
            f"| {resume} | {r.notes} |"
        )
    return "\n".join(lines)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.1)


def applied_count(settings: Settings) -> int:
    """Events applied so far (rows of ``applied_events``)."""
    with connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM applied_events").fetchone()
    assert row is not None
    return int(row[0])


def wait_applied(settings: Settings, expected: int, timeout_s: float) -> int:
    """Wait until ``expected`` events are applied (or ``timeout_s`` passed); the count then.
    Does not fail: the verdict that follows names what is missing."""
    deadline = time.monotonic() + timeout_s
    while (count := applied_count(settings)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def partition_applied(settings: Settings) -> dict[int, int]:
    """{partition: events applied} from the checkpoints."""
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT partition, applied_count FROM checkpoints").fetchall()
    return {int(partition): int(applied) for partition, applied in rows}


class ProgressWatch:
    """Polls every partition's applied count in a thread; ``mark()`` notes a moment (a node
    kill), after which each partition's first progress is its *time to resume*."""

    def __init__(self, settings: Settings, poll_s: float = 0.1) -> None:
        self._settings = settings
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._marked_at: float | None = None
        self._at_mark: dict[int, int] = {}
        self._resumed: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="progress-watch", daemon=True)

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def mark(self) -> dict[int, int]:
        """Start timing now; returns the applied counts at this moment."""
        counts = partition_applied(self._settings)
        with self._lock:
            self._marked_at = time.monotonic()
            self._at_mark = counts
            self._resumed = {}
        return counts

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            counts = partition_applied(self._settings)
            now = time.monotonic()
            with self._lock:
                if self._marked_at is None:
                    continue
                for partition, applied in counts.items():
                    if partition not in self._resumed and applied > self._at_mark.get(partition, 0):
                        self._resumed[partition] = now - self._marked_at

    def resumed(self) -> dict[int, float]:
        """{partition: seconds from the mark to its first progress} so far."""
        with self._lock:
            return dict(self._resumed)

    @property
    def at_mark(self) -> dict[int, int]:
        """The applied counts at the mark."""
        with self._lock:
            return dict(self._at_mark)


def pending_at_mark(watch: ProgressWatch, final: dict[int, int]) -> set[int]:
    """Partitions that still had events to apply at the mark (their final count is higher)."""
    at_mark = watch.at_mark
    return {p for p, applied in final.items() if applied > at_mark.get(p, 0)}


def resume_figures(times: Iterable[float]) -> tuple[float | None, float | None]:
    """(median, max) of the resume times, or (None, None) when there are none."""
    values = sorted(times)
    if not values:
        return None, None
    return statistics.median(values), values[-1]


def event_ids(bodies: Iterable[bytes]) -> set[uuid.UUID]:
    """The event ids of valid bodies."""
    return {uuid.UUID(json.loads(body)["event_id"]) for body in bodies}


def applied_ids(settings: Settings) -> set[uuid.UUID]:
    """The ids of every applied event."""
    with connect(settings.database_url) as conn:
        return {uuid.UUID(str(r[0])) for r in conn.execute("SELECT event_id FROM applied_events")}


def verify(
    settings: Settings,
    report: ClusterReport,
    *,
    scenario: str,
    must_apply: Sequence[bytes],
    sent: Sequence[bytes] | None = None,
    resume: tuple[float | None, float | None] = (None, None),
    notes: str = "",
) -> Row:
    """Record the scenario's row, then assert exactly-once on the final state.

    Args:
        must_apply: bodies that must each be applied once (published with confirms, or
            answered 202).
        sent: every body sent, in publish order (default ``must_apply``): the others may be
            applied (at most once), as a publish the caller was told failed may still have
            reached the log.

    The fold of the applied bodies, in publish order (a user's score depends on the order),
    is the expected state. *lost* = ``must_apply`` ids with no applied row; *applied twice* =
    events counted by the projections beyond that fold, summed per user.
    """
    must = event_ids(must_apply)
    in_order: dict[uuid.UUID, bytes] = {}
    for body in must_apply if sent is None else sent:
        in_order.setdefault(uuid.UUID(json.loads(body)["event_id"]), body)
    applied = applied_ids(settings)
    stored = stored_projections(settings)
    expected = reference_fold([body for i, body in in_order.items() if i in applied])
    lost = len(must - applied)
    twice = sum(
        max(0, projection["events_applied"] - expected.get(user, {}).get("events_applied", 0))
        for user, projection in stored.items()
    )
    row = Row(scenario, len(must), lost, twice, resume[0], resume[1], notes)
    report.add(row)
    assert lost == 0, f"{lost} events were never applied"
    assert twice == 0, f"{twice} events were applied more than once"
    assert not applied - set(in_order), "an event that was never sent was applied"
    assert_projections_equal(stored, expected)
    assert_batches_atomic(settings)
    return row


def json_or_none(body: bytes) -> Any:
    """``body`` decoded as JSON, or None when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None
