"""The benchmark's pure parts: latency matching, percentiles, profile summary, targets, README."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest

from bench.baseline import as_json, compare, passed_on
from bench.baseline import markdown as baseline_markdown
from bench.harness import CpuSample, cpu_us_per_event
from bench.http_load import LoadResult
from bench.latency import best_within, commit_latencies, next_sweep_share, percentile
from bench.profile import summarise
from bench.report import (
    README_END,
    README_START,
    markdown,
    share_text,
    targets,
    write_readme_section,
)
from bench.results import (
    BenchResults,
    DrainResult,
    IngestResult,
    LatencyResult,
    LatencySweepResult,
    PreviousDesignResult,
    ReadsResult,
    SweepPoint,
)
from processor.publishing.publisher import OutgoingEvent


def test_an_event_commits_at_the_first_checkpoint_change_covering_its_offset() -> None:
    events = [OutgoingEvent(f"e{n}", "u", b"{}") for n in range(4)]
    offsets = {"e0": (0, 0), "e1": (0, 5), "e2": (1, 3), "e3": (2, 0)}
    changes = [(10.0, 0, 2), (10.5, 0, 7), (11.0, 1, 3), (9.0, 0, -1)]
    latencies = commit_latencies(events, [1.0, 2.0, 3.0, 4.0], offsets, changes)
    assert latencies[:3] == [9.0, 8.5, 8.0]
    assert math.isinf(latencies[3])  # partition 2 never committed


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(n) for n in range(1, 101)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_profile_summary_groups_threads_and_counts_self_and_product_time() -> None:
    raw = [
        "thread (0x1): worker-0;run (threading.py:10);apply_batch (processor/applying/batch.py:5);"
        "execute (psycopg/cursor.py:3) 6\n",
        "thread (0x2): worker-1;run (threading.py:10);apply_batch (processor/applying/batch.py:9);"
        "decode_event (schemas/validation.py:40) 4\n",
        "thread (0x3): stream-reader;_run_loop (processor/reading/reader.py:1) 5\n",
        "not a sample line\n",
    ]
    summary = {t.thread: t for t in summarise(raw)}
    workers = summary["worker-*"]
    assert workers.samples == 10
    assert workers.self_time[0].frame == "execute (psycopg/cursor.py)"
    assert workers.self_time[0].percent == 60.0
    assert workers.inclusive[0].frame == "apply_batch (processor/applying/batch.py)"
    assert workers.inclusive[0].samples == 10
    assert summary["stream-reader"].samples == 5


def _results(drain_rate: float, previous_rate: float, p99_ms: float) -> BenchResults:
    results = BenchResults()
    results.ingest = IngestResult(10_000, 500, 1.0, 10_000.0)
    results.drain = DrainResult(1_000, 10, 1.0, 0.9, drain_rate, drain_rate, 0, 10.0)
    results.latency = LatencyResult(
        5_000, 5_000, 1.0, 5_000, 5_000, 10.0, 20.0, p99_ms, p99_ms, 5.0, 5.0, 0.1
    )
    results.previous = [PreviousDesignResult(10, 100, 10, 1.0, previous_rate, 3, True)]
    return results


def test_targets_pass_and_fail_on_issue_16s_goals() -> None:
    # Ceiling 10,000 events/s: the drain must reach 2x, the previous design 150x less.
    passing = {
        t.name: t for t in targets(_results(drain_rate=20_000, previous_rate=130, p99_ms=80))
    }
    assert passing["backlog drain (1 process) vs ingest ceiling"].passed is True
    assert passing["processor vs previous design at 10 threads"].passed is True
    assert passing["p99 publish-to-commit at half the ceiling"].passed is True
    # Not measured in this run: no verdict rather than a pass or a fail.
    assert passing["replay vs raw stream read"].passed is None
    assert passing["backlog drain (1 process) vs raw stream read"].passed is None
    failing = {
        t.name: t for t in targets(_results(drain_rate=19_000, previous_rate=300, p99_ms=math.inf))
    }
    assert failing["backlog drain (1 process) vs ingest ceiling"].passed is False
    assert failing["backlog drain (1 process) vs ingest ceiling"].measured == "1.90x"
    assert failing["processor vs previous design at 10 threads"].passed is False
    assert failing["p99 publish-to-commit at half the ceiling"].measured == "never"


def test_the_drain_goals_take_the_default_two_process_drain_and_a_missed_p99_its_sweep() -> None:
    results = _results(drain_rate=12_000, previous_rate=130, p99_ms=900)
    results.drain_two_processes = DrainResult(1_000, 10, 1.0, 0.9, 21_000, 21_000, 0, 10.0)
    results.latency_sweep = LatencySweepResult(
        10_000,
        100.0,
        8.0,
        1,
        [
            SweepPoint(500, 0.05, 500, 20, 60, 4_000, 4_000),
            SweepPoint(1_000, 0.10, 1_000, 40, 150, 8_000, 8_000),
        ],
        best_share=0.05,
        best_rate=500,
    )
    found = {t.name: t for t in targets(results)}
    assert found["backlog drain (2 processes) vs ingest ceiling"].measured == "2.10x"
    assert found["backlog drain (2 processes) vs ingest ceiling"].passed is True
    latency = found["p99 publish-to-commit at half the ceiling"]
    assert latency.passed is False
    assert "highest rate within 100 ms: 5% of the ceiling (500 events/s)" in latency.measured


def test_the_cpu_goal_is_half_the_baseline_commits_cpu_per_event_in_the_same_run() -> None:
    results = _results(drain_rate=20_000, previous_rate=130, p99_ms=80)
    name = "processor CPU per applied event, drain, vs the baseline commit"
    assert {t.name: t for t in targets(results)}[name].passed is None
    baseline = {"drain": {"cpu_us_per_event": 80.0, "events_per_s": 9_000.0}}
    for current_cpu, passed in ((40.0, True), (41.0, False)):
        current = {"drain": {"cpu_us_per_event": current_cpu, "events_per_s": 20_000.0}}
        results.baseline = as_json(compare(current, baseline), "6d9ee94")
        target = {t.name: t for t in targets(results)}[name]
        assert target.passed is passed
        assert "at 6d9ee94" in target.measured
    assert "| drain (events/s) | 9,000.00 | 20,000.00 | 2.22x (higher is better) |" in (
        markdown(results)
    )


def test_readme_section_is_replaced_between_the_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{README_START}\nold\n{README_END}\n\nrest\n")
    assert write_readme_section(readme, "new table")
    assert readme.read_text() == f"# title\n\n{README_START}\nnew table\n{README_END}\n\nrest\n"
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers\n")
    assert not write_readme_section(bare, "x")
    assert bare.read_text() == "no markers\n"


def test_baseline_run_gets_the_sizes_but_not_this_runs_own_flags() -> None:
    argv = ["--quick", "--readme", "README.md", "--baseline=abc123", "--out", "x", "--events", "9"]
    assert passed_on(argv) == ["--quick", "--events", "9"]
    assert passed_on(["--baseline", "abc123", "--steps", "drain"]) == ["--steps", "drain"]


def test_comparison_takes_cpu_per_event_alike_from_both_runs() -> None:
    older = {
        "drain": {
            "events": 1_000,
            "seconds": 2.0,
            "processor_cpu_cores": 0.5,
            "events_per_s": 500.0,
        }
    }
    newer = {
        "drain": {
            "events": 1_000,
            "seconds": 1.0,
            "events_per_s": 1_000.0,
            "cpu_us_per_event": 200.0,
            "cpu_us_per_event_with_startup": 250.0,
        }
    }
    found = {row.figure: row for row in compare(newer, older)}
    cpu = found["drain, processor CPU per event (us)"]
    # Like with like: the older run has no figure from the first commit, so both include
    # start-up (0.5 cores x 2 s over 1,000 events).
    assert (cpu.baseline, cpu.current) == (1_000.0, 250.0)
    assert cpu.ratio == 0.25
    assert "with start-up" in cpu.note
    newer_still = {"drain": {**newer["drain"], "cpu_us_per_event": 100.0}}
    both_steady = {r.figure: r for r in compare(newer_still, newer)}
    assert both_steady["drain, processor CPU per event (us)"].ratio == 0.5
    assert found["drain (events/s)"].ratio == 2.0
    assert found["replay (events/s)"].ratio is None
    table = baseline_markdown(as_json(list(found.values()), "old"), "new")
    assert "| drain (events/s) | 500.00 | 1,000.00 | 2.00x (higher is better) |" in table


def test_cpu_per_event_is_the_process_ticks_over_the_events() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    before, after = CpuSample(10, 0, 0), CpuSample(10 + ticks, 0, 0)
    assert cpu_us_per_event(before, after, 1_000_000) == 1.0
    assert cpu_us_per_event(before, before, 10) == 0.0
    assert cpu_us_per_event(before, after, 0) == 0.0


def test_the_sweep_keeps_the_highest_share_within_the_goal() -> None:
    def point(share: float, p99_ms: float) -> SweepPoint:
        return SweepPoint(1000 * share, share, 1000 * share, 1.0, p99_ms, 10, 10)

    points = [point(0.05, 40.0), point(0.1, 99.0), point(0.2, 180.0)]
    best = best_within(points, 100.0)
    assert best is not None and best.share == 0.1
    assert best_within([point(0.05, math.inf), point(0.1, math.nan)], 100.0) is None
    assert best_within([], 100.0) is None


def test_read_goals_need_half_of_healthz_a_50_ms_p99_and_no_failed_request() -> None:
    load = LoadResult(50, 10.0, 20_000, 20_000, {}, 0, {}, 2_000.0, 5.0, 40.0, 60.0, 50.0)
    reads = ReadsResult(
        50,
        10.0,
        4_000,
        load,
        load,
        2_000.0,
        3_800.0,
        2_000 / 3_800,
        5.0,
        40.0,
        60.0,
        0,
        0,
        900.0,
        300.0,
        50.0,
    )
    results = _results(drain_rate=20_000, previous_rate=130, p99_ms=80)
    results.reads = reads
    found = {t.name: t for t in targets(results)}
    ratio = found["friendship reads vs /healthz, 50 clients, same server"]
    p99 = found["p99 of a friendship read, 50 clients"]
    assert (ratio.passed, p99.passed) == (True, True)
    assert ratio.measured.startswith("53% (2,000 vs 3,800 requests/s)")
    results.reads = dataclasses.replace(reads, p99_ms=51.0, errors=3)
    found = {t.name: t for t in targets(results)}
    assert found["p99 of a friendship read, 50 clients"].passed is False
    assert found["friendship reads vs /healthz, 50 clients, same server"].passed is False
    assert (
        "3 failed requests"
        in found["friendship reads vs /healthz, 50 clients, same server"].measured
    )


def _point(share: float, p99_ms: float) -> SweepPoint:
    return SweepPoint(share * 10_000, share, share * 10_000, p99_ms / 2, p99_ms, 100, 100)


@pytest.mark.parametrize(
    ("p99_by_share", "expected_order", "best"),
    [
        # Met at 5%: up until the first miss.
        ({0.05: 40, 0.1: 70, 0.2: 400}, [0.05, 0.1, 0.2], 0.1),
        # Met everywhere: every rising share, the highest is best.
        ({0.05: 40, 0.1: 50, 0.2: 60, 0.3: 90}, [0.05, 0.1, 0.2, 0.3], 0.3),
        # Missed at 5%: down until the first met share.
        ({0.05: 130, 0.025: 104, 0.01: 21}, [0.05, 0.025, 0.01], 0.01),
        # Missed everywhere: every share tried, none is best.
        (
            {0.05: 500, 0.025: 400, 0.01: math.inf, 0.005: math.nan},
            [0.05, 0.025, 0.01, 0.005],
            None,
        ),
    ],
)
def test_the_latency_sweep_climbs_while_p99_is_met_and_descends_while_it_misses(
    p99_by_share: dict[float, float], expected_order: list[float], best: float | None
) -> None:
    rising, falling = (0.3, 0.05, 0.2, 0.1), (0.01, 0.025, 0.005)
    points: list[SweepPoint] = []
    while (share := next_sweep_share(points, rising, falling, 100.0)) is not None:
        points.append(_point(share, p99_by_share[share]))
    assert [p.share for p in points] == expected_order
    found = best_within(points, 100.0)
    assert (found.share if found else None) == best


def test_a_sweep_without_shares_runs_nothing() -> None:
    assert next_sweep_share([], (), (0.01,), 100.0) is None


@pytest.mark.parametrize(
    ("share", "text"),
    [(0.005, "0.5%"), (0.01, "1%"), (0.025, "2.5%"), (0.05, "5%"), (0.1, "10%"), (0.3, "30%")],
)
def test_a_share_of_the_ceiling_keeps_the_digits_that_tell_it_apart(
    share: float, text: str
) -> None:
    assert share_text(share) == text
