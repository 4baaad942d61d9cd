"""The processor's own PostgreSQL really restarted and really crashed, mid-batch.

Each test starts a PostgreSQL 15 server of its own (``testkit.postgres_instance``: the machine's
server is shared and is never restarted) and puts the deployment's database there; the broker
is the machine's (a vhost of the test's own).

- ``pg_ctl restart -m fast`` while a batch transaction is open: the server ends every session
  and rolls the open transactions back, then comes back.
- ``pg_ctl stop -m immediate`` while a batch transaction is open: every server process quits
  at once (no checkpoint); the server stays down a moment, then starts with crash recovery.

A real ``python -m processor run`` drains a backlog through either, several times, without
being restarted itself: every lease dies with the server, the processor notices (failed
batches, a failed membership check, lost leases), re-joins, and takes every partition again
(each partition's ``lease_epoch`` rises) from its committed checkpoint. The end state equals the
fold: lost 0, applied twice 0. The time from the server accepting connections again until every
partition is leased again, and until each partition's first commit, are figures of the report.

The API, too: a real API process answers reads and read-your-writes waits (its LISTEN
connection) after the server restarted and after it crashed.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from processor.ownership.membership import OWNER_APPLICATION_PREFIX
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from projections.database import connect
from testkit.postgres_instance import PostgresInstance, postgres_instance
from testkit.processes import api_process, free_port
from testkit.services import Services, isolated_settings, make_token
from tests.faults.scale import size
from tests.faults.support import (
    FaultReport,
    applied_count,
    assert_batches_atomic,
    lease_count,
    log_text,
    processor_backends,
    slow_projection_writes,
    verify,
    wait_until,
)
from tests.integration.api.test_api import adjusted, encode
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    synthetic_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: Seconds the crashed server stays down before it is started again (the processor's
#: connections fail meanwhile, as they would while an orchestrator restarts a database).
DOWN_AFTER_CRASH_S = 2.0


@pytest.fixture
def own_postgres() -> Iterator[PostgresInstance]:
    """A PostgreSQL server of this test's own (stopped and removed afterwards)."""
    with postgres_instance() as instance:
        yield instance


@pytest.fixture
def settings(services: Services, own_postgres: PostgresInstance) -> Iterator[Settings]:
    """Settings on a fresh vhost of the machine's broker (topology declared) and a fresh
    migrated database on the test's own PostgreSQL."""
    with isolated_settings(services.on_database_server(own_postgres.server_url())) as isolated:
        declare_topology(isolated)
        try:
            yield isolated
        finally:
            if not own_postgres.running:  # a test failed while it was down: the cleanup needs it
                own_postgres.start()


def lease_epochs(settings: Settings) -> dict[int, int]:
    """Every partition's ``lease_epoch`` (raised by each lease take)."""
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT partition, lease_epoch FROM checkpoints").fetchall()
    return {int(p): int(e) for p, e in rows}


def first_commits_after_start(settings: Settings, epochs: dict[int, int]) -> dict[int, float]:
    """For each partition that committed under a newer lease than ``epochs``: seconds from the
    server's start (``pg_postmaster_start_time()``) to that partition's first such commit."""
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT partition, lease_epoch, "
            "extract(epoch FROM committed_at - pg_postmaster_start_time()) "
            "FROM checkpoint_log ORDER BY committed_at"
        ).fetchall()
    firsts: dict[int, float] = {}
    for partition, epoch, seconds in rows:
        if epoch > epochs.get(partition, 0) and partition not in firsts:
            firsts[int(partition)] = float(seconds)
    return firsts


def a_batch_is_open(settings: Settings) -> bool:
    """Whether a partition owner of the processor has a transaction open now."""
    return any(
        in_tx and name.startswith(OWNER_APPLICATION_PREFIX)
        for _, name, in_tx in processor_backends(settings)
    )


def chunked(bodies: list[bytes], parts: int) -> list[list[bytes]]:
    step = len(bodies) // parts
    return [bodies[i * step : (i + 1) * step] for i in range(parts - 1)] + [
        bodies[(parts - 1) * step :]
    ]


