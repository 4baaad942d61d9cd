"""The benchmark's chart: throughput of every step (log scale) and the latency percentiles,
as a PNG drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

from bench.report import P99_TARGET_MS, ms
from bench.results import BenchResults

#: Milliseconds in a second (labels switch from ms to s there).
MS_PER_S: Final = 1000


def _short(milliseconds: float) -> str:
    """A bar label: ``85 ms`` or ``4.8 s``."""
    if not math.isfinite(milliseconds):
        return ms(milliseconds)
    if milliseconds < MS_PER_S:
        return f"{milliseconds:.0f} ms"
    return f"{milliseconds / 1000:.1f} s"


def write_chart(results: BenchResults, path: Path) -> None:
    """Throughput of every step (log scale) and the latency percentiles, as a PNG."""
    import matplotlib  # noqa: PLC0415 - the Agg backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    bars: list[tuple[str, float, str]] = []
    if results.ingest:
        bars.append(("ingest\nceiling", results.ingest.events_per_s, "#7f7f7f"))
    if results.drain:
        bars.append(("processor\ndrain", results.drain.events_per_s, "#2ca02c"))
    for previous in results.previous:
        bars.append((f"previous\n{previous.threads} thr.", previous.events_per_s, "#d62728"))
    if results.replay:
        bars.append(("raw stream\nread", results.replay.best_raw_read_events_per_s, "#7f7f7f"))
        if results.replay.available:
            bars.append(("replay", results.replay.replay_events_per_s, "#1f77b4"))

    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2.2, 1.3]}
    )
    names = [b[0] for b in bars]
    values = [max(b[1], 1e-9) for b in bars]
    left.bar(names, values, color=[b[2] for b in bars])
    left.set_yscale("log")
    left.set_ylabel("events/s (log scale)")
    left.set_title("throughput")
    for index, value in enumerate(values):
        left.annotate(f"{value:,.0f}", (index, value), ha="center", va="bottom", fontsize=8)
    left.tick_params(axis="x", labelsize=8)

    runs = [
        (f"{run.offered_rate:,.0f}/s", run, color)
        for run, color in ((results.latency, "#2ca02c"), (results.light_latency, "#98df8a"))
        if run is not None
    ]
    labels = ["p50", "p90", "p99"]
    width = 0.8 / max(1, len(runs))
    for number, (name, run, color) in enumerate(runs):
        figures = [run.p50_ms, run.p90_ms, run.p99_ms]
        shown = [v if math.isfinite(v) else 0.0 for v in figures]
        places = [i + (number - (len(runs) - 1) / 2) * width for i in range(len(labels))]
        right.bar(places, shown, width=width, color=color, label=f"offered {name}")
        for place, value, height in zip(places, figures, shown, strict=True):
            right.annotate(_short(value), (place, height), ha="center", va="bottom", fontsize=7)
    if runs:
        right.axhline(P99_TARGET_MS, color="#d62728", linestyle="--", label="p99 target")
        right.set_yscale("log")
        low, high = right.get_ylim()
        right.set_ylim(low, high * 3)  # room for the labels above the bars
        right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    right.set_xticks(range(len(labels)), labels)
    right.set_title("publish-to-commit latency" if runs else "latency: not run")
    right.set_ylabel("ms (log scale)")
    created = results.meta.get("started_at", "")
    figure.suptitle(f"friendship-stream benchmark {created}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
