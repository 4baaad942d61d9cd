"""The report: a table of every measurement, the targets with their ratios and pass/fail, the
profile summaries, written as ``bench.json`` and ``bench.md`` (the README's section); the chart
is ``bench.chart``."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from bench.baseline import CPU_GOAL, DRAIN_CPU_FIGURE
from bench.baseline import markdown as comparison_markdown
from bench.results import (
    BenchResults,
    DrainResult,
    LatencyResult,
    LatencySweepResult,
    PreviousDesignResult,
    ProfileResult,
    ReadsResult,
    ReplayResult,
)

#: The README section between these markers is replaced by ``write_readme_section``.
README_START: Final = "<!-- bench:start -->"
README_END: Final = "<!-- bench:end -->"

#: Issue 16's goals, as ratios measured in one run.
SPEEDUP_TARGET: Final = 150.0
DRAIN_TARGET: Final = 2.0
DRAIN_VS_RAW_TARGET: Final = 0.6
P99_TARGET_MS: Final = 100.0
REPLAY_TARGET: Final = 0.8
READS_VS_HEALTHZ_TARGET: Final = 0.5
READ_P99_TARGET_MS: Final = 50.0


@dataclass(frozen=True)
class Row:
    """One measurement: what, its headline figure, the detail behind it, and the processor's
    CPU per event where the step measures it (``""`` where it does not)."""

    step: str
    figure: str
    detail: str
    cpu: str = ""


@dataclass(frozen=True)
class Target:
    """One target: the measured ratio or figure, the goal, and whether it was met (None = not
    measured in this run)."""

    name: str
    measured: str
    goal: str
    passed: bool | None


def _rate(value: float) -> str:
    return f"{value:,.0f} events/s"


def ms(value: float) -> str:
    """Milliseconds for a table (``never`` for an event that was not committed)."""
    return f"{value:,.1f} ms" if math.isfinite(value) else "never"


def _previous(results: BenchResults, threads: int) -> PreviousDesignResult | None:
    return next((p for p in results.previous if p.threads == threads), None)


def cpu_per_event(us: float) -> str:
    """Microseconds of CPU per event for a table (``-`` when not measured)."""
    return f"{us:,.1f} us/event" if us > 0 else "-"


def _cpu(cores: float, busy: float) -> str:
    return f"processor CPU {cores:.2f} cores, machine {busy:.0%} busy"


def _latency_detail(latency: LatencyResult) -> str:
    return (
        f"{latency.offered_rate:,.0f} events/s offered (target {latency.target_rate:,.0f}) for "
        f"{latency.seconds:.1f} s; p90 {ms(latency.p90_ms)}, max {ms(latency.max_ms)}; "
        f"{latency.committed:,}/{latency.events:,} committed; checkpoint polled every "
        f"{latency.resolution_ms:.1f} ms; "
        f"{_cpu(latency.processor_cpu_cores, latency.machine_cpu_busy)}"
        + "".join(
            f"; p{w.partition}: {w.events:,} events in {w.commits:,} commits, p99 {ms(w.p99_ms)}"
            for w in latency.worst_partitions[:2]
        )
    )


def _raw_read_detail(replay: ReplayResult) -> str:
    detail = f"{replay.events:,} events; rstream {_rate(replay.raw_read_events_per_s)}"
    if replay.replay_raw_read_events_per_s > 0:
        wire_rate = _rate(replay.replay_raw_read_events_per_s)
        detail += f", processor.reading.client (live and replay reader) {wire_rate}"
    return detail + "; the faster one is the baseline"


def rows(results: BenchResults) -> list[Row]:
    """Every measurement of the run, one row each (a step not run says so)."""
    return [
        *_ingest_rows(results),
        *_latency_rows(results),
        *_previous_rows(results),
        *_replay_rows(results),
        _reads_row(results.reads),
    ]


def _reads_row(reads: ReadsResult | None) -> Row:
    title = "6. API: friendship point reads vs /healthz, same server"
    if reads is None:
        return Row(title, "not run", "")
    f, h = reads.friendship, reads.healthz
    return Row(
        title,
        f"{reads.friendship_per_s:,.0f} reads/s ({reads.ratio:.0%} of /healthz), "
        f"p99 {ms(reads.p99_ms)}",
        f"{reads.clients} keep-alive clients, {reads.seconds:g} s each, {reads.users:,} users "
        f"round robin; friendship p50 {ms(reads.p50_ms)}, max {ms(reads.max_ms)}, "
        f"{reads.errors} not 200 {_not_ok(f.statuses, f.failure_kinds)}; /healthz "
        f"{reads.healthz_per_s:,.0f}/s, p99 {ms(h.p99_ms)}, {reads.healthz_errors} not 200; "
        f"API CPU {reads.api_cpu_us_per_request:,.0f} us per read, "
        f"{reads.api_cpu_us_per_healthz:,.0f} per /healthz; load generator "
        f"{reads.client_cpu_us_per_request:,.0f} us per request",
    )


def _not_ok(statuses: dict[int, int], failures: dict[str, int]) -> str:
    parts = [f"{code}: {n}" for code, n in statuses.items()]
    parts += [f"{kind}: {n}" for kind, n in failures.items()]
    return f"({', '.join(parts)})" if parts else ""


def _ingest_rows(results: BenchResults) -> list[Row]:
    ingest = results.ingest
    return [
        Row(
            "1. ingest ceiling (exchange, confirms)",
            _rate(ingest.events_per_s) if ingest else "not run",
            f"{ingest.events:,} events in {ingest.seconds:.2f} s" if ingest else "",
        ),
        _drain_row("2. processor: backlog drain (data encrypted, the default)", results.drain),
        _drain_row("2. processor: backlog drain, plain data (same run)", results.drain_plain),
        _drain_row(
            "2. processor: backlog drain, two processes (PROCESSOR_PROCESSES=2, encrypted)",
            results.drain_two_processes,
        ),
    ]


def _drain_row(title: str, drain: DrainResult | None) -> Row:
    return Row(
        title,
        _rate(drain.events_per_s) if drain else "not run",
        (
            f"{drain.events:,} events, {drain.users:,} users, {drain.seconds:.2f} s from "
            f"process start ({_rate(drain.steady_events_per_s)} from the first commit); "
            f"{drain.mismatched_users} users differ from the sequential fold; "
            f"{_cpu(drain.processor_cpu_cores, drain.machine_cpu_busy)}; "
            f"{cpu_per_event(drain.cpu_us_per_event_with_startup)} with start-up"
        )
        if drain
        else "",
        cpu_per_event(drain.cpu_us_per_event) if drain else "",
    )


def _latency_rows(results: BenchResults) -> list[Row]:
    table: list[Row] = []
    for title, latency in (
        ("2. processor: publish-to-commit latency, half the ceiling", results.latency),
        ("2. processor: publish-to-commit latency, light load", results.light_latency),
    ):
        if latency is None and title.endswith("light load"):
            continue
        table.append(
            Row(
                title,
                f"p50 {ms(latency.p50_ms)}, p99 {ms(latency.p99_ms)}" if latency else "not run",
                _latency_detail(latency) if latency else "",
                cpu_per_event(latency.cpu_us_per_event) if latency else "",
            )
        )
    if results.latency_sweep is not None:
        table.append(_sweep_row(results.latency_sweep))
    return table


def share_text(share: float) -> str:
    """A share of the ingest ceiling (0..1) as a percentage with what it needs of its digits:
    ``0.025`` is ``2.5%``, ``0.005`` is ``0.5%``, ``0.1`` is ``10%``."""
    return f"{share * 100:.3g}%"


def _sweep_row(sweep: LatencySweepResult) -> Row:
    best = (
        f"{share_text(sweep.best_share)} of the ceiling ({_rate(sweep.best_rate or 0.0)})"
        if sweep.best_share is not None
        else f"none of {len(sweep.points)} rates"
    )
    points = "; ".join(
        f"{share_text(p.share)} ({p.offered_rate:,.0f}/s): p50 {ms(p.p50_ms)}, p99 {ms(p.p99_ms)}"
        for p in sweep.points
    )
    return Row(
        f"2. processor: highest offered rate with p99 <= {sweep.goal_ms:.0f} ms",
        best,
        f"{sweep.seconds_each:.0f} s per rate, {sweep.processes} process"
        f"{'es' if sweep.processes > 1 else ''}, up while p99 was met, down while it missed, "
        f"in the order run: {points}",
    )


def _previous_rows(results: BenchResults) -> list[Row]:
    table: list[Row] = []
    for threads in (1, 10):
        previous = _previous(results, threads)
        table.append(
            Row(
                f"3. previous design, {threads} thread{'s' if threads > 1 else ''}",
                _rate(previous.events_per_s) if previous else "not run",
                (
                    f"{previous.events:,} events, {previous.users:,} users, "
                    f"{previous.seconds:.2f} s; {previous.mismatched_users} users' final score "
                    "differs from the sequential fold"
                    + ("" if previous.completed else " (timed out before the end)")
                )
                if previous
                else "",
            )
        )
    return table


def _replay_rows(results: BenchResults) -> list[Row]:
    replay = results.replay
    table = [
        Row(
            "4. raw stream read",
            _rate(replay.best_raw_read_events_per_s) if replay else "not run",
            _raw_read_detail(replay) if replay else "",
        )
    ]
    if replay is None:
        table.append(Row("4. replay", "not run", ""))
    elif not replay.available:
        table.append(Row("4. replay", "not available", replay.reason))
    else:
        verdict = {True: "identical to live", False: "DIFFERS from live", None: "no verdict"}
        table.append(
            Row(
                "4. replay",
                _rate(replay.replay_events_per_s),
                f"{replay.events:,} events in {replay.replay_seconds:.2f} s "
                f"({replay.replay_method}); verify: {verdict[replay.replay_identical]}; "
                "CPU: the verify run in the benchmark's process (its raw read, the rebuild, the "
                "comparison)",
                cpu_per_event(replay.replay_cpu_us_per_event),
            )
        )
    return table


def targets(results: BenchResults) -> list[Target]:
    """Issue 16's goals, each computed from this run's figures (``n/a`` when a figure it needs
    was not measured: the CPU goal needs ``--baseline``). The drain's rate is the product's
    default on a machine of more than one core: two member processes (``PROCESSOR_PROCESSES``
    = ``auto``) when that drain ran, else the one-process drain."""
    drain, processes = _default_drain(results)
    raw = results.replay.best_raw_read_events_per_s if results.replay else None
    return [
        _cpu_target(results),
        _ratio_target(
            f"backlog drain ({processes}) vs raw stream read",
            drain.events_per_s if drain else None,
            raw,
            DRAIN_VS_RAW_TARGET,
            percent=True,
        ),
        _ratio_target(
            f"backlog drain ({processes}) vs ingest ceiling",
            drain.events_per_s if drain else None,
            results.ingest.events_per_s if results.ingest else None,
            DRAIN_TARGET,
        ),
        _ratio_target(
            "replay vs raw stream read",
            results.replay.replay_events_per_s
            if results.replay and results.replay.available
            else None,
            raw,
            REPLAY_TARGET,
            percent=True,
        ),
        _latency_target(results),
        _speedup_target(results),
        *_read_targets(results),
    ]


def _read_targets(results: BenchResults) -> list[Target]:
    """Friendship point reads against ``/healthz`` on the same server, and their p99, with
    ``reads.clients`` clients; a run with failed requests passes neither."""
    reads = results.reads
    ratio_name = "friendship reads vs /healthz, 50 clients, same server"
    p99_name = "p99 of a friendship read, 50 clients"
    ratio_goal, p99_goal = f">= {READS_VS_HEALTHZ_TARGET:.0%}", f"<= {READ_P99_TARGET_MS:.0f} ms"
    if reads is None:
        return [Target(ratio_name, "-", ratio_goal, None), Target(p99_name, "-", p99_goal, None)]
    clean = reads.errors == 0 and reads.healthz_errors == 0
    failed = "" if clean else f" ({reads.errors + reads.healthz_errors:,} failed requests)"
    return [
        Target(
            ratio_name,
            f"{reads.ratio:.0%} ({reads.friendship_per_s:,.0f} vs {reads.healthz_per_s:,.0f} "
            f"requests/s){failed}",
            ratio_goal,
            clean and reads.ratio >= READS_VS_HEALTHZ_TARGET,
        ),
        Target(
            p99_name,
            ms(reads.p99_ms) + failed,
            p99_goal,
            clean and math.isfinite(reads.p99_ms) and reads.p99_ms <= READ_P99_TARGET_MS,
        ),
    ]


def _default_drain(results: BenchResults) -> tuple[DrainResult | None, str]:
    """The drain run with the product's default process count, and how many processes."""
    if results.drain_two_processes is not None:
        return results.drain_two_processes, "2 processes"
    return results.drain, "1 process"


