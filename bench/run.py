"""``python -m bench``: every step on one seeded workload, then the report.

Usage: ``python -m bench [--events N] [--quick] [--out bench-results/] [--readme README.md]
[--baseline COMMIT]``; ``--baseline`` runs the same benchmark on a worktree of that commit first
and prints both runs' figures side by side (``bench.baseline``).
Exit codes: 0 the run finished (targets missed are reported, not failures), 1 a step failed,
2 the services are down or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psycopg
from rich.console import Console
from rich.table import Table

from bench.baseline import as_json, compare, compared_rows, run_baseline
from bench.chart import write_chart
from bench.drain import measure_drain
from bench.harness import BenchError, require_services
from bench.ingest import measure_ingest
from bench.latency import best_within, measure_latency, next_sweep_share
from bench.previous_design import measure_previous_design
from bench.profile import profile_drain, profile_live
from bench.reads import measure_reads
from bench.replay_rate import measure_replay
from bench.report import (
    P99_TARGET_MS,
    baseline_markdown,
    markdown,
    print_report,
    write_json,
    write_readme_section,
)
from bench.results import BenchResults, LatencyResult, LatencySweepResult, SweepPoint
from bench.workload import make_workload
from processor.errors import ProcessorError
from processor.settings import Settings
from testkit.services import Services

log = logging.getLogger("bench")

STEPS: Final = ("ingest", "drain", "latency", "previous", "replay", "profile", "reads")
#: Errors after which a step is reported as failed and the run goes on with the next one.
STEP_ERRORS: Final = (BenchError, ProcessorError, psycopg.Error, OSError, TimeoutError)


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one run (events, seconds) and where its results go.

    Attributes:
        events: events of the processor's backlog drain (and of the ingest and replay steps).
        previous_events: the first events of the same workload for the previous design.
        users: users the events are spread over (skewed: a few get most events).
        seed: the workload's seed.
        latency_seconds: duration of the steady load of the latency step.
        latency_rate: offered load in events/s; None = half the measured ingest ceiling.
        light_load_fraction: a second latency run at this fraction of the ceiling shows the
            latency of a processor that keeps up (0 = no second run).
        profile_events: events of the profiled drain (0 = no drain profile).
        profile_live_seconds: seconds of the profiled steady load, offered at the light load's
            rate (0 = no live profile).
        previous_threads: thread counts of the previous design.
        drain_processes: member processes of the second encrypted drain
            (``PROCESSOR_PROCESSES``; 0 = no such drain).
        sweep_shares: shares of the ingest ceiling offered, rising, when p99 at half the
            ceiling misses ``P99_TARGET_MS`` (empty = no sweep).
        sweep_lower_shares: shares offered, falling, when even the lowest of
            ``sweep_shares`` misses (``bench.latency.next_sweep_share``), so a busy machine
            still reports the highest rate within the goal.
        sweep_seconds: duration of each sweep load.
        sweep_processes: ``PROCESSOR_PROCESSES`` of the sweep's processor.
        reads_events: events of the workload drained before the point reads (their users are
            the ones read).
        reads_clients: concurrent keep-alive clients of the point reads and ``/healthz``.
        reads_seconds: duration of each of the two measured read runs.
        steps: which steps run.
        out: the results folder (``bench.json``, ``bench.md``, ``bench.png``, logs).
    """

    events: int = 150_000
    previous_events: int = 3_000
    users: int = 10_000
    seed: int = 2024
    latency_seconds: float = 20.0
    latency_rate: float | None = None
    light_load_fraction: float = 0.1
    profile_events: int = 60_000
    profile_live_seconds: float = 10.0
    previous_threads: tuple[int, ...] = (1, 10)
    drain_processes: int = 2
    sweep_shares: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    sweep_lower_shares: tuple[float, ...] = (0.025, 0.01, 0.005)
    sweep_seconds: float = 8.0
    sweep_processes: int = 1
    reads_events: int = 30_000
    reads_clients: int = 50
    reads_seconds: float = 10.0
    steps: tuple[str, ...] = STEPS
    out: Path = Path("bench-results")

    @classmethod
    def quick(cls, out: Path = Path("bench-results")) -> BenchConfig:
        """About a minute: a smoke run of every step but the profile."""
        return cls(
            events=20_000,
            previous_events=600,
            users=2_000,
            latency_seconds=5.0,
            profile_events=0,
            profile_live_seconds=0.0,
            sweep_shares=(0.1,),
            sweep_lower_shares=(),
            sweep_seconds=3.0,
            reads_events=5_000,
            reads_seconds=3.0,
            out=out,
        )


