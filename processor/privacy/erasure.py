"""Erasure: forget a child everywhere, in one transaction, for good.

``erase_user`` (``just erase USER``, ``DELETE /v1/users/{user_id}``):

1. locks every live checkpoint row, so no batch commits meanwhile and every later batch sees
   the erasure (``processor.applying.checkpoint.lock_all``), and the child's advisory lock, so
   no data key is made for the child meanwhile (``privacy.data_keys.ensure_data_keys``);
2. deletes the child's friendship and topic rows, applied-event rows and dead letters, in the
   live tables and in every replay schema (shadows being built, snapshots kept after a swap),
   and takes what it removed off the per-partition counters; takes the child's id out of the
   dead letters of other children's events published with it as routing key (the row stays,
   its reason says "an erased child's id"); the child's event ids stay used
   (``erased_event_ids``: ids and log positions, no personal data), so another child's event
   that reused one stays a dead letter in a replay as it is live;
3. destroys the child's data key: the child's encrypted events in the log become unreadable;
4. records an erasure entry keyed by a keyed hash of the id, with the counts and no personal
   data.

From then on every batch (live or replay) skips the child's events (``privacy.opening``), the
ingest refuses them (``UserErased``), and ``replay --user`` shows nothing. An erased id is never
used again: the entry stays. Events the child published in plain text stay readable in the log
(the report counts them): only the data key makes the log unreadable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg
from psycopg import sql

from processor.applying import checkpoint
from processor.applying.decode import erased_key_reason
from processor.privacy.crypto import envelope_of
from processor.privacy.data_keys import destroy_data_key
from processor.privacy.key_ids import check_key_ids
from processor.privacy.keys import Keys
from projections.advisory_locks import CHILD_CLASS, child_lock_key
from projections.names import REPLACED_SUFFIX, REPLAY_SCHEMA_PREFIX

#: The child's event ids stay used (``projections.event_ids.ERASED_USER``): the live ones only,
#: as live decided them; a replay finds them in this global table too.
_KEEP_EVENT_IDS_USED: Final = """
INSERT INTO erased_event_ids (event_id, partition, log_offset)
SELECT event_id, partition, log_offset FROM applied_events WHERE user_id = %s
ON CONFLICT (event_id) DO NOTHING
"""


@dataclass(frozen=True)
class RemovedRows:
    """What one schema lost: rows per table, and applied and dead-lettered counts by partition."""

    friendships: int = 0
    topic_rows: int = 0
    applied_events: int = 0
    plain_events: int = 0
    dead_letters: int = 0
    redacted_dead_letters: int = 0


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure did (no personal data: the child is named by its ``user_ref``).

    Attributes:
        user_ref: the keyed hash logs use for the child (``Keys.user_ref``).
        erased_at: when the erasure committed first (database time).
        already_erased: the child had been erased before; nothing was left to remove.
        removed: the rows the live tables lost.
        data_key_destroyed: the child had a data key, and it is gone.
        plain_events: the child's applied events and dead letters that were published in
            plain text: their ``data`` stays readable in the log. A lower bound: events of the
            child not yet processed at the erasure are not known here (they are skipped, and
            counted as such, when they are read).
    """

    user_ref: str
    erased_at: datetime
    already_erased: bool
    removed: RemovedRows
    data_key_destroyed: bool

    @property
    def plain_events(self) -> int:
        """Events of the child whose ``data`` stays readable in the log (see the class doc)."""
        return self.removed.plain_events


def erase_rows(cur: psycopg.Cursor, user_id: str, schema: str | None = None) -> RemovedRows:
    """Delete the child's rows from one schema's tables and fix its counters.

    Args:
        cur: a cursor inside the caller's transaction.
        user_id: the child.
        schema: a schema holding the projection tables (None: the connection's default).
    """

    def delete(name: str, returning: str = "") -> psycopg.Cursor:
        target = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        statement = sql.SQL("DELETE FROM {} WHERE user_id = %s").format(target)
        if returning:
            statement += sql.SQL(" RETURNING " + returning)
        return cur.execute(statement, (user_id,))

    friendships = delete("friendships").rowcount
    topics = delete("topic_metrics").rowcount
    applied = delete("applied_events", "partition, encrypted").fetchall()
    dead = delete("dead_letters", "partition, raw").fetchall()
    redacted = _redact_routing_key(cur, user_id, schema)
    applied_by: Counter[int] = Counter(int(p) for p, _ in applied)
    dead_by: Counter[int] = Counter(int(p) for p, _ in dead)
    partitions = applied_by.keys() | dead_by.keys()
    checkpoint.subtract_counts(cur, {p: (applied_by[p], dead_by[p]) for p in partitions}, schema)
    return RemovedRows(
        friendships=friendships,
        topic_rows=topics,
        applied_events=len(applied),
        plain_events=sum(1 for _, encrypted in applied if not encrypted)
        + sum(1 for _, raw in dead if envelope_of(bytes(raw)) is None),
        dead_letters=len(dead),
        redacted_dead_letters=redacted,
    )


