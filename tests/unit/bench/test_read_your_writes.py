"""The read-your-writes benchmark's figures: nearest-rank percentiles in milliseconds."""

from __future__ import annotations

import math

from bench.read_your_writes import figures


def test_figures_are_nearest_rank_percentiles_in_milliseconds() -> None:
    result = figures([i / 1000 for i in range(100, 0, -1)])  # 1..100 ms, unsorted
    assert (result.count, result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == (
        100,
        50.0,
        90.0,
        99.0,
        100.0,
    )


def test_no_reads_give_no_figures() -> None:
    empty = figures([])
    assert empty.count == 0 and math.isnan(empty.p50_ms) and math.isnan(empty.max_ms)