def _ratio_target(
    name: str,
    numerator: float | None,
    denominator: float | None,
    goal: float,
    *,
    percent: bool = False,
) -> Target:
    """``numerator / denominator >= goal``, shown as a percentage or a multiple."""
    if not numerator or not denominator:
        return Target(name, "-", _at_least(goal, percent=percent), None)
    ratio = numerator / denominator
    shown = f"{ratio:.0%}" if percent else f"{ratio:.2f}x"
    return Target(name, shown, _at_least(goal, percent=percent), ratio >= goal)


def _at_least(goal: float, *, percent: bool) -> str:
    return f">= {goal:.0%}" if percent else f">= {goal:g}x"


def _cpu_target(results: BenchResults) -> Target:
    """The drain's CPU per event against the ``--baseline`` commit's, in the same run."""
    name = "processor CPU per applied event, drain, vs the baseline commit"
    goal = f"<= {CPU_GOAL:.0%} of the baseline's"
    comparison = results.baseline or {}
    row = next(
        (f for f in comparison.get("figures", []) if f.get("figure") == DRAIN_CPU_FIGURE),
        None,
    )
    if row is None or row.get("ratio") is None:
        return Target(name, "- (run with --baseline COMMIT)", goal, None)
    ratio = float(row["ratio"])
    return Target(
        name,
        f"{row['current']:,.1f} vs {row['baseline']:,.1f} us/event at {comparison['commit']} "
        f"({ratio:.0%})",
        goal,
        ratio <= CPU_GOAL,
    )


