"""``python -m bench --baseline <commit>``: the same benchmark on a worktree of another commit, in
the same run, and the ratios of the figures side by side.

The baseline runs first, in a detached ``git worktree`` of the commit (removed afterwards), as
``python -m bench`` with this interpreter and the same sizes; its packages come from the
worktree (``PYTHONPATH`` first), its results go to ``<out>/baseline/``. A commit older than a
figure has no such key: the comparison derives what it can from the keys that commit wrote
(CPU per event from ``processor_cpu_cores`` and the seconds) and says so, or shows ``-``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.harness import BenchError

#: Issue 16's goal for the drain's CPU per event: at most this share of the baseline's.
CPU_GOAL: Final = 0.5
#: The comparison's row of the drain's CPU per event (the report's CPU target reads it).
DRAIN_CPU_FIGURE: Final = "drain, processor CPU per event (us)"
#: Flags of ``python -m bench`` that are not passed on to the baseline run.
_OWN_FLAGS: Final = ("--baseline", "--readme", "--out")


@dataclass(frozen=True)
class Compared:
    """One figure in both runs: ``ratio`` is this run's over the baseline's (None when either
    is missing); ``better`` says which way is better (``"higher"`` or ``"lower"``)."""

    figure: str
    baseline: float | None
    current: float | None
    better: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """This run's figure over the baseline's."""
        if self.baseline is None or self.current is None or self.baseline == 0:
            return None
        return self.current / self.baseline


@contextmanager
def worktree(commit: str, repository: Path) -> Iterator[Path]:
    """A detached worktree of ``commit`` in a temporary folder, removed on exit.

    Raises:
        BenchError: git does not know the commit (or is missing).
    """
    folder = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    target = folder / "tree"
    try:
        done = subprocess.run(
            ["git", "-C", str(repository), "worktree", "add", "--detach", str(target), commit],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise BenchError(f"git is needed for --baseline: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"no worktree of {commit!r}: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(
            ["git", "-C", str(repository), "worktree", "remove", "--force", str(target)],
            capture_output=True,
            check=False,
        )
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def passed_on(argv: Sequence[str]) -> list[str]:
    """``argv`` without the flags (and their values) that only this run takes."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _OWN_FLAGS:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def run_baseline(commit: str, argv: Sequence[str], out: Path) -> dict[str, Any]:
    """Run ``python -m bench`` on a worktree of ``commit``; its ``bench.json`` as a dict.

    Args:
        commit: anything ``git worktree add`` takes (a hash, a branch, a tag).
        argv: this run's arguments (sizes and steps are passed on; see ``passed_on``).
        out: the baseline's results folder.

    Raises:
        BenchError: no worktree of the commit, or its run wrote no results.
    """
    repository = Path(__file__).resolve().parent.parent
    out = out.resolve()
    with worktree(commit, repository) as tree:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(tree), env.get("PYTHONPATH", "")) if part
        )
        command = [sys.executable, "-m", "bench", "--out", str(out), *passed_on(argv)]
        # Exit code 1 (a step failed) still leaves results to compare.
        subprocess.run(command, cwd=tree, env=env, check=False)
    path = out / "bench.json"
    if not path.exists():
        raise BenchError(f"the baseline run of {commit} wrote no {path}")
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _get(document: Mapping[str, Any], *path: str) -> float | None:
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping) or value.get(key) is None:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def _drain_cpu_with_startup(document: Mapping[str, Any]) -> float | None:
    """The drain's CPU per event with start-up, or its estimate from the older keys."""
    figure = _get(document, "drain", "cpu_us_per_event_with_startup")
    if figure:
        return figure
    cores = _get(document, "drain", "processor_cpu_cores")
    seconds, events = _get(document, "drain", "seconds"), _get(document, "drain", "events")
    if cores and seconds and events:
        return cores * seconds / events * 1e6
    return None


def _drain_cpu(
    current: Mapping[str, Any], baseline: Mapping[str, Any]
) -> tuple[float | None, float | None, str]:
    """The drain's CPU per event in both runs, measured alike: from the first commit when both
    have it, else start-up included in both (an older baseline has only its cores and seconds).
    """
    steady = _get(baseline, "drain", "cpu_us_per_event"), _get(current, "drain", "cpu_us_per_event")
    if steady[0] and steady[1]:
        return steady[0], steady[1], ""
    return (
        _drain_cpu_with_startup(baseline),
        _drain_cpu_with_startup(current),
        "both with start-up (the baseline has no figure from the first commit)",
    )


def _latency_cpu(document: Mapping[str, Any], key: str) -> float | None:
    figure = _get(document, key, "cpu_us_per_event")
    if figure:
        return figure
    cores, seconds = _get(document, key, "processor_cpu_cores"), _get(document, key, "seconds")
    drained = _get(document, key, "drained_after_s") or 0.0
    committed = _get(document, key, "committed")
    if cores and seconds and committed:
        return cores * (seconds + drained) / committed * 1e6
    return None