def drain_through_database_faults(
    settings: Settings,
    instance: PostgresInstance,
    fault: Callable[[], None],
    log_path: Path,
    *,
    rounds: int,
    seed: int,
) -> tuple[list[bytes], list[float], list[float]]:
    """Publish a backlog in ``rounds + 1`` chunks; after each chunk but the first, wait for an
    open batch, call ``fault`` (which leaves the server up), and wait until every partition is
    leased again under a new epoch and work goes on; at the end, ``fault`` once more with every
    partition idle. The processor is never restarted.

    Returns:
        Every body published; per fault (the idle one last), the seconds from the server being
        back until every partition was leased again; and per partition and round, the seconds
        from the server's start to that partition's first commit under its new lease.
    """
    bodies = synthetic_events(size(12_000, 50_000), users=size(1_000, 3_000), seed=seed)
    chunks = chunked(bodies, rounds + 1)
    slow_projection_writes(settings, 0.05)  # batches stay open long enough to be hit
    publish(settings, outgoing(chunks[0]))
    leased_again: list[float] = []
    first_commits: list[float] = []
    with processor_process(settings.with_overrides(batch_size=200, threads=2), log_path) as process:
        wait_until(lambda: lease_count(settings) == settings.partitions, "every lease taken")
        for chunk in chunks[1:]:
            publish(settings, outgoing(chunk))
            wait_until(lambda: a_batch_is_open(settings), "a batch transaction in progress")
            before_epochs = lease_epochs(settings)
            before_applied = applied_count(settings)
            fault()
            back = time.monotonic()
            wait_until(
                lambda: lease_count(settings) == settings.partitions,
                "the processor to lease every partition again",
            )
            leased_again.append(time.monotonic() - back)
            wait_until(
                lambda before=before_epochs: all(
                    epoch > before[p] for p, epoch in lease_epochs(settings).items()
                ),
                "every partition re-owned under a new lease epoch",
            )
            assert_batches_atomic(settings)
            wait_until(
                lambda before=before_applied: applied_count(settings) > before,
                "progress after the database came back",
            )
            assert process.poll() is None, "the processor must survive its database restarting"
            drain(settings)
            first_commits += first_commits_after_start(settings, before_epochs).values()
        # Once more with every partition idle: no batch fails on the dead lease connections,
        # yet the processor must notice the lost leases and own every partition again.
        before_epochs = lease_epochs(settings)
        fault()
        back = time.monotonic()
        wait_until(
            lambda before=before_epochs: (
                lease_count(settings) == settings.partitions
                and all(epoch > before[p] for p, epoch in lease_epochs(settings).items())
            ),
            "every idle partition re-owned under a new lease epoch",
        )
        leased_again.append(time.monotonic() - back)
        assert process.poll() is None
    assert instance.running
    return bodies, leased_again, first_commits


#: A worker thread gave its partition up because the batch it applied failed (on a connection
#: that died: mid-transaction, or at its first statement).
BATCH_CUT_OFF = re.compile(r"\[worker-\d+\] \S+: partition \d+: released \(")


def failed_batches(log_path: Path) -> int:
    """How many batches failed on a dead connection (each partition was given up and re-read
    from its checkpoint by the next lease)."""
    return len(BATCH_CUT_OFF.findall(log_text(log_path)))


def figures(leased_again: list[float], first_commits: list[float]) -> str:
    return (
        f"every partition leased again {max(leased_again):.1f} s (max) after the server was "
        f"back ({len(leased_again)} times, the last with every partition idle); first commit "
        f"per partition {statistics.median(first_commits):.1f} s median, "
        f"{max(first_commits):.1f} s max after the server's start ({len(first_commits)} "
        "partition resumptions)"
    )