def _latency_target(results: BenchResults) -> Target:
    name = "p99 publish-to-commit at half the ceiling"
    goal = f"<= {P99_TARGET_MS:.0f} ms"
    latency = results.latency
    if latency is None:
        return Target(name, "-", goal, None)
    passed = math.isfinite(latency.p99_ms) and latency.p99_ms <= P99_TARGET_MS
    measured = ms(latency.p99_ms)
    sweep = results.latency_sweep
    if not passed and sweep is not None:
        # The fallback: the highest offered rate that met the goal, as a share.
        if sweep.best_share is not None and sweep.best_rate is not None:
            measured += (
                f"; highest rate within {P99_TARGET_MS:.0f} ms: "
                f"{share_text(sweep.best_share)} of the ceiling ({_rate(sweep.best_rate)})"
            )
        else:
            lowest = min((p.share for p in sweep.points), default=None)
            below = f" (lowest tried: {share_text(lowest)})" if lowest is not None else ""
            measured += f"; no rate tried met {P99_TARGET_MS:.0f} ms{below}"
    return Target(name, measured, goal, passed)


def _speedup_target(results: BenchResults) -> Target:
    name = "processor vs previous design at 10 threads"
    goal = f">= {SPEEDUP_TARGET:.0f}x and 0 mismatched users"
    drain, previous = results.drain, _previous(results, 10)
    if not drain or not previous or previous.events_per_s <= 0:
        return Target(name, "-", goal, None)
    speedup = drain.events_per_s / previous.events_per_s
    return Target(
        name,
        f"{speedup:,.1f}x; processor {drain.mismatched_users} mismatched users "
        f"(previous design {previous.mismatched_users})",
        goal,
        speedup >= SPEEDUP_TARGET and drain.mismatched_users == 0,
    )


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def print_report(results: BenchResults, console: Console) -> None:
    """The measurements and targets as two tables."""
    measurements = Table(title="benchmark")
    measurements.add_column("step")
    measurements.add_column("figure", justify="right")
    measurements.add_column("CPU per event", justify="right")
    measurements.add_column("detail")
    for row in rows(results):
        measurements.add_row(row.step, row.figure, row.cpu, row.detail)
    console.print(measurements)
    goals = Table(title="targets")
    for column in ("target", "measured", "goal", "result"):
        goals.add_column(column)
    for target in targets(results):
        style = {True: "green", False: "red", None: "yellow"}[target.passed]
        goals.add_row(
            target.name, target.measured, target.goal, f"[{style}]{_verdict(target.passed)}"
        )
    console.print(goals)
    for step, error in results.failures.items():
        console.print(f"[red]step {step} failed: {error}")
    print_profiles(results, console)


