"""Events applied per interval over the last minutes, from ``checkpoint_log`` (the dashboard's
chart, ``GET /v1/stats/throughput``).

Every committed live batch writes a ``checkpoint_log`` row with its ``applied`` and
``dead_lettered`` counts and its ``committed_at`` (database time). ``throughput`` sums them per
interval of ``step_s`` seconds, aligned on the Unix epoch, for the ``count`` intervals that end
with the current one; intervals without a batch answer 0. Batches of a replay are not logged and
not counted. ``bucket_counts`` is the pure part (filling and rates), tested without a database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import msgspec
from sqlalchemy import Connection, text

#: Most intervals in one answer.
MAX_INTERVALS: Final = 720

_SUMS: Final = text(
    """
    SELECT floor(extract(epoch FROM committed_at) / :step)::bigint AS bucket,
           sum(applied)::bigint, sum(dead_lettered)::bigint
    FROM checkpoint_log
    WHERE committed_at >= to_timestamp(:since)
    GROUP BY bucket
    """
)


class IntervalView(msgspec.Struct, frozen=True):
    """One interval: its start (UTC), the events applied and dead-lettered in batches committed
    in it, and ``per_s``: events applied per second (over the part that has passed, for the
    current interval)."""

    start: datetime
    applied: int
    dead_lettered: int
    per_s: float


class ThroughputView(msgspec.Struct, frozen=True):
    """``intervals`` of ``step_s`` seconds, oldest first, the last one the current (partial)
    interval; ``at`` is the database time of the answer."""

    at: datetime
    step_s: int
    intervals: list[IntervalView]


def bucket_counts(
    sums: Iterable[tuple[int, int, int]], now: datetime, step_s: int, count: int
) -> ThroughputView:
    """The ``count`` intervals of ``step_s`` seconds ending with the one holding ``now``.

    Args:
        sums: ``(bucket, applied, dead_lettered)`` rows; bucket = floor(epoch seconds / step_s).
            Buckets outside the window are left out.
        now: the current time (timezone-aware).
        step_s: interval length, seconds, >= 1.
        count: intervals, 1..``MAX_INTERVALS``.

    Raises:
        ValueError: ``step_s`` or ``count`` out of range, or ``now`` naive.
    """
    if step_s < 1 or not 1 <= count <= MAX_INTERVALS:
        raise ValueError(f"step_s >= 1 and 1 <= count <= {MAX_INTERVALS} (got {step_s}, {count})")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_s = now.timestamp()
    last = math.floor(now_s / step_s)
    first = last - count + 1
    by_bucket = {bucket: (applied, dead) for bucket, applied, dead in sums}
    intervals = []
    for bucket in range(first, last + 1):
        applied, dead = by_bucket.get(bucket, (0, 0))
        start_s = bucket * step_s
        elapsed = min(step_s, max(1.0, now_s - start_s))
        intervals.append(
            IntervalView(
                start=datetime.fromtimestamp(start_s, UTC),
                applied=applied,
                dead_lettered=dead,
                per_s=round(applied / elapsed, 3),
            )
        )
    return ThroughputView(at=now.astimezone(UTC), step_s=step_s, intervals=intervals)


def throughput(conn: Connection, minutes: int, step_s: int) -> ThroughputView:
    """Events applied per ``step_s``-second interval over the last ``minutes`` minutes.

    Uses the index on ``checkpoint_log.committed_at``; the database's clock sets "now".

    Raises:
        ValueError: more than ``MAX_INTERVALS`` intervals, or a bound below 1.
    """
    if minutes < 1 or step_s < 1:
        raise ValueError("minutes and step_s are at least 1")
    count = math.ceil(minutes * 60 / step_s)
    if count > MAX_INTERVALS:
        raise ValueError(f"{minutes} minutes in steps of {step_s} s is over {MAX_INTERVALS}")
    now = conn.execute(text("SELECT now()")).scalar_one()
    since = (math.floor(now.timestamp() / step_s) - count + 1) * step_s
    rows = conn.execute(_SUMS, {"step": step_s, "since": since}).all()
    sums = [(int(bucket), int(applied), int(dead)) for bucket, applied, dead in rows]
    return bucket_counts(sums, now, step_s, count)