def test_the_database_restarted_mid_batch(
    settings: Settings,
    own_postgres: PostgresInstance,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    rounds = size(3, 8)
    log_path = tmp_path / "processor.log"
    bodies, leased_again, first_commits = drain_through_database_faults(
        settings, own_postgres, own_postgres.restart, log_path, rounds=rounds, seed=411
    )
    restart_s = own_postgres.start_seconds[1:]
    failed = failed_batches(log_path)
    verify(
        settings,
        fault_report,
        scenario="own PostgreSQL restarted mid-batch (pg_ctl restart -m fast)",
        rounds=rounds,
        valid=bodies,
        notes=(
            f"{failed} batches failed on dead connections; "
            f"restart took {max(restart_s):.1f} s (max); "
            f"{figures(leased_again, first_commits)}; the processor was never restarted"
        ),
    )
    assert failed >= 1, "no batch failed: the restart missed the batches"


def test_the_database_crashed_mid_batch(
    settings: Settings,
    own_postgres: PostgresInstance,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    rounds = size(3, 8)
    log_path = tmp_path / "processor.log"

    def crash_then_start() -> None:
        own_postgres.crash()
        time.sleep(DOWN_AFTER_CRASH_S)
        own_postgres.start()

    bodies, leased_again, first_commits = drain_through_database_faults(
        settings, own_postgres, crash_then_start, log_path, rounds=rounds, seed=412
    )
    recovery_s = own_postgres.start_seconds[1:]
    failed = failed_batches(log_path)
    verify(
        settings,
        fault_report,
        scenario="own PostgreSQL crashed mid-batch (pg_ctl stop -m immediate), "
        f"down {DOWN_AFTER_CRASH_S:.0f} s",
        rounds=rounds,
        valid=bodies,
        notes=(
            f"{failed} batches failed on dead connections; "
            f"start with crash recovery took {max(recovery_s):.1f} s (max); "
            f"{figures(leased_again, first_commits)}; the processor was never restarted"
        ),
    )
    assert "membership check failed" in log_text(log_path)
    assert failed >= 1, "no batch failed: the crash missed the batches"


@pytest.mark.parametrize("fault", ["restart", "crash"])
def test_the_api_answers_reads_and_waits_after_the_database_came_back(
    settings: Settings, own_postgres: PostgresInstance, tmp_path: Path, fault: str
) -> None:
    """Reads on the API's pooled connections and a read-your-writes wait (its LISTEN
    connection) after a real restart or crash of the database: the stale pooled connections
    are replaced, the listener reconnects, and no client sees an error once the server is
    back."""
    settings = settings.with_overrides(api_port=free_port(), wait_safety_poll_s=3600.0)
    ingest, read = make_token(settings, "ingest"), make_token(settings, "read")
    user = f"kid-restart-{uuid.uuid4().hex[:6]}"
    with (
        processor_process(settings, tmp_path / "processor.log"),
        api_process(settings, tmp_path / "api.log"),
        httpx.Client(
            base_url=f"http://{settings.api_host}:{settings.api_port}", timeout=60
        ) as client,
    ):

        def post_then_read(round_: int) -> httpx.Response:
            event = adjusted(user, 1, f"2024-03-01T00:00:{round_:02d}Z")
            posted = client.post(
                "/v1/events", content=encode(event), headers={"Authorization": f"Bearer {ingest}"}
            )
            assert posted.status_code == 202, posted.text
            return client.get(
                f"/v1/users/{user}/friendship",
                params={"after": posted.json()["token"], "wait_s": 10},
                headers={"Authorization": f"Bearer {read}"},
            )

        for round_ in range(1, 4):  # the pool holds connections, the listener listens
            answer = post_then_read(round_)
            assert answer.status_code == 200, answer.text
            stats = client.get("/v1/stats", headers={"Authorization": f"Bearer {read}"})
            assert stats.status_code == 200, stats.text
        if fault == "restart":
            own_postgres.restart()
        else:
            own_postgres.crash()
            time.sleep(DOWN_AFTER_CRASH_S)
            own_postgres.start()
        for _ in range(8):  # more reads than stale pooled connections, the stats first
            stats = client.get("/v1/stats", headers={"Authorization": f"Bearer {read}"})
            assert stats.status_code == 200, stats.text
        for _ in range(8):
            plain = client.get(
                f"/v1/users/{user}/friendship", headers={"Authorization": f"Bearer {read}"}
            )
            assert plain.status_code == 200, plain.text
            assert plain.json()["events_applied"] == 3
        for round_ in range(4, 7):  # the processor's and the listener's connections came back
            answer = post_then_read(round_)
            assert answer.status_code == 200, answer.text
            assert answer.json()["events_applied"] == round_
