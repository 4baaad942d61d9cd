"""Database faults: every processor session killed mid-batch, a statement timeout, a deadlock
with an admin transaction. Each batch either commits whole or retries whole.

A real restart and a real crash of the server are in ``test_database_restarts.py`` (on a
PostgreSQL of the test's own). The session kills here stay: they end only the processor's
sessions while the server and every other session stay up, as fencing does and as a cut
connection looks, on the shared server in a few seconds.

- ``pg_terminate_backend`` on every session of the processor (its lease connections and its
  control connection), repeatedly, each time while a batch transaction is open: the owners
  release their partitions and take them again from the committed checkpoint; the member rejoins.
- A statement timeout (``ALTER DATABASE ... SET statement_timeout``) cancels slowed projection
  writes: the batch is retried whole on the same connection
  (``processor.applying.applier.TRANSIENT_ERRORS``).
- An admin transaction locks a friendship row, then the checkpoint row of its partition: the
  reverse of the processor's order, so PostgreSQL detects a deadlock and aborts the processor's
  batch, which is retried whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from processor.ownership.membership import OWNER_APPLICATION_PREFIX
from processor.settings import Settings
from projections.database import connect, database_name
from tests.faults.scale import size
from tests.faults.support import (
    FaultReport,
    applied_count,
    assert_batches_atomic,
    batch_retries,
    lease_count,
    log_text,
    processor_backends,
    scalar,
    slow_projection_writes,
    slow_writes_done,
    terminate,
    verify,
    wait_until,
)
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    synthetic_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def chunked(bodies: list[bytes], parts: int) -> list[list[bytes]]:
    step = len(bodies) // parts
    chunks = [bodies[i * step : (i + 1) * step] for i in range(parts - 1)]
    return [*chunks, bodies[(parts - 1) * step :]]


def test_every_processor_session_terminated_mid_batch_repeatedly(
    settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    rounds = size(4, 12)
    bodies = synthetic_events(size(12_000, 50_000), users=size(1_000, 3_000), seed=401)
    chunks = chunked(bodies, rounds + 1)
    slow_projection_writes(settings, 0.05)  # batches stay open long enough to be hit
    log_path = tmp_path / "processor.log"
    publish(settings, outgoing(chunks[0]))
    terminated = 0
    mid_batch = 0
    with processor_process(settings.with_overrides(batch_size=200, threads=2), log_path) as process:
        wait_until(lambda: lease_count(settings) == settings.partitions, "every lease taken")
        for chunk in chunks[1:]:
            before = applied_count(settings)
            publish(settings, outgoing(chunk))
            busy: list[int] = []

            def a_batch_is_open(busy: list[int] = busy) -> bool:
                sessions = processor_backends(settings)
                busy[:] = [pid for pid, name, in_tx in sessions if in_tx]
                return any(
                    in_tx and name.startswith(OWNER_APPLICATION_PREFIX)
                    for _, name, in_tx in sessions
                )

            wait_until(a_batch_is_open, "a batch transaction in progress")
            sessions = processor_backends(settings)
            terminated += terminate(settings, [pid for pid, _, _ in sessions])
            mid_batch += 1
            assert_batches_atomic(settings)
            wait_until(
                lambda: lease_count(settings) == settings.partitions,
                "the processor to take every lease again",
            )
            wait_until(
                lambda before=before: applied_count(settings) > before, "progress after the kill"
            )
            assert process.poll() is None, "the processor must survive its sessions being killed"
        drain(settings)
        # Once more with every partition idle: no batch will ever fail on the dead lease
        # connections, yet the processor must notice the lost leases and own them again.
        terminated += terminate(settings, [pid for pid, _, _ in processor_backends(settings)])
        wait_until(
            lambda: lease_count(settings) == settings.partitions,
            "the processor to take every idle partition's lease again",
        )
        rejoined = scalar(settings, "SELECT count(*) FROM members")
    text = log_text(log_path)
    released = text.count(": released (")
    verify(
        settings,
        fault_report,
        scenario="every DB session terminated mid-batch (pg_terminate_backend)",
        rounds=rounds,
        valid=bodies,
        notes=(
            f"{terminated} sessions terminated, {mid_batch} rounds with a batch open, "
            f"{released} partition releases and retakes"
        ),
    )
    assert released >= rounds, "owners must release and retake their partitions"
    assert "its lease was lost with its database connection" in text
    assert "membership check failed" in text, "the control session's loss must be noticed"
    assert rejoined == 1, "the member rejoins after its control session was killed"


def test_a_statement_timeout_retries_the_batch_whole(
    settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    timeouts = size(6, 30)
    bodies = synthetic_events(size(6_000, 30_000), users=500, seed=402)
    with connect(settings.database_url) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET statement_timeout = '300ms'").format(
                sql.Identifier(database_name(settings.database_url))
            )
        )
    # The first `timeouts` projection writes sleep 1 s: each is cancelled at 300 ms.
    slow_projection_writes(settings, 1.0, first=timeouts)
    publish(settings, outgoing(bodies))
    log_path = tmp_path / "processor.log"
    with processor_process(settings.with_overrides(batch_size=200, threads=2), log_path):
        wait_until(lambda: slow_writes_done(settings) > timeouts, "every slowed write to run")
        drain(settings)
    with connect(settings.database_url) as conn:  # the checks below are not under test
        conn.execute(
            sql.SQL("ALTER DATABASE {} RESET statement_timeout").format(
                sql.Identifier(database_name(settings.database_url))
            )
        )
    retries = batch_retries(log_path)
    gave_up = log_text(log_path).count("released (QueryCanceled")
    verify(
        settings,
        fault_report,
        scenario="statement timeout (300 ms) on slowed projection writes",
        rounds=timeouts,
        valid=bodies,
        notes=f"{timeouts} statements cancelled, {retries} whole-batch retries, "
        f"{gave_up} give-ups (partition retaken)",
    )
    assert retries + gave_up >= 1 and retries >= 1


def test_a_deadlock_with_an_admin_write_retries_the_batch_whole(
    settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    rounds = size(3, 10)
    bodies = synthetic_events(size(6_000, 30_000), users=200, seed=403)
    chunks = chunked(bodies, 2 * rounds + 1)  # spare chunks for rounds the admin loses
    hot_user = "user-00000"  # the most frequent user of the skewed synthetic traffic
    assert all(any(json.loads(b)["user_id"] == hot_user for b in c) for c in chunks)
    # The processor's sessions check for deadlocks after 2 s of waiting, the admin's after 30 s:
    # the processor's batch is the one aborted (unless the admin was slower than 2 s to close
    # the cycle; such a round is counted and repeated).
    with connect(settings.database_url) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET deadlock_timeout = '2s'").format(
                sql.Identifier(database_name(settings.database_url))
            )
        )
    log_path = tmp_path / "processor.log"
    publish(settings, outgoing(chunks[0]))
    processor_victims = 0
    admin_victims = 0
    with processor_process(settings.with_overrides(batch_size=200, threads=2), log_path):
        drain(settings)
        partition = scalar(
            settings, "SELECT partition FROM applied_events WHERE user_id = %s LIMIT 1", (hot_user,)
        )
        deadlocks_before = scalar(
            settings, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        for chunk in chunks[1:]:
            if processor_victims == rounds:
                publish(settings, outgoing(chunk))
                continue
            with connect(settings.database_url, application_name="fault admin") as admin:
                admin_pid = admin.info.backend_pid
                admin.execute("SET deadlock_timeout = '30s'")
                admin.execute("BEGIN")
                admin.execute(
                    "UPDATE friendships SET score = score WHERE user_id = %s", (hot_user,)
                )
                publish(settings, outgoing(chunk))
                wait_until(
                    lambda admin_pid=admin_pid: (
                        scalar(
                            settings,
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s "
                            "AND %s = ANY(pg_blocking_pids(pid))",
                            (f"{OWNER_APPLICATION_PREFIX}%", admin_pid),
                        )
                        > 0
                    ),
                    "the processor's batch to wait for the admin's row lock",
                )
                try:
                    admin.execute(
                        "SELECT committed_offset FROM checkpoints WHERE partition = %s FOR UPDATE",
                        (partition,),
                    )
                    admin.execute("COMMIT")
                    processor_victims += 1
                except psycopg.errors.DeadlockDetected:
                    admin.execute("ROLLBACK")
                    admin_victims += 1
            assert_batches_atomic(settings)
        drain(settings)
        deadlocks = (
            scalar(
                settings,
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            )
            - deadlocks_before
        )
    retries = batch_retries(log_path)
    # After BATCH_ATTEMPTS deadlocks in a row the owner gives the partition up; the next owner
    # re-reads the batch from the checkpoint: still whole, but logged as a release.
    give_ups = log_text(log_path).count("released (DeadlockDetected")
    verify(
        settings,
        fault_report,
        scenario="deadlock: admin write locks rows in the reverse order",
        rounds=rounds,
        valid=bodies,
        notes=f"{deadlocks} deadlocks detected, the processor's batch aborted {processor_victims} "
        f"times (the admin's {admin_victims}), {retries} whole-batch retries, {give_ups} "
        "give-ups (batch re-read by the next owner)",
    )
    assert processor_victims == rounds, "the processor's batch was never the deadlock victim"
    assert deadlocks >= rounds
    assert retries + give_ups >= rounds