#: Thread groups shown in the Markdown profile summary (the others are start-up and helpers).
PROFILED_THREADS: Final = ("worker-*", "stream-reader", "MainThread")


def _profile_title(profile: ProfileResult) -> str:
    if profile.mode == "live":
        title = f"live load, {profile.offered_rate:,.0f} events/s offered"
    else:
        title = f"backlog drain, {profile.events:,} events"
    if profile.sampling == "gil":
        return f"{title}; GIL holder only (held {profile.gil_held:.0%} of the time)"
    return f"{title}; every thread, waiting included"


def print_profiles(results: BenchResults, console: Console, top: int = 6) -> None:
    """Each recording's thread groups with their top frames by self time."""
    for profile in results.profiles:
        if not profile.available:
            console.print(f"profile ({profile.mode}): {profile.reason}")
            continue
        table = Table(title=f"py-spy: {_profile_title(profile)} ({profile.raw_path})")
        table.add_column("threads")
        table.add_column("samples", justify="right")
        table.add_column("self time (top frames)")
        table.add_column("product frames, inclusive")
        for thread in profile.threads:
            table.add_row(
                thread.thread,
                str(thread.samples),
                "\n".join(f"{f.percent:5.1f}% {f.frame}" for f in thread.self_time[:top]),
                "\n".join(f"{f.percent:5.1f}% {f.frame}" for f in thread.inclusive[:top]),
            )
        console.print(table)


