"""``python -m bench.rule_change``: how long a rule change takes, and how long readers wait.

A fresh deployment gets a log (the demo's conversations, encrypted as the demo does, or
``--events`` synthetic events), a processor with the contract's rule (fold version 1) drains
it, then a second processor starts with fold versions 1 and 2 (``testkit.rule_change``: ``sad``
costs 2). It builds version 2 beside the live tables, checks it against the pure fold and
swaps it in (``processor.versions``). Meanwhile a reader reads one child's friendship as fast
as it can and keeps the slowest answer. Printed (and written to
``bench-results/rule-change.json``):

- the switch: seconds from the new processor's start until every checkpoint is at version 2;
- the build: seconds from its start to its end as ``projection_builds`` records them;
- the pause of live writes the swap reported, and the slowest read during the whole switch.

Nothing here is a test: the figures vary with the machine (2 shared cores here).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness import (
    deployment,
    publish_timed,
    read_tails,
    require_services,
    wait_until_committed,
)
from bench.workload import make_workload
from demo.data import DEFAULT_DATA_DIR, iter_demo_events
from processor.privacy.data_keys import seal_events
from processor.privacy.keys import load_keys
from processor.publishing.publisher import OutgoingEvent
from processor.settings import Settings
from projections.database import connect
from testkit import rule_change
from testkit.processes import processor_process

#: Longest wait for the switch, in seconds.
SWITCH_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class RuleChangeResult:
    """One rule change: the log, and its seconds (see the module doc)."""

    log: str
    events: int
    switch_s: float
    build_s: float
    paused_note: str
    slowest_read_ms: float
    reads: int


def _events(settings: Settings, count: int | None) -> tuple[str, list[OutgoingEvent]]:
    """The log to change the rule on, encrypted as the product's producers send it."""
    if count is None:
        label = "demo data"
        plain = [
            OutgoingEvent(e.event_id, e.user_id, e.body) for e in iter_demo_events(DEFAULT_DATA_DIR)
        ]
    else:
        label = f"{count:,} synthetic events"
        plain = make_workload(count, users=max(1, count // 20), seed=16).events
    with connect(settings.database_url) as conn:
        sealed = seal_events(conn, [e.body for e in plain], load_keys(settings))
    events = [OutgoingEvent(e.event_id, e.user_id, b) for e, b in zip(plain, sealed, strict=True)]
    return f"{label} (encrypted)", events


def _all_at(settings: Settings, version: int) -> bool:
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT DISTINCT fold_version FROM checkpoints").fetchall()
    return [tuple(r) for r in rows] == [(version,)]


def _build_reported(settings: Settings) -> bool:
    """The build recorded the pause after its swap (a moment after it committed)."""
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT 1 FROM projection_builds WHERE state = 'live' AND message LIKE '%paused%'"
        ).fetchone()
    return row is not None


def measure(count: int | None, log_dir: Path) -> RuleChangeResult:
    """One rule change on a fresh deployment (see the module doc)."""
    services = require_services()
    with deployment(services) as settings:
        label, events = _events(settings, count)
        publish_timed(settings, events)
        tails = read_tails(settings)
        user = events[0].user_id
        with processor_process(settings, log_dir / "rule-change-old.log"):
            wait_until_committed(settings, tails, timeout_s=SWITCH_TIMEOUT_S)
        slowest, reads, stop = [0.0], [0], threading.Event()

        def read() -> None:
            with connect(settings.database_url) as conn:
                while not stop.is_set():
                    started = time.perf_counter()
                    conn.execute("SELECT score FROM friendships WHERE user_id = %s", (user,))
                    slowest[0] = max(slowest[0], time.perf_counter() - started)
                    reads[0] += 1

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        new = settings.with_overrides(fold_rules=rule_change.SETTING)
        started = time.monotonic()
        with processor_process(new, log_dir / "rule-change-new.log"):
            while not _all_at(settings, 2):
                if time.monotonic() - started > SWITCH_TIMEOUT_S:
                    raise RuntimeError("the rule change did not finish in time")
                time.sleep(0.1)
            switch_s = time.monotonic() - started
            while not _build_reported(settings) and time.monotonic() - started < SWITCH_TIMEOUT_S:
                time.sleep(0.1)
        stop.set()
        reader.join()
        with connect(settings.database_url) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM finished_at - started_at), message "
                "FROM projection_builds WHERE state = 'live' ORDER BY id DESC LIMIT 1"
            ).fetchone()
    assert row is not None
    return RuleChangeResult(
        log=label,
        events=len(events),
        switch_s=switch_s,
        build_s=float(row[0]),
        paused_note=str(row[1]),
        slowest_read_ms=slowest[0] * 1000,
        reads=reads[0],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure one rule change on the demo data and/or a synthetic log; print and save."""
    parser = argparse.ArgumentParser(prog="python -m bench.rule_change", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="synthetic events (0: none)")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo data")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = ([] if args.no_demo else [measure(None, args.out)]) + (
        [measure(args.events, args.out)] if args.events else []
    )
    table = Table(title="a rule change (fold version 1 -> 2, sad costs 2)")
    for column in (
        "log",
        "events",
        "switch (s)",
        "build (s)",
        "swap",
        "slowest read (ms)",
        "reads",
    ):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.log,
            f"{r.events:,}",
            f"{r.switch_s:.1f}",
            f"{r.build_s:.1f}",
            r.paused_note,
            f"{r.slowest_read_ms:.1f}",
            f"{r.reads:,}",
        )
    Console(width=max(Console().width, 140)).print(table)
    (args.out / "rule-change.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