@dataclass
class _Runner:
    """Runs the steps in order, keeping going when one fails."""

    config: BenchConfig
    services: Services
    console: Console
    results: BenchResults = field(default_factory=BenchResults)
    failed: list[str] = field(default_factory=list)

    def step(self, name: str, action: Callable[[], None]) -> None:
        if name not in self.config.steps:
            return
        started = time.monotonic()
        self.console.print(f"[bold]{name}[/bold] ...")
        try:
            action()
        except STEP_ERRORS as exc:
            self.failed.append(name)
            self.results.failures[name] = f"{type(exc).__name__}: {exc}"
            self.console.print(f"[red]{name} failed: {type(exc).__name__}: {exc}")
            log.debug("step %s failed", name, exc_info=True)
        self.console.print(f"  {name} took {time.monotonic() - started:.1f} s")


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip()


def _meta(config: BenchConfig) -> dict[str, object]:
    defaults = Settings()
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "processor": {
            "threads": defaults.threads,
            "batch_size": defaults.batch_size,
            "batch_wait_s": defaults.batch_wait_s,
            "partitions": defaults.partitions,
            "processes": "auto" if defaults.processes is None else defaults.processes,
        },
    }


class _Steps:
    """The benchmark's steps on one workload; each fills its part of ``runner.results``."""

    def __init__(self, config: BenchConfig, services: Services, runner: _Runner) -> None:
        self.config = config
        self.services = services
        self.results = runner.results
        self.logs = config.out / "logs"
        biggest = max(
            config.events, config.previous_events, config.profile_events, config.reads_events
        )
        self.workload = make_workload(biggest, config.users, config.seed)

    def _ceiling(self) -> float | None:
        return self.results.ingest.events_per_s if self.results.ingest else None

    def ingest(self) -> None:
        self.results.ingest = measure_ingest(self.services, self.workload.head(self.config.events))

    def drain(self) -> None:
        load = self.workload.head(self.config.events)
        self.results.drain = measure_drain(self.services, load, self.logs / "drain.log")
        self.results.drain_plain = measure_drain(
            self.services, load, self.logs / "drain-plain.log", encrypted=False
        )
        if self.config.drain_processes > 0:
            self.results.drain_two_processes = measure_drain(
                self.services,
                load,
                self.logs / "drain-processes.log",
                processes=self.config.drain_processes,
            )

    def latency(self) -> None:
        config, ceiling = self.config, self._ceiling()
        rate = config.latency_rate
        if rate is None:
            if ceiling is None:
                raise BenchError("no ingest ceiling to take half of; pass --latency-rate")
            rate = ceiling / 2
        self.results.latency = self._latency_at(rate, "latency.log")
        if ceiling is not None and config.light_load_fraction > 0:
            light = ceiling * config.light_load_fraction
            self.results.light_latency = self._latency_at(light, "latency-light.log")
        missed = not self.results.latency.p99_ms <= P99_TARGET_MS  # NaN and inf miss too
        if ceiling is not None and missed and config.sweep_shares:
            self.results.latency_sweep = self._sweep(ceiling)

    def _latency_at(
        self, rate: float, log_name: str, seconds: float | None = None, processes: int = 1
    ) -> LatencyResult:
        config = self.config
        count = max(1, int(rate * (seconds or config.latency_seconds)))
        load = make_workload(count, config.users, config.seed + 1)
        warmup = make_workload(min(2_000, count), config.users, config.seed + 2)
        return measure_latency(
            self.services, load, warmup, rate, self.logs / log_name, processes=processes
        )

    def _sweep(self, ceiling: float) -> LatencySweepResult:
        """Latency at shares of the ceiling, up ``sweep_shares`` while p99 is met, or down
        ``sweep_lower_shares`` while it misses (``bench.latency.next_sweep_share``)."""
        config = self.config
        points: list[SweepPoint] = []
        while (
            share := next_sweep_share(
                points, config.sweep_shares, config.sweep_lower_shares, P99_TARGET_MS
            )
        ) is not None:
            rate = ceiling * share
            run = self._latency_at(
                rate,
                f"latency-sweep-{share * 100:.3g}pct.log",
                config.sweep_seconds,
                config.sweep_processes,
            )
            points.append(
                SweepPoint(
                    rate=rate,
                    share=share,
                    offered_rate=run.offered_rate,
                    p50_ms=run.p50_ms,
                    p99_ms=run.p99_ms,
                    events=run.events,
                    committed=run.committed,
                    cpu_us_per_event=run.cpu_us_per_event,
                )
            )
        best = best_within(points, P99_TARGET_MS)
        return LatencySweepResult(
            ceiling=ceiling,
            goal_ms=P99_TARGET_MS,
            seconds_each=config.sweep_seconds,
            processes=config.sweep_processes,
            points=points,
            best_share=best.share if best else None,
            best_rate=best.rate if best else None,
        )

    def previous(self) -> None:
        load = self.workload.head(self.config.previous_events)
        for threads in self.config.previous_threads:
            self.results.previous.append(measure_previous_design(self.services, load, threads))

    def replay(self) -> None:
        load = self.workload.head(self.config.events)
        self.results.replay = measure_replay(self.services, load, self.logs)

    def profile(self) -> None:
        config, ceiling = self.config, self._ceiling()
        if config.profile_events > 0:
            drain_load = self.workload.head(config.profile_events)
            self.results.profiles.append(profile_drain(self.services, drain_load, self.logs))
        if config.profile_live_seconds > 0 and ceiling is not None:
            rate = ceiling * config.light_load_fraction
            count = max(1, int(rate * config.profile_live_seconds))
            load = make_workload(count, config.users, config.seed + 3)
            warmup = make_workload(min(2_000, count), config.users, config.seed + 2)
            live = profile_live(self.services, load, warmup, rate, self.logs)
            self.results.profiles.append(live)

    def reads(self) -> None:
        config = self.config
        self.results.reads = measure_reads(
            self.services,
            self.workload.head(config.reads_events),
            self.logs,
            clients=config.reads_clients,
            seconds=config.reads_seconds,
        )