def markdown_profiles(results: BenchResults, top: int = 5) -> str:
    """The profiles' main thread groups and their top self-time frames, as Markdown."""
    lines: list[str] = []
    for profile in results.profiles:
        if not profile.available:
            continue
        lines += [
            "",
            f"py-spy, {_profile_title(profile)}: share of each thread group's samples",
            "",
            "| threads | top frames by self time |",
            "| --- | --- |",
        ]
        for thread in profile.threads:
            if thread.thread in PROFILED_THREADS:
                frames = "; ".join(f"{f.percent:.0f}% `{f.frame}`" for f in thread.self_time[:top])
                lines.append(f"| {thread.thread} | {frames} |")
    return "\n".join(lines) + ("\n" if lines else "")


def markdown(results: BenchResults) -> str:
    """The measurements and targets as Markdown tables (the README section's body)."""
    lines = [
        "| step | figure | processor CPU per event | detail |",
        "| --- | ---: | ---: | --- |",
    ]
    lines += [f"| {r.step} | {r.figure} | {r.cpu} | {r.detail} |" for r in rows(results)]
    lines += ["", "| target | measured | goal | result |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {t.name} | {t.measured} | {t.goal} | {_verdict(t.passed)} |" for t in targets(results)
    ]
    lines += [f"\nStep {step} failed: {error}" for step, error in results.failures.items()]
    if results.baseline:
        lines += ["", baseline_markdown(results).rstrip()]
    return "\n".join(lines) + "\n" + markdown_profiles(results)


def baseline_markdown(results: BenchResults) -> str:
    """The comparison with the ``--baseline`` commit's run, same run, as Markdown (``""``
    without one)."""
    if not results.baseline:
        return ""
    return comparison_markdown(results.baseline, str(results.meta.get("commit", "")))


def _finite(value: object) -> object:
    """JSON has no infinity or NaN: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(results: BenchResults, path: Path) -> None:
    """Every figure, the targets and the run's metadata as JSON."""
    document = asdict(results)
    document["targets"] = [asdict(t) for t in targets(results)]
    if results.baseline is None:
        del document["baseline"]
    path.write_text(json.dumps(_finite(document), indent=2, default=str) + "\n")


def write_readme_section(readme: Path, body: str) -> bool:
    """Replace the README text between the bench markers with ``body``; False when the README
    has no markers (nothing is written then)."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        return False
    replacement = f"{README_START}\n{body.rstrip()}\n{README_END}"
    readme.write_text(pattern.sub(lambda _match: replacement, text, count=1))
    return True