def _redact_routing_key(cur: psycopg.Cursor, routing_key: str, schema: str | None) -> int:
    """Take ``routing_key`` (an erased child's id) out of the dead letters of events published
    with it as their routing key; returns how many there were. A replay schema made before
    migration 0007 has no ``routing_key`` column: its reasons are left as they are (the schema
    is a snapshot a later swap or ``DROP SCHEMA`` removes)."""
    if schema is not None and not _has_column(cur, schema, "dead_letters", "routing_key"):
        return 0
    table = sql.Identifier(schema, "dead_letters") if schema else sql.Identifier("dead_letters")
    rows = cur.execute(
        sql.SQL("SELECT id, user_id FROM {} WHERE routing_key = %s").format(table),
        (routing_key,),
    ).fetchall()
    if rows:
        cur.executemany(
            sql.SQL("UPDATE {} SET routing_key = NULL, reason = %s WHERE id = %s").format(table),
            [(erased_key_reason(str(user or "")), row_id) for row_id, user in rows],
        )
    return len(rows)


def _has_column(cur: psycopg.Cursor, schema: str, table: str, column: str) -> bool:
    row = cur.execute(
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (schema, table, column),
    ).fetchone()
    return row is not None


def replay_schemas_with_tables(cur: psycopg.Cursor) -> list[str]:
    """Schemas of replay runs (``replay_...``) that hold a ``friendships`` table."""
    rows = cur.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = 'friendships' AND starts_with(n.nspname, %s) ORDER BY 1",
        (REPLAY_SCHEMA_PREFIX,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def erase_user(conn: psycopg.Connection, user_id: str, keys: Keys) -> ErasureReport:
    """Erase a child (see the module doc), in one transaction on ``conn`` (autocommit).

    Returns:
        The report; erasing an erased child again removes nothing and says so.

    Raises:
        KeyMissing: this process's hash key or KEK is not the deployment's (an erasure recorded
            under another hash key would never be found); nothing was erased.
        psycopg.Error: the database failed; nothing was erased.
    """
    digest = keys.user_digest(user_id)
    with conn.transaction(), conn.cursor() as cur:
        check_key_ids(conn, keys)
        checkpoint.lock_all(cur)
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (CHILD_CLASS, child_lock_key(digest)))
        before = cur.execute(
            "SELECT erased_at FROM erasures WHERE user_digest = %s", (digest,)
        ).fetchone()
        cur.execute(_KEEP_EVENT_IDS_USED, (user_id,))
        removed = erase_rows(cur, user_id)
        for schema in replay_schemas_with_tables(cur):
            _erase_replay_schema(conn, cur, user_id, schema)
        destroyed = destroy_data_key(cur, user_id)
        checkpoint.announce(cur, "erasure")  # waits for the child's events end (at COMMIT)
        row = cur.execute(
            """
            INSERT INTO erasures (user_digest, friendships, topic_rows, applied_events,
                                  plain_events, dead_letters, data_key_destroyed)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (user_digest) DO UPDATE SET user_digest = excluded.user_digest
            RETURNING erased_at
            """,
            (
                digest,
                removed.friendships,
                removed.topic_rows,
                removed.applied_events,
                removed.plain_events,
                removed.dead_letters,
                destroyed,
            ),
        ).fetchone()
    assert row is not None
    return ErasureReport(
        user_ref=keys.user_ref(user_id),
        erased_at=row[0],
        already_erased=before is not None,
        removed=removed,
        data_key_destroyed=destroyed,
    )


def _erase_replay_schema(
    conn: psycopg.Connection, cur: psycopg.Cursor, user_id: str, schema: str
) -> None:
    """``erase_rows`` in one replay schema, which a replay may drop meanwhile.

    A schema this role may not use is one whose replay is still creating it: its grants
    (``replay.shadow.copy_grants``) come before any row, and the replay's final step erases the
    children erased meanwhile (``purge_erased``). A schema dropped while we waited for its lock
    had nothing left to erase.
    """
    usable = cur.execute("SELECT has_schema_privilege(%s, 'USAGE')", (schema,)).fetchone()
    if not (usable and usable[0]) and not schema.endswith(REPLACED_SUFFIX):
        return  # a swap's snapshot is made with its grants: there, the DELETE fails loudly
    try:
        with conn.transaction():
            erase_rows(cur, user_id, schema)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return


def purge_erased(cur: psycopg.Cursor, schema: str, keys: Keys) -> int:
    """Erase from ``schema`` (a replay's shadow) every child erased since it was built.

    A shadow's batches skip erased children, but one that committed before an erasure keeps
    the child; the final step of a replay calls this inside its transaction, so what it
    compares or swaps in has none of them.

    Returns:
        The number of erased children found in the shadow.
    """
    users = _users_of(cur, schema)
    digests = {user: keys.user_digest(user) for user in users}
    if not digests:
        return 0
    found = {
        bytes(r[0])
        for r in cur.execute(
            "SELECT user_digest FROM erasures WHERE user_digest = ANY(%s::bytea[])",
            (list(digests.values()),),
        )
    }
    erased = [user for user, digest in digests.items() if digest in found]
    for user in erased:
        erase_rows(cur, user, schema)
    return len(erased)


def _users_of(cur: psycopg.Cursor, schema: str) -> Iterable[str]:
    """Every child ``schema`` names: by its rows, and as a dead letter's routing key."""
    query = sql.SQL(
        "SELECT user_id FROM {f} UNION SELECT user_id FROM {a} "
        "UNION SELECT user_id FROM {d} WHERE user_id IS NOT NULL "
        "UNION SELECT routing_key FROM {d} WHERE routing_key IS NOT NULL"
    ).format(
        f=sql.Identifier(schema, "friendships"),
        a=sql.Identifier(schema, "applied_events"),
        d=sql.Identifier(schema, "dead_letters"),
    )
    return [str(r[0]) for r in cur.execute(query).fetchall()]