def run_bench(
    config: BenchConfig,
    console: Console | None = None,
    services: Services | None = None,
    baseline: tuple[str, dict[str, Any]] | None = None,
) -> tuple[BenchResults, list[str]]:
    """Run the configured steps and write the report files into ``config.out``.

    Args:
        config: sizes, steps and the results folder.
        console: where progress goes (default: the terminal).
        services: the broker and database (default: this machine's, ``require_services``).
        baseline: the ``--baseline`` commit and its run's ``bench.json``, compared in the report.

    Returns:
        The results and the names of the steps that failed.

    Raises:
        BenchError: the broker or the database does not answer.
    """
    console = console or Console()
    services = services or require_services()
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    runner = _Runner(config, services, console)
    results = runner.results
    results.meta = _meta(config)
    steps = _Steps(config, services, runner)
    actions = (
        steps.ingest,
        steps.drain,
        steps.latency,
        steps.previous,
        steps.replay,
        steps.profile,
        steps.reads,
    )
    for name, action in zip(STEPS, actions, strict=True):
        runner.step(name, action)
    results.meta["seconds"] = round(time.monotonic() - started, 1)
    results.meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if baseline is not None:
        compare_with_baseline(results, baseline[1], baseline[0])
    write_report(results, config.out)
    return results, runner.failed


def write_report(results: BenchResults, out: Path) -> None:
    """``bench.json``, ``bench.md``, ``bench.png`` (and ``baseline.md``) in ``out``."""
    write_json(results, out / "bench.json")
    (out / "bench.md").write_text(markdown(results))
    if results.baseline:
        (out / "baseline.md").write_text(baseline_markdown(results))
    write_chart(results, out / "bench.png")


def publish_to_readme(results: BenchResults, out: Path, readme: Path) -> bool:
    """Copy the chart to ``docs/bench.png`` beside the README and put the tables between its
    bench markers; False when the README has no markers."""
    docs = readme.parent / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copyfile(out / "bench.png", docs / "bench.png")
    meta = results.meta
    load = meta.get("load_average_at_start")
    body = (
        f"Latest run: {meta.get('started_at')} (commit {meta.get('commit')}), "
        f"{meta.get('cpus')} cores, load average {load} at start, {meta.get('seconds')} s.\n\n"
        + markdown(results)
        + "\n![benchmark](docs/bench.png)\n"
    )
    return write_readme_section(readme, body)


