"""The benchmark harness at tiny sizes: every step runs against the real services and every row
of the report is there. Timings are never asserted (the machine is shared)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.report import rows, targets
from bench.run import BenchConfig, run_bench
from testkit.services import Services

pytestmark = pytest.mark.integration


def test_every_step_runs_and_is_reported_at_tiny_sizes(services: Services, tmp_path: Path) -> None:
    config = BenchConfig(
        events=300,
        previous_events=300,
        users=40,
        seed=11,
        latency_seconds=1.0,
        latency_rate=300.0,
        light_load_fraction=0.0,
        profile_events=0,
        profile_live_seconds=0.0,
        sweep_shares=(0.5,),
        sweep_lower_shares=(0.25,),
        sweep_seconds=1.0,
        reads_events=300,
        reads_seconds=1.0,
        out=tmp_path,
    )
    output = io.StringIO()
    results, failed = run_bench(config, Console(file=output, width=200), services)

    assert failed == [], output.getvalue()
    assert results.ingest is not None and results.ingest.events > 0
    assert results.drain is not None
    assert results.drain.events == 300
    assert results.drain.mismatched_users == 0
    assert results.drain_plain is not None and results.drain_plain.mismatched_users == 0
    two = results.drain_two_processes
    assert two is not None and two.processes == 2 and two.mismatched_users == 0
    assert results.latency is not None
    assert results.latency.committed == results.latency.events
    assert [p.threads for p in results.previous] == [1, 10]
    for previous in results.previous:
        assert previous.completed
        assert isinstance(previous.mismatched_users, int)
        assert previous.mismatched_users >= 0
    # One thread applies the queue in order: it agrees with the sequential fold.
    assert results.previous[0].mismatched_users == 0
    assert results.replay is not None
    assert results.replay.events == 300
    assert results.replay.available or results.replay.reason
    # Point reads: every user read answered 200 (errors are counted, never dropped).
    assert results.reads is not None
    assert results.reads.users > 0
    assert results.reads.friendship.ok > 0 and results.reads.healthz.ok > 0
    assert results.reads.errors == 0, results.reads.friendship
    assert results.reads.healthz_errors == 0, results.reads.healthz

    # The sweep runs only when p99 at the offered rate missed 100 ms (on a busy machine it may).
    sweep = results.latency_sweep
    assert (sweep is not None) == (not results.latency.p99_ms <= 100.0)
    if sweep is not None:
        # Up from 0.5 while met (nothing above it), down to 0.25 when 0.5 missed.
        expected = [0.5] if sweep.points[0].p99_ms <= 100.0 else [0.5, 0.25]
        assert [p.share for p in sweep.points] == expected
    reported = rows(results)
    assert [row.step for row in reported] == [
        "1. ingest ceiling (exchange, confirms)",
        "2. processor: backlog drain (data encrypted, the default)",
        "2. processor: backlog drain, plain data (same run)",
        "2. processor: backlog drain, two processes (PROCESSOR_PROCESSES=2, encrypted)",
        "2. processor: publish-to-commit latency, half the ceiling",
        *(["2. processor: highest offered rate with p99 <= 100 ms"] if sweep else []),
        "3. previous design, 1 thread",
        "3. previous design, 10 threads",
        "4. raw stream read",
        "4. replay",
        "6. API: friendship point reads vs /healthz, same server",
    ]
    assert all(row.figure != "not run" for row in reported)
    assert len(targets(results)) == 8

    document = json.loads((tmp_path / "bench.json").read_text())
    assert {
        "meta",
        "ingest",
        "drain",
        "drain_plain",
        "drain_two_processes",
        "latency",
        "previous",
        "replay",
        "reads",
        "targets",
    } <= set(document)
    assert {"friendship_per_s", "healthz_per_s", "ratio", "p99_ms", "errors"} <= set(
        document["reads"]
    )
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "| target |" in (tmp_path / "bench.md").read_text()