def _previous_rate(document: Mapping[str, Any], threads: int) -> float | None:
    for previous in document.get("previous") or []:
        if isinstance(previous, Mapping) and previous.get("threads") == threads:
            return _get(previous, "events_per_s")
    return None


def _ratio(
    document: Mapping[str, Any], top: Callable[[Mapping[str, Any]], float | None], bottom: str
) -> float | None:
    numerator = top(document)
    path = bottom.split(".")
    denominator = _get(document, *path)
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def compare(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[Compared]:
    """The figures of both runs side by side (``bench.json`` documents)."""
    baseline_cpu, current_cpu, note = _drain_cpu(current, baseline)

    def drain(document: Mapping[str, Any]) -> float | None:
        return _get(document, "drain", "events_per_s")

    def replay(document: Mapping[str, Any]) -> float | None:
        return _get(document, "replay", "replay_events_per_s")

    def best_raw(document: Mapping[str, Any]) -> float | None:
        raws = [
            _get(document, "replay", "raw_read_events_per_s"),
            _get(document, "replay", "replay_raw_read_events_per_s"),
        ]
        present = [r for r in raws if r]
        return max(present) if present else None

    def rows(document: Mapping[str, Any]) -> dict[str, float | None]:
        raw = best_raw(document)
        drain_rate, replay_rate, previous = (
            drain(document),
            replay(document),
            _previous_rate(document, 10),
        )
        return {
            "drain / raw read": drain_rate / raw if drain_rate and raw else None,
            "replay / raw read": replay_rate / raw if replay_rate and raw else None,
            "drain / previous design (10 threads)": (
                drain_rate / previous if drain_rate and previous else None
            ),
            "drain / ingest ceiling": _ratio(document, drain, "ingest.events_per_s"),
        }

    base_rows, current_rows = rows(baseline), rows(current)
    found = [
        Compared(
            DRAIN_CPU_FIGURE,
            baseline_cpu,
            current_cpu,
            "lower",
            "; ".join(n for n in (note, f"issue 16's goal: <= {CPU_GOAL:.2f}x") if n),
        ),
        Compared(
            "light load, processor CPU per event (us)",
            _latency_cpu(baseline, "light_latency"),
            _latency_cpu(current, "light_latency"),
            "lower",
        ),
        Compared(
            "replay verify, CPU per event (us)",
            _get(baseline, "replay", "replay_cpu_us_per_event"),
            _get(current, "replay", "replay_cpu_us_per_event"),
            "lower",
        ),
        Compared(
            "ingest ceiling (events/s)",
            _get(baseline, "ingest", "events_per_s"),
            _get(current, "ingest", "events_per_s"),
            "higher",
        ),
        Compared("drain (events/s)", drain(baseline), drain(current), "higher"),
        Compared(
            "drain, two processes (events/s)",
            _get(baseline, "drain_two_processes", "events_per_s"),
            _get(current, "drain_two_processes", "events_per_s"),
            "higher",
        ),
        Compared("replay (events/s)", replay(baseline), replay(current), "higher"),
        Compared("raw stream read (events/s)", best_raw(baseline), best_raw(current), "higher"),
        Compared(
            "p99 publish-to-commit, half the ceiling (ms)",
            _get(baseline, "latency", "p99_ms"),
            _get(current, "latency", "p99_ms"),
            "lower",
        ),
        Compared(
            "p99 publish-to-commit, light load (ms)",
            _get(baseline, "light_latency", "p99_ms"),
            _get(current, "light_latency", "p99_ms"),
            "lower",
        ),
    ]
    found += [Compared(name, base_rows[name], current_rows[name], "higher") for name in base_rows]
    return found


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}"


def compared_rows(comparison: Mapping[str, Any]) -> list[Compared]:
    """``as_json``'s figures back as ``Compared`` rows."""
    return [
        Compared(str(f["figure"]), f.get("baseline"), f.get("current"), str(f["better"]), f["note"])
        for f in comparison.get("figures", [])
    ]


def markdown(comparison: Mapping[str, Any], current_commit: str) -> str:
    """The comparison (``as_json``'s shape) as a Markdown table (``baseline.md``, README)."""
    lines = [
        f"| figure | baseline {comparison['commit']} | this run {current_commit} "
        "| this / baseline | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in compared_rows(comparison):
        ratio = row.ratio
        shown = f"{ratio:.2f}x ({row.better} is better)" if ratio is not None else "-"
        lines.append(
            f"| {row.figure} | {_figure(row.baseline)} | {_figure(row.current)} | {shown} "
            f"| {row.note} |"
        )
    return "\n".join(lines) + "\n"


def as_json(compared: Sequence[Compared], commit: str) -> dict[str, Any]:
    """The comparison for ``bench.json``'s ``baseline`` key."""
    return {
        "commit": commit,
        "figures": [
            {
                "figure": row.figure,
                "baseline": row.baseline,
                "current": row.current,
                "ratio": row.ratio,
                "better": row.better,
                "note": row.note,
            }
            for row in compared
        ],
    }
