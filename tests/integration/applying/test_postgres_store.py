"""The PostgreSQL store's own statements: the rows a batch locks and in which order, and the
writes that go with the checkpoint's advance (``processor.applying.postgres``)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from processor.applying.applier import PartitionApplier
from processor.applying.arrays import text_array
from processor.applying.batch import apply_batch
from processor.applying.checkpoint import ensure_checkpoints
from processor.applying.postgres import _LOCK_BOTH, PostgresStore
from processor.privacy.keys import load_keys
from processor.reading.log_record import LogRecord
from processor.settings import Settings
from projections.database import connect
from projections.fold import Friendship
from testkit.services import Services, isolated_settings
from tests.batch_rules import turn
from tests.integration.support import reject_rows_of
from tests.strategies import make_event


def adjusted(user: str, delta: int) -> bytes:
    return make_event(
        "friendship.adjusted", user, "2024-06-01T12:00:00Z", {"delta": delta, "reason": "probe"}
    )


@pytest.fixture
def database(services: Services) -> Iterator[Settings]:
    """A fresh migrated database with its checkpoint rows (no broker needed)."""
    with isolated_settings(services) as fresh:
        with connect(fresh.database_url) as conn:
            ensure_checkpoints(conn, fresh.partitions)
        yield fresh


def _rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    with connect(settings.database_url) as conn:
        return conn.execute(sql).fetchall()


def test_the_row_locks_take_the_friendships_then_the_topics(database: Settings) -> None:
    # Batches lock rows in one order (friendships, then topics, each in key order), so two
    # batches never wait for each other crosswise. One statement does both: its plan must run
    # the friendship CTE first and keep each CTE whole (materialized, its ORDER BY kept).
    arrays = (text_array(["b", "a"]), text_array(["a"]), text_array(["space"]))
    with connect(database.database_url) as conn:
        plan = [row[0] for row in conn.execute("EXPLAIN (COSTS OFF) " + _LOCK_BOTH, arrays)]
    text = "\n".join(plan)
    assert plan[0].startswith("Append"), text
    scans = [line.strip() for line in plan if "CTE Scan on" in line]
    assert scans == ["->  CTE Scan on locked_friendships", "->  CTE Scan on locked_topics"], text
    assert text.index("CTE locked_friendships") < text.index("CTE locked_topics"), text


def test_a_value_the_database_rejects_in_the_upsert_is_dead_lettered(database: Settings) -> None:
    # The upsert goes with the checkpoint's advance: the DataError comes from that statement,
    # and the batch's culprit is still isolated and dead-lettered, the rest applied.
    keys = load_keys(database)
    with connect(database.database_url) as conn:
        store = PostgresStore(conn)
        first = apply_batch(store, 0, [LogRecord(0, adjusted("poison-kid", 3))], -1, "t", keys=keys)
        assert first.applied == 1
        conn.execute(reject_rows_of("poison-kid", "UPDATE"))
        bodies = [adjusted("kid-1", 4), adjusted("poison-kid", 5), adjusted("kid-2", 6)]
        applier = PartitionApplier(0, 0, "t", keys)
        result = applier.apply(store, [LogRecord(1 + i, body) for i, body in enumerate(bodies)])
    assert (result.applied, result.dead_lettered, applier.checkpoint) == (2, 1, 3)
    scores = _rows(database, "SELECT user_id, score FROM friendships ORDER BY 1")
    assert scores == [("kid-1", 4), ("kid-2", 6), ("poison-kid", 3)]
    reasons = _rows(database, "SELECT log_offset, reason FROM dead_letters")
    assert len(reasons) == 1 and reasons[0][0] == 2
    assert "the database rejected this event" in str(reasons[0][1])


def test_a_failed_advance_leaves_none_of_the_batchs_writes(database: Settings) -> None:
    # Everything the advance carries (upserts) and everything before it (event ids, missing
    # rows) is one transaction: an advance that fails leaves nothing behind.
    keys = load_keys(database)
    with connect(database.database_url) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_log BEFORE INSERT ON checkpoint_log "
            "FOR EACH ROW EXECUTE FUNCTION refuse_log()"
        )
        batch = [LogRecord(0, adjusted("kid", 5)), LogRecord(1, turn("kid")), LogRecord(2, b"{")]
        with pytest.raises(psycopg.errors.RaiseException):
            apply_batch(PostgresStore(conn), 0, batch, -1, "t", keys=keys, lease_epoch=0)
    for table in ("friendships", "topic_metrics", "applied_events", "dead_letters"):
        assert _rows(database, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert _rows(database, "SELECT committed_offset FROM checkpoints WHERE partition = 0") == [
        (-1,)
    ]


def test_writes_without_an_advance_are_sent_when_the_transaction_ends(
    database: Settings,
) -> None:
    with connect(database.database_url) as conn:
        store = PostgresStore(conn)
        with store.transaction() as tx:
            tx.lock_checkpoint(0, -1, None)
            tx.lock_rows(["kept"], [])
            tx.write_rows({"kept": Friendship(61, 1)}, {})
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.lock_checkpoint(0, -1, None)
            tx.lock_rows(["dropped"], [])
            tx.write_rows({"dropped": Friendship(62, 1)}, {})
            raise RuntimeError("the block failed")
    assert _rows(database, "SELECT user_id, score FROM friendships") == [("kept", 61)]
