"""``processor run`` with ``PROCESSOR_PROCESSES=2``: one supervisor, two ordinary members."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

from processor.settings import Settings
from testkit.reference import reference_fold
from tests.integration.ownership.test_scale_out import (
    assert_no_partition_had_two_owners_commit,
    owners,
    wait_until,
)
from tests.integration.support import (
    assert_projections_equal,
    count,
    drain,
    outgoing,
    processor_process,
    publish,
    stored_projections,
    synthetic_events,
)


def member_pids(settings: Settings) -> set[int]:
    """The pids of the members holding leases now (member id ``host:pid``)."""
    host = socket.gethostname()
    return {int(m.rpartition(":")[2]) for m in owners(settings).values() if m.startswith(host)}


def gone(pid: int) -> bool:
    """No such process, or a zombie (an orphan's zombie waits for whoever reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_two_member_processes_apply_every_event_once_and_stop_cleanly_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(20_000, users=1_000, seed=64)
    publish(settings, outgoing(bodies))
    two = settings.with_overrides(processes=2, batch_size=250, threads=2)
    with processor_process(two, tmp_path / "run.log") as supervisor:
        wait_until(lambda: len(member_pids(settings)) == 2, "two members own leases")
        members = member_pids(settings)
        assert supervisor.pid not in members  # the members are its children, not itself
        drain(settings, timeout_s=180)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
    assert all(gone(pid) for pid in members)
    assert owners(settings) == {}
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))
    assert count(settings, "SELECT count(*) FROM applied_events") == 20_000
    assert count(settings, "SELECT sum(events_applied) FROM friendships") == 20_000
    assert_no_partition_had_two_owners_commit(settings)
    log = (tmp_path / "run.log").read_text()
    assert "started 2 member processes" in log


def test_a_member_that_dies_ends_the_run_non_zero_after_stopping_the_other(
    settings: Settings, tmp_path: Path
) -> None:
    two = settings.with_overrides(processes=2)
    with processor_process(two, tmp_path / "run.log") as supervisor:
        wait_until(lambda: len(member_pids(settings)) == 2, "two members own leases")
        victim, other = sorted(member_pids(settings))
        os.kill(victim, signal.SIGKILL)
        assert supervisor.wait(timeout=60) == 1
    assert gone(other)
    wait_until(lambda: owners(settings) == {}, "no member holds a lease")
    assert "exited with -9; stopping the others" in (tmp_path / "run.log").read_text()


def test_the_members_stop_when_the_supervisor_is_killed(settings: Settings, tmp_path: Path) -> None:
    two = settings.with_overrides(processes=2)
    with processor_process(two, tmp_path / "run.log") as supervisor:
        wait_until(lambda: len(member_pids(settings)) == 2, "two members own leases")
        members = member_pids(settings)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
    wait_until(lambda: all(gone(pid) for pid in members), "the members exit")
    assert owners(settings) == {}


def test_ctrl_c_while_the_members_start_is_a_clean_stop(settings: Settings, tmp_path: Path) -> None:
    # Ctrl-C on a terminal reaches the supervisor and its members at once; a member may get it
    # before its own handlers are in place (CI saw one). Whatever stage each member is at, the
    # run stops with 0, and no member is left behind.
    two = settings.with_overrides(processes=2)
    log_path = tmp_path / "run.log"
    with processor_process(two, log_path) as supervisor:
        wait_until(lambda: "member processes (pids" in log_path.read_text(), "members started")
        started = re.search(r"member processes \(pids (\d+), (\d+)\)", log_path.read_text())
        assert started is not None
        members = {int(started[1]), int(started[2])}
        for pid in (supervisor.pid, *members):
            os.kill(pid, signal.SIGINT)
        assert supervisor.wait(timeout=60) == 0, log_path.read_text()
    wait_until(lambda: all(gone(pid) for pid in members), "the members exit")
    assert owners(settings) == {}
    text = log_path.read_text()
    assert " ERROR " not in text and "Traceback" not in text, text