def compare_with_baseline(results: BenchResults, baseline: dict[str, Any], commit: str) -> None:
    """Put this run's figures next to the baseline run's into ``results.baseline`` (the
    report's CPU target, ``bench.json``'s ``baseline`` key and the README section read it)."""
    current = json.loads(json.dumps(asdict(results), default=str))
    base_commit = str(baseline.get("meta", {}).get("commit", "")) or commit
    results.baseline = as_json(compare(current, baseline), base_commit)


def print_baseline(results: BenchResults, console: Console) -> None:
    """The comparison with the baseline run as a table (nothing without ``--baseline``)."""
    comparison = results.baseline
    if not comparison:
        return
    current_commit = str(results.meta.get("commit", ""))
    table = Table(title=f"this run ({current_commit}) vs baseline {comparison['commit']}")
    for column in ("figure", "baseline", "this run", "this / baseline", "note"):
        table.add_column(column, justify="left" if column in ("figure", "note") else "right")
    for row in compared_rows(comparison):
        ratio = row.ratio
        table.add_row(
            row.figure,
            f"{row.baseline:,.2f}" if row.baseline is not None else "-",
            f"{row.current:,.2f}" if row.current is not None else "-",
            f"{ratio:.2f}x ({row.better} is better)" if ratio is not None else "-",
            row.note,
        )
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--events", type=int, help="events of the drain, ingest and replay steps")
    parser.add_argument("--previous-events", type=int, help="events for the previous design")
    parser.add_argument("--users", type=int, help="users the events are spread over")
    parser.add_argument("--seed", type=int, help="workload seed")
    parser.add_argument("--latency-seconds", type=float, help="duration of the steady load")
    parser.add_argument("--latency-rate", type=float, help="events/s (default: half the ceiling)")
    parser.add_argument("--profile-events", type=int, help="events of the profiled drain (0: none)")
    parser.add_argument("--reads-seconds", type=float, help="duration of each point-read run")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--steps", help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    parser.add_argument("--readme", type=Path, help="README whose bench section is replaced")
    parser.add_argument(
        "--baseline",
        metavar="COMMIT",
        help="also run the benchmark on a worktree of COMMIT (first) and compare the figures",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The run's configuration: ``--quick`` or the defaults, then each explicit flag."""
    base = BenchConfig.quick(args.out) if args.quick else BenchConfig(out=args.out)
    steps = base.steps
    if args.steps:
        steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    return replace(
        base,
        events=base.events if args.events is None else args.events,
        previous_events=(
            base.previous_events if args.previous_events is None else args.previous_events
        ),
        users=base.users if args.users is None else args.users,
        seed=base.seed if args.seed is None else args.seed,
        latency_seconds=(
            base.latency_seconds if args.latency_seconds is None else args.latency_seconds
        ),
        latency_rate=base.latency_rate if args.latency_rate is None else args.latency_rate,
        profile_events=base.profile_events if args.profile_events is None else args.profile_events,
        reads_seconds=base.reads_seconds if args.reads_seconds is None else args.reads_seconds,
        steps=steps,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit codes."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # pika logs the topology's expected 404s (probing for extra partitions) as warnings.
    logging.getLogger("pika").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    baseline: dict[str, Any] | None = None
    try:
        config = config_from_args(args)
        if args.baseline:
            console.print(f"[bold]baseline[/bold]: the same benchmark on {args.baseline} first")
            raw_argv = list(sys.argv[1:] if argv is None else argv)
            baseline = run_baseline(args.baseline, raw_argv, config.out / "baseline")
        compared_to = (args.baseline, baseline) if baseline is not None else None
        results, failed = run_bench(config, console, baseline=compared_to)
    except ValueError as exc:
        parser.error(str(exc))
    except BenchError as exc:
        console.print(f"[red]{exc}")
        return 2
    print_report(results, console)
    print_baseline(results, console)
    if args.readme is not None and (args.quick or args.steps):
        console.print(f"a --quick or --steps run is partial: {args.readme} was left as it was")
    elif args.readme is not None:
        if publish_to_readme(results, config.out, args.readme):
            console.print(f"updated the benchmark section of {args.readme} and docs/bench.png")
        else:
            console.print(f"[yellow]{args.readme} has no {'<!-- bench:start -->'} marker")
    console.print(f"results in {config.out}/ (bench.json, bench.md, bench.png, logs/)")
    return 1 if failed else 0
