"""The rules of a batch (``tests/batch_rules.py``) against PostgreSQL, in a database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from processor.applying.checkpoint import begin_lease_epoch, ensure_checkpoints
from processor.applying.errors import EventIdFormMismatch
from processor.applying.postgres import PostgresStore
from processor.privacy.data_keys import ensure_data_keys
from processor.privacy.erasure import erase_user
from processor.privacy.keys import load_keys
from processor.settings import Settings
from projections.database import connect
from schemas.validation import decode_event
from testkit.processes import stored_projections
from tests.batch_rules import PARTITIONS, Backend, BatchRules
from tests.strategies import make_event

ADJUSTED = "friendship.adjusted"
DATA = {"delta": 1, "reason": "probe"}


class PostgresBackend(Backend):
    """A ``PostgresStore`` on one connection; reads go through their own SQL."""

    def __init__(self, settings: Settings, conn: psycopg.Connection) -> None:
        self.settings = settings
        self.conn = conn
        self.store = PostgresStore(conn)
        self.keys = load_keys(settings)

    def reset(self) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "TRUNCATE friendships, topic_metrics, applied_events, dead_letters, "
                "checkpoint_log, data_keys, erasures, erased_event_ids"
            )
            self.conn.execute(
                "UPDATE checkpoints SET committed_offset = -1, lease_epoch = 0, owner = NULL, "
                "applied_count = 0, dead_lettered_count = 0, fold_version = 1"
            )

    def add_data_key(self, user_id: str) -> bytes:
        return ensure_data_keys(self.conn, [user_id], self.keys)[user_id]

    def erase(self, user_id: str) -> None:
        erase_user(self.conn, user_id, self.keys)

    def is_encrypted(self, event_id: str) -> bool:
        row = self.conn.execute(
            "SELECT encrypted FROM applied_events WHERE event_id = %s", (event_id,)
        ).fetchone()
        return bool(row and row[0])

    def rewind(self, partition: int) -> None:
        self.conn.execute(
            "UPDATE checkpoints SET committed_offset = -1 WHERE partition = %s", (partition,)
        )

    def set_fold_version(self, partition: int, version: int) -> None:
        self.conn.execute(
            "UPDATE checkpoints SET fold_version = %s WHERE partition = %s", (version, partition)
        )

    def begin_lease(self, partition: int, owner: str) -> tuple[int, int]:
        return begin_lease_epoch(self.conn, partition, owner)

    def projections(self) -> dict[str, dict[str, Any]]:
        return stored_projections(self.settings)

    def dead_letters(self) -> dict[tuple[int, int], tuple[str | None, str, str, bytes]]:
        rows = self.conn.execute(
            "SELECT partition, log_offset, event_id, field, reason, raw FROM dead_letters"
        ).fetchall()
        return {
            (p, o): (event_id, field, reason, bytes(raw))
            for p, o, event_id, field, reason, raw in rows
        }

    def checkpoint(self, partition: int) -> tuple[int, int, int]:
        row = self.conn.execute(
            "SELECT committed_offset, applied_count, dead_lettered_count FROM checkpoints "
            "WHERE partition = %s",
            (partition,),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def commit_log(self) -> list[tuple[int, int, int, str, int]]:
        rows = self.conn.execute(
            "SELECT partition, first_offset, last_offset, owner, lease_epoch FROM checkpoint_log "
            "ORDER BY id"
        ).fetchall()
        return [(int(p), int(f), int(last), str(o), int(e)) for p, f, last, o, e in rows]

    def applied_event(self, event_id: str) -> tuple[str, int, int] | None:
        row = self.conn.execute(
            "SELECT user_id, partition, log_offset FROM applied_events WHERE event_id = %s",
            (event_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]))


class TestBatchRulesPostgres(BatchRules):
    examples = 25

    @pytest.fixture
    def backend(self, settings: Settings) -> Iterator[Backend]:
        with connect(settings.database_url) as conn:
            ensure_checkpoints(conn, PARTITIONS)
            yield PostgresBackend(settings, conn)


def test_an_event_id_answered_in_another_form_refuses_the_batch(settings: Settings) -> None:
    # The batch keys its first occurrences by uuid::text (lower case). Were an id ever keyed in
    # another form, the insert's answer (the ids it skipped as already recorded) would not match
    # it and the duplicate would pass as new: the batch is refused instead.
    event_id = "0F8FAD5B-D9CB-469F-A165-70867728950E"
    event = decode_event(make_event(ADJUSTED, "kid-form", "2024-06-01T12:00:00Z", DATA, event_id))
    first_seen = {event_id: (event, 0)}
    with connect(settings.database_url) as conn:
        store = PostgresStore(conn)
        with store.transaction() as batch:
            assert batch.record_event_ids(0, first_seen) == {}  # new: recorded
        with pytest.raises(EventIdFormMismatch), store.transaction() as batch:
            batch.record_event_ids(0, first_seen)
