"""A new scoring rule deployed without downtime: ``sad`` costs 2 points instead of 1.

An old processor (the contract's rule, fold version 1) runs under load. A new one starts beside
it with fold versions 1 and 2 (``testkit.rule_change``): it serves version 1 while it builds 2
from the log, checks it and swaps it in. Meanwhile a reader takes snapshots of the live tables.
Afterwards:

- every snapshot is wholly one rule: its checkpoints carry one fold version, and every child's
  score is that rule's fold of the log up to the snapshot's checkpoints (never a mix);
- the version went from 1 to 2 once, and one build went live;
- the old processor stopped writing (it exits: it does not know version 2);
- every child equals version 2's fold of the whole log.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from processor.reading.log_record import LogRecord
from processor.reading.probes import read_tail_offsets
from processor.reading.ranges import LogRange, read_log_ranges_into_memory
from processor.settings import Settings
from projections.database import connect
from testkit import rule_change
from testkit.reference import CHILD_TURN_DELTA, reference_fold
from testkit.services import settings_env
from tests.integration.support import (
    assert_projections_equal,
    drain,
    outgoing,
    processor_process,
    publish,
    stored_projections,
    synthetic_events,
)

DELTAS = {1: CHILD_TURN_DELTA, 2: {**CHILD_TURN_DELTA, "sad": -2}}
#: Generous bounds on waiting for what the test expects (never asserted as durations).
SWITCH_TIMEOUT_S = 240.0


def _snapshot(conn: psycopg.Connection) -> tuple[dict[int, tuple[int, int]], dict[str, int]]:
    """One view of live, in one statement (one snapshot, and the table names resolved once: a
    swap between two statements would show the old checkpoints beside the new tables):
    ``{partition: (checkpoint, fold version)}``, ``{user: score}``."""
    rows = conn.execute(
        "SELECT 'c', partition::text, committed_offset, fold_version FROM checkpoints "
        "UNION ALL SELECT 'f', user_id, score, 0 FROM friendships"
    ).fetchall()
    checkpoints = {int(key): (int(a), int(b)) for kind, key, a, b in rows if kind == "c"}
    scores = {str(key): int(a) for kind, key, a, _ in rows if kind == "f"}
    return checkpoints, scores


def _expected_scores(
    log: dict[int, list[LogRecord]], checkpoints: dict[int, tuple[int, int]], version: int
) -> dict[str, int]:
    bodies = [
        record.body
        for partition, records in sorted(log.items())
        for record in records
        if record.offset <= checkpoints.get(partition, (-1, 0))[0]
    ]
    return {u: p["score"] for u, p in reference_fold(bodies, DELTAS[version]).items()}


def _read_log(settings: Settings) -> dict[int, list[LogRecord]]:
    tails = asyncio.run(read_tail_offsets(settings))
    ranges = [LogRange(p, 0, tail) for p, tail in sorted(tails.items()) if tail >= 0]
    return read_log_ranges_into_memory(settings, ranges)


def test_a_new_rule_is_built_beside_the_old_and_switched_in_once_under_load(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.with_overrides(lease_interval_s=0.2, member_timeout_s=5.0)
    bodies = synthetic_events(6_000, users=300, seed=14)
    backlog, load = bodies[:3_000], bodies[3_000:]
    assert reference_fold(bodies, DELTAS[1]) != reference_fold(bodies, DELTAS[2])
    publish(settings, outgoing(backlog))

    snapshots: list[tuple[dict[int, tuple[int, int]], dict[str, int]]] = []
    stop_reading = threading.Event()
    publishing_done = threading.Event()
    failures: list[BaseException] = []

    def read_snapshots() -> None:
        try:
            with connect(settings.database_url) as conn:
                while not stop_reading.is_set():
                    snapshots.append(_snapshot(conn))
                    time.sleep(0.1)
        except BaseException as exc:
            failures.append(exc)

    def publish_load() -> None:
        try:
            for start in range(0, len(load), 100):
                publish(settings, outgoing(load[start : start + 100]))
                time.sleep(0.05)
        except BaseException as exc:
            failures.append(exc)
        finally:
            publishing_done.set()

    new_env = settings_env(settings.with_overrides(fold_rules=rule_change.SETTING))
    with processor_process(settings, tmp_path / "old.log") as old:
        drain(settings)
        reader = threading.Thread(target=read_snapshots)
        publisher = threading.Thread(target=publish_load)
        reader.start()
        publisher.start()
        with (tmp_path / "new.log").open("ab") as new_log:
            new = subprocess.Popen(
                [sys.executable, "-m", "processor", "run"],
                env=new_env,
                stdout=new_log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + SWITCH_TIMEOUT_S
            while time.monotonic() < deadline and not _all_at(settings, 2):
                assert new.poll() is None, (tmp_path / "new.log").read_text()[-3000:]
                time.sleep(0.2)
            assert _all_at(settings, 2), (tmp_path / "new.log").read_text()[-3000:]
            old_exit = old.wait(timeout=120)
            publishing_done.wait(timeout=120)
            publisher.join()
            drain(settings)
            stop_reading.set()
            reader.join()
        finally:
            stop_reading.set()
            new.terminate()
            new.wait(timeout=60)
    assert not failures, failures

    old_text = (tmp_path / "old.log").read_text()
    assert old_exit == 2, old_text[-3000:]
    assert "fold version 2" in old_text and "stops writing" in old_text

    log = _read_log(settings)
    versions_seen = []
    for checkpoints, scores in snapshots:
        versions = {version for _, version in checkpoints.values()}
        assert len(versions) == 1, f"a snapshot with two fold versions: {versions}"
        (version,) = versions
        versions_seen.append(version)
        assert scores == _expected_scores(log, checkpoints, version), (
            f"a snapshot at fold version {version} is not that rule's fold of its log"
        )
    assert 1 in versions_seen and 2 in versions_seen, versions_seen
    switches = sum(1 for a, b in itertools.pairwise(versions_seen) if a != b)
    assert switches == 1 and versions_seen == sorted(versions_seen)

    with connect(settings.database_url) as conn:
        builds = conn.execute(
            "SELECT fold_version, state, message FROM projection_builds ORDER BY id"
        ).fetchall()
    assert [(v, state) for v, state, _ in builds] == [(2, "live")], builds
    assert "live writes paused" in builds[0][2]

    in_log_order = [r.body for _, records in sorted(log.items()) for r in records]
    assert len(in_log_order) == len(bodies)
    assert_projections_equal(stored_projections(settings), reference_fold(in_log_order, DELTAS[2]))


def _all_at(settings: Settings, version: int) -> bool:
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT DISTINCT fold_version FROM checkpoints").fetchall()
    return [tuple(r) for r in rows] == [(version,)]
