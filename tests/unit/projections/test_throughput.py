"""``projections.throughput.bucket_counts``: the window's intervals, filled and rated (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from projections.throughput import MAX_INTERVALS, bucket_counts

NOW = datetime(2026, 12, 7, 8, 0, 25, tzinfo=UTC)  # 25 s into the interval 08:00:20..08:00:30
LAST = int(NOW.timestamp()) // 10


def test_every_interval_of_the_window_is_there_oldest_first_empty_ones_zero() -> None:
    view = bucket_counts([(LAST, 50, 1), (LAST - 3, 200, 0)], NOW, 10, 6)
    assert [i.start for i in view.intervals] == [
        datetime(2026, 12, 7, 8, 0, 20, tzinfo=UTC) - timedelta(seconds=10 * k)
        for k in range(5, -1, -1)
    ]
    assert [i.applied for i in view.intervals] == [0, 0, 200, 0, 0, 50]
    assert view.intervals[-1].dead_lettered == 1
    assert view.step_s == 10 and view.at == NOW


def test_a_full_interval_rates_over_its_length_the_current_one_over_the_seconds_passed() -> None:
    view = bucket_counts([(LAST, 50, 0), (LAST - 1, 100, 0)], NOW, 10, 2)
    assert [i.per_s for i in view.intervals] == [10.0, 10.0]  # 100/10 s, 50/5 s


def test_sums_outside_the_window_are_left_out() -> None:
    view = bucket_counts([(LAST - 10, 999, 9), (LAST + 1, 5, 0)], NOW, 10, 3)
    assert sum(i.applied for i in view.intervals) == 0


@pytest.mark.parametrize(("step_s", "count"), [(0, 10), (10, 0), (10, MAX_INTERVALS + 1)])
def test_bounds_out_of_range_are_refused(step_s: int, count: int) -> None:
    with pytest.raises(ValueError, match="step_s"):
        bucket_counts([], NOW, step_s, count)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        bucket_counts([], NOW.replace(tzinfo=None), 10, 3)
