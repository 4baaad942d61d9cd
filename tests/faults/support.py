"""Helpers of the fault scenarios: injecting faults, checking atomicity mid-fault, and the final
verdict (lost = 0, applied twice = 0, every invalid input dead-lettered with a reason).

Faults are injected from outside, the way an operator or a failure would: the broker's
management API closes connections, ``pg_terminate_backend`` kills database sessions, a row lock
held by an "admin" transaction provokes a deadlock, a trigger slows projection writes, SIGKILL
ends the process.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.ownership.membership import MEMBER_APPLICATION_PREFIX, OWNER_APPLICATION_PREFIX
from processor.settings import Settings
from projections.advisory_locks import LEASE_CLASS
from projections.database import connect
from testkit.reference import reference_fold
from testkit.services import Services
from tests.integration.support import assert_projections_equal, stored_projections

# -- waiting -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.05)


def scalar(settings: Settings, sql: str, params: Sequence[object] = ()) -> Any:
    """The single value answered by ``sql``."""
    with connect(settings.database_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def applied_count(settings: Settings) -> int:
    return int(scalar(settings, "SELECT count(*) FROM applied_events"))


# -- the broker: connections through the management API ------------------------------------------


def _management(services: Services, method: str, path: str) -> Any:
    parts = urllib.parse.urlsplit(services.management_url)
    credentials = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port}/api/{path}",
        method=method,
        headers={"Authorization": f"Basic {credentials}", "X-Reason": "fault injection"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else None


def stream_connections(services: Services, settings: Settings) -> list[dict[str, Any]]:
    """The stream-protocol connections of the test's vhost, as the management API lists them
    (it lags a few seconds behind new connections)."""
    vhost = urllib.parse.quote(settings.amqp.vhost, safe="")
    listed = _management(services, "GET", f"vhosts/{vhost}/connections")
    return [c for c in listed or [] if c.get("protocol") == "stream"]


def amqp_connections(services: Services, settings: Settings, label: str) -> list[dict[str, Any]]:
    """The AMQP connections of the test's vhost whose client-chosen name is ``label`` (e.g.
    ``friendship-stream-publisher``), as the management API lists them (a few seconds late)."""
    vhost = urllib.parse.quote(settings.amqp.vhost, safe="")
    listed = _management(services, "GET", f"vhosts/{vhost}/connections")
    return [
        c
        for c in listed or []
        if c.get("protocol", "").startswith("AMQP") and connection_label(c) == label
    ]


def connection_label(connection: dict[str, Any]) -> str:
    """The client-chosen name of a connection (``friendship-stream host:pid`` for a reader)."""
    properties = connection.get("client_properties") or {}
    return str(connection.get("user_provided_name") or properties.get("connection_name") or "")


def close_connections(services: Services, connections: Sequence[dict[str, Any]]) -> int:
    """Close connections from the broker side; returns how many the broker still had."""
    closed = 0
    for connection in connections:
        name = urllib.parse.quote(connection["name"], safe="")
        try:
            _management(services, "DELETE", f"connections/{name}")
            closed += 1
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # already gone (a short-lived probe)
                raise
    return closed


# -- the database: backends and locks -------------------------------------------------------------


def processor_backends(settings: Settings) -> list[tuple[int, str, bool]]:
    """``(pid, application_name, in_transaction)`` of every processor session in the database."""
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT pid, application_name, xact_start IS NOT NULL FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND (application_name LIKE %s OR application_name LIKE %s)",
            (f"{OWNER_APPLICATION_PREFIX}%", f"{MEMBER_APPLICATION_PREFIX}%"),
        ).fetchall()
    return [(int(pid), str(name), bool(busy)) for pid, name, busy in rows]


def terminate(settings: Settings, pids: Sequence[int]) -> int:
    """``pg_terminate_backend`` each pid; returns how many were terminated."""
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),)
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def lease_count(settings: Settings) -> int:
    """How many partitions have a lease holder now."""
    return int(
        scalar(
            settings,
            "SELECT count(*) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid = %s AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LEASE_CLASS,),
        )
    )


# -- logs ------------------------------------------------------------------------------------

RECONNECT_LINE = re.compile(
    r"stream connection to \S+ failed \((?P<error>[^)]*)\).*?; reconnect (?P<attempt>\d+) in "
    r"(?P<delay>[0-9.]+) s, resuming every partition from its next offset"
)


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def reconnect_delays(path: Path) -> list[float]:
    """The back-off delay of every reconnect line the stream reader logged."""
    return [float(m.group("delay")) for m in RECONNECT_LINE.finditer(log_text(path))]


def batch_retries(path: Path) -> int:
    """How many times a batch was retried whole after a transient database error."""
    return log_text(path).count(": retrying batch at offsets ")


# -- atomicity, observed while faults happen ------------------------------------------------------


def assert_batches_atomic(settings: Settings) -> None:
    """In one snapshot, every committed effect matches its checkpoints: no applied event or dead
    letter beyond its partition's checkpoint, per-partition counters equal to the rows, and the
    projections counting exactly the applied events. A half-applied batch breaks one of these."""
    with connect(settings.database_url) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            beyond = conn.execute(
                "SELECT (SELECT count(*) FROM applied_events a JOIN checkpoints c USING (partition)"
                "        WHERE a.log_offset > c.committed_offset)"
                "     + (SELECT count(*) FROM dead_letters d JOIN checkpoints c USING (partition)"
                "        WHERE d.log_offset > c.committed_offset)"
            ).fetchone()
            counters = conn.execute(
                "SELECT c.partition, c.applied_count, c.dead_lettered_count,"
                "       (SELECT count(*) FROM applied_events a WHERE a.partition = c.partition),"
                "       (SELECT count(*) FROM dead_letters d WHERE d.partition = c.partition) "
                "FROM checkpoints c"
            ).fetchall()
            totals = conn.execute(
                "SELECT (SELECT coalesce(sum(events_applied), 0) FROM friendships),"
                "       (SELECT count(*) FROM applied_events),"
                "       (SELECT coalesce(sum(turns), 0) FROM topic_metrics),"
                "       (SELECT count(*) FROM applied_events"
                "        WHERE type = 'conversation.turn_recorded'),"
                "       (SELECT coalesce(sum(conversations), 0) FROM topic_metrics),"
                "       (SELECT count(*) FROM applied_events"
                "        WHERE type = 'conversation.completed')"
            ).fetchone()
        finally:
            conn.execute("ROLLBACK")
    assert beyond is not None and beyond[0] == 0, "effects committed beyond their checkpoint"
    for partition, applied, dead, applied_rows, dead_rows in counters:
        assert (applied, dead) == (applied_rows, dead_rows), (
            f"p{partition}: checkpoint counts {applied} applied / {dead} dead, rows say "
            f"{applied_rows} / {dead_rows}"
        )
    assert totals is not None
    events_applied, applied_rows, turns, turn_rows, conversations, completed_rows = totals
    assert events_applied == applied_rows, f"friendships count {events_applied}, ids {applied_rows}"
    assert turns == turn_rows, f"topic turns {turns}, turn events {turn_rows}"
    assert conversations == completed_rows, f"conversations {conversations} vs {completed_rows}"


# -- the verdict -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the figures table."""

    scenario: str
    rounds: int
    events: int
    invalid: int
    lost: int
    applied_twice: int
    notes: str = ""


