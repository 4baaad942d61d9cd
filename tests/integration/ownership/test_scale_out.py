"""Several real processor processes sharing 16 partitions: leases, failover, fencing, handoff.

The checkpoint log (one row per committed live batch: partition, offsets, owner, lease epoch)
is the evidence that no partition ever had two owners commit.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from processor.ownership.leases import current_lease_holders, try_acquire_lease
from processor.ownership.membership import fence, join, register_backend
from processor.settings import Settings
from projections.database import connect
from testkit.reference import reference_fold
from tests.integration.support import (
    assert_projections_equal,
    count,
    drain,
    outgoing,
    processor_process,
    publish,
    settings_env,
    stored_projections,
    synthetic_events,
)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def member_of(process: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}:{process.pid}"


def owners(settings: Settings) -> dict[int, str]:
    with connect(settings.database_url) as conn:
        return {p: h.owner for p, h in current_lease_holders(conn).items()}


def assert_no_partition_had_two_owners_commit(settings: Settings) -> None:
    """Per partition, in commit order: offsets strictly increase (no range committed twice) and
    the lease epoch never goes back (a superseded owner never committed after its successor)."""
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT partition, first_offset, last_offset, owner, lease_epoch "
            "FROM checkpoint_log ORDER BY partition, id"
        ).fetchall()
    assert rows, "no commit was logged"
    last: dict[int, tuple[int, int, str]] = {}
    for partition, first, last_offset, owner, epoch in rows:
        if partition in last:
            previous_offset, previous_epoch, previous_owner = last[partition]
            assert first > previous_offset, f"p{partition}: offsets {first} committed twice"
            assert epoch >= previous_epoch, f"p{partition}: epoch {epoch} after {previous_epoch}"
            if epoch == previous_epoch:
                assert owner == previous_owner, f"p{partition}: two owners in epoch {epoch}"
        last[partition] = (last_offset, epoch, owner)


def test_three_processes_one_killed_and_a_fourth_joining_end_with_exactly_the_fold(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(60_000, users=3_000, seed=60)
    publish(settings, outgoing(bodies))
    small = settings.with_overrides(batch_size=250, threads=2)
    with ExitStack() as stack:
        processes = [
            stack.enter_context(processor_process(small, tmp_path / f"p{i}.log")) for i in range(3)
        ]
        wait_until(lambda: len(set(owners(settings).values())) == 3, "three members own leases")
        wait_until(
            lambda: count(settings, "SELECT count(*) FROM applied_events") >= 10_000,
            "progress",
        )
        victim = processes[1]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert count(settings, "SELECT count(*) FROM applied_events") < 60_000
        wait_until(
            lambda: (
                member_of(victim) not in owners(settings).values() and len(owners(settings)) == 16
            ),
            "the survivors take over the killed member's partitions",
        )
        stack.enter_context(processor_process(small, tmp_path / "p3.log"))
        drain(settings, timeout_s=240)
        # The newcomer's share is handed over within a lease interval or two; the drain may end
        # while four partitions are between their old owner and the newcomer.
        wait_until(
            lambda: len(owners(settings)) == 16 and len(set(owners(settings).values())) == 3,
            "every partition ends with an owner, the newcomer with its share",
        )
        final_owners = owners(settings)
        assert sorted(final_owners) == list(range(16))
        assert member_of(victim) not in final_owners.values()
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))
    assert count(settings, "SELECT sum(events_applied) FROM friendships") == 60_000
    assert_no_partition_had_two_owners_commit(settings)


def test_a_paused_member_is_fenced_and_commits_nothing_after_it_resumes(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(20_000, users=1_000, seed=61)
    publish(settings, outgoing(bodies))
    quick = settings.with_overrides(batch_size=100, threads=2, member_timeout_s=3.0)
    with (
        processor_process(quick, tmp_path / "paused.log") as paused,
        processor_process(quick, tmp_path / "survivor.log") as survivor,
    ):
        wait_until(lambda: len(set(owners(settings).values())) == 2, "both members own leases")
        wait_until(
            lambda: (
                count(
                    settings,
                    f"SELECT count(*) FROM checkpoint_log WHERE owner = '{member_of(paused)}'",
                )
                > 0
            ),
            "the member to pause commits",
        )
        paused.send_signal(signal.SIGSTOP)
        with connect(settings.database_url) as conn:
            stopped_at = conn.execute("SELECT clock_timestamp()").fetchone()
        assert stopped_at is not None
        try:
            wait_until(
                lambda: (
                    set(owners(settings).values()) == {member_of(survivor)}
                    and len(owners(settings)) == 16
                ),
                "the survivor fences the paused member and owns every partition",
            )
            drain(settings, timeout_s=180)
        finally:
            paused.send_signal(signal.SIGCONT)
        # Resumed, the fenced process finds its connections gone; it must not commit its old work.
        wait_until(
            lambda: "membership check failed" in (tmp_path / "paused.log").read_text(),
            "the resumed process to notice that it was fenced",
        )
        assert paused.poll() is None, "the fenced process keeps running and rejoins"
        drain(settings, timeout_s=60)
        late_commits = count(
            settings,
            "SELECT count(*) FROM checkpoint_log "
            f"WHERE owner = '{member_of(paused)}' AND committed_at > '{stopped_at[0].isoformat()}'",
        )
        assert late_commits == 0
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))
    assert_no_partition_had_two_owners_commit(settings)


def test_graceful_shutdown_hands_partitions_over_with_zero_lag_left(
    settings: Settings, tmp_path: Path
) -> None:
    bodies = synthetic_events(20_000, users=1_000, seed=62)
    publish(settings, outgoing(bodies))
    small = settings.with_overrides(batch_size=200, threads=2)
    with (
        processor_process(small, tmp_path / "leaving.log") as leaving,
        processor_process(small, tmp_path / "staying.log") as staying,
    ):
        wait_until(lambda: len(set(owners(settings).values())) == 2, "both members own leases")
        wait_until(
            lambda: count(settings, "SELECT count(*) FROM applied_events") >= 2_000, "progress"
        )
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(timeout=30) == 0
        wait_until(
            lambda: (
                set(owners(settings).values()) == {member_of(staying)}
                and len(owners(settings)) == 16
            ),
            "the remaining member owns every partition",
        )
        drain(settings, timeout_s=180)
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))
    assert_no_partition_had_two_owners_commit(settings)


#: A Kubernetes pod name at its longest (63 characters): ``host:pid`` then exceeds what
#: PostgreSQL keeps of an ``application_name`` (63 bytes) once the prefix is added.
LONG_HOST = "friendship-stream-processor-7d9f8b6c5d-" + "x" * 24


def _long_host_processor(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m processor run`` on a machine whose host name is ``LONG_HOST``."""
    program = (
        "import socket, sys\n"
        f"socket.gethostname = lambda: {LONG_HOST!r}\n"
        "from processor.cli import main\n"
        "sys.exit(main(['run']))\n"
    )
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", program],
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_a_member_with_a_63_character_host_name_keeps_its_leases(
    settings: Settings, tmp_path: Path
) -> None:
    # Regression: lease holders were recognised by application_name, which PostgreSQL cuts at
    # 63 bytes; every lease of such a member looked lost and it handed its partitions off in a
    # loop.
    bodies = synthetic_events(2_000, users=200, seed=63)
    publish(settings, outgoing(bodies))
    process = _long_host_processor(settings, tmp_path / "long.log")
    member = f"{LONG_HOST}:{process.pid}"
    try:
        drain(settings)
        wait_until(lambda: set(owners(settings).values()) == {member}, "the long-named owner")
        wait_until(lambda: len(owners(settings)) == 16, "every partition owned")
        time.sleep(3 * settings.lease_interval_s)  # several lease rounds: nothing is handed off
        assert set(owners(settings).values()) == {member}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    log = (tmp_path / "long.log").read_text()
    assert "its lease was lost" not in log, log[-2000:]
    assert_projections_equal(stored_projections(settings), reference_fold(bodies))


def test_fencing_finds_every_session_of_a_long_named_member(settings: Settings) -> None:
    # Regression: fence() matched application_name and terminated nothing for such a member.
    member = f"{LONG_HOST}:4242"
    with connect(settings.database_url) as control, connect(settings.database_url) as lease:
        for conn in (control, lease):
            register_backend(conn, member)
        join(control, member)
        assert try_acquire_lease(lease, 5)
        with connect(settings.database_url) as other:
            terminated = fence(other, member)
            assert terminated == 2
            assert 5 not in current_lease_holders(other)
            assert count(settings, "SELECT count(*) FROM member_backends") == 0