@dataclass
class FaultReport:
    """The rows recorded by the scenarios of this session."""

    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)


def render_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| scenario | rounds | events | invalid inputs tried | lost | applied twice | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {r.scenario} | {r.rounds} | {r.events:,} | {r.invalid:,} | {r.lost} | "
        f"{r.applied_twice} | {r.notes} |"
        for r in rows
    ]
    return "\n".join(lines)


def _event_ids(bodies: Sequence[bytes]) -> set[uuid.UUID]:
    return {uuid.UUID(json.loads(body)["event_id"]) for body in bodies}


def verify(
    settings: Settings,
    report: FaultReport,
    *,
    scenario: str,
    rounds: int,
    valid: Sequence[bytes],
    invalid: Sequence[bytes] = (),
    refused: int = 0,
    notes: str = "",
) -> Row:
    """Record the scenario's figures, then assert the contract on the final state.

    Args:
        valid: every valid body published, in publish order (duplicates allowed).
        invalid: every invalid body published.
        refused: invalid inputs tried that never reached the log (refused at the door).

    The figures: *lost* = valid event ids with no applied row; *applied twice* = events counted
    by the projections beyond the fold's count, summed per user.
    """
    expected = reference_fold(valid)
    stored = stored_projections(settings)
    expected_ids = _event_ids(valid)
    with connect(settings.database_url) as conn:
        applied_ids = {
            uuid.UUID(str(r[0])) for r in conn.execute("SELECT event_id FROM applied_events")
        }
        dead = conn.execute("SELECT raw, reason FROM dead_letters").fetchall()
    lost = len(expected_ids - applied_ids)
    twice = sum(
        max(0, projection["events_applied"] - expected.get(user, {}).get("events_applied", 0))
        for user, projection in stored.items()
    )
    row = Row(scenario, rounds, len(expected_ids), len(invalid) + refused, lost, twice, notes)
    report.add(row)

    assert lost == 0, f"{lost} valid events were never applied"
    assert twice == 0, f"{twice} events were applied more than once"
    assert not applied_ids - expected_ids, "an event that was not published valid was applied"
    assert_projections_equal(stored, expected)
    assert sum(p["events_applied"] for p in stored.values()) == len(expected_ids)
    assert len(applied_ids) == len(expected_ids)
    dead_raw = Counter(bytes(raw) for raw, _ in dead)
    missing = Counter(invalid) - dead_raw
    unexpected = dead_raw - Counter(invalid)
    assert not missing, f"{sum(missing.values())} invalid inputs were not dead-lettered"
    assert not unexpected, f"{sum(unexpected.values())} dead letters are not invalid inputs"
    assert all(reason for _, reason in dead), "a dead letter without a reason"
    assert_batches_atomic(settings)
    return row


# -- slow projection writes ----------------------------------------------------------------------


def slow_projection_writes(settings: Settings, seconds: float, first: int | None = None) -> None:
    """Make every statement that inserts into friendships sleep ``seconds`` (two per batch: the
    missing rows, then the upserts that go with the checkpoint's advance); only the ``first``
    such statements when given. The count lives in a sequence, so a rolled-back or
    cancelled statement still counts."""
    limit = "NULL" if first is None else str(int(first))
    with connect(settings.database_url) as conn:
        conn.execute("CREATE SEQUENCE IF NOT EXISTS fault_slow_calls")
        conn.execute(
            "CREATE OR REPLACE FUNCTION fault_slow_write() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF {limit} IS NULL OR nextval('fault_slow_calls') <= {limit} THEN"
            f" PERFORM pg_sleep({float(seconds)}); END IF; RETURN NULL; END $$"
        )
        conn.execute("DROP TRIGGER IF EXISTS fault_slow_write ON friendships")
        conn.execute(
            "CREATE TRIGGER fault_slow_write BEFORE INSERT ON friendships "
            "FOR EACH STATEMENT EXECUTE FUNCTION fault_slow_write()"
        )


def slow_writes_done(settings: Settings) -> int:
    """How many slowed statements started (``slow_projection_writes`` with ``first``)."""
    return int(
        scalar(
            settings,
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM fault_slow_calls",
        )
    )


def fast_projection_writes(settings: Settings) -> None:
    """Remove the slow trigger."""
    with connect(settings.database_url) as conn:
        conn.execute("DROP TRIGGER IF EXISTS fault_slow_write ON friendships")
