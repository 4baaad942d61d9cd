"""Write tokens and the question a waiting read asks: which of these events are done?

A row of ``write_tokens`` keeps the event ids of one ingest request (and each event's child as
the keyed hash ``erasures`` uses), so the token the client holds stays small whatever the
request's size. An event is **done** for a waiting read when it is applied (``applied_events``),
dead-lettered (``dead_letters``, by the id as written or in lower case), or its child was
erased (its id in ``erased_event_ids``, or its child's hash in ``erasures``: an erased child's
events are skipped, never applied). Every function takes a psycopg connection; none commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import psycopg

_STORE: Final = """
INSERT INTO write_tokens (id, event_ids, user_digests, expires_at)
VALUES (%s, %b::text[], %b::bytea[], now() + make_interval(secs => %s))
"""
_LOAD: Final = """
SELECT event_ids, user_digests FROM write_tokens WHERE id = %s AND expires_at > now()
"""
_DONE: Final = """
SELECT w.event_id FROM unnest(%b::text[], %b::bytea[]) AS w(event_id, digest)
WHERE EXISTS (SELECT 1 FROM applied_events a WHERE a.event_id = w.event_id::uuid)
   OR EXISTS (SELECT 1 FROM erased_event_ids x WHERE x.event_id = w.event_id::uuid)
   OR EXISTS (SELECT 1 FROM dead_letters d
              WHERE d.event_id = ANY (ARRAY[w.event_id, lower(w.event_id)]))
   OR EXISTS (SELECT 1 FROM erasures r WHERE r.user_digest = w.digest)
   OR EXISTS (SELECT 1 FROM erasures r WHERE r.user_digest = %b::bytea)
"""
#: ``SET LOCAL statement_timeout`` with a parameter (milliseconds, as text).
_SET_LOCAL_TIMEOUT: Final = "SELECT set_config('statement_timeout', %s, true)"
_DELETE_EXPIRED: Final = """
DELETE FROM write_tokens WHERE id IN (
  SELECT id FROM write_tokens WHERE expires_at <= now() ORDER BY expires_at LIMIT %s
)
"""


@dataclass(frozen=True)
class WantedEvents:
    """The events a read waits for.

    Attributes:
        event_ids: the ids (UUIDs as text, each once).
        user_digests: for each id, the keyed hash of its child's id (``Keys.user_digest``), or
            None when unknown; a wait for an event whose child was erased ends.
    """

    event_ids: tuple[str, ...]
    user_digests: tuple[bytes | None, ...]


def store_token(
    conn: psycopg.Connection,
    token_id: uuid.UUID,
    event_ids: Sequence[str],
    user_digests: Sequence[bytes],
    ttl_s: float,
) -> None:
    """Insert the row of a write token that expires ``ttl_s`` seconds from now (database
    time).

    Raises:
        psycopg.Error: the database refused or failed.
    """
    conn.execute(_STORE, (token_id, list(event_ids), list(user_digests), ttl_s))


def bound_statements(conn: psycopg.Connection, timeout_ms: int | None) -> None:
    """Bound every later statement of the current transaction to ``timeout_ms`` milliseconds
    (``SET LOCAL statement_timeout``; ends with the transaction); nothing when None.

    Raises:
        ValueError: ``timeout_ms`` is below 1 (0 would mean no bound at all).
    """
    if timeout_ms is None:
        return
    if timeout_ms < 1:
        raise ValueError(f"a statement timeout is at least 1 ms, not {timeout_ms}")
    conn.execute(_SET_LOCAL_TIMEOUT, (str(timeout_ms),))


def load_token(
    conn: psycopg.Connection, token_id: uuid.UUID, timeout_ms: int | None = None
) -> WantedEvents | None:
    """The events of a write token, or None when no such token exists or it expired.

    Args:
        conn: a connection in a transaction the caller ends.
        token_id: the token's row id.
        timeout_ms: bound of the statement in milliseconds (``bound_statements``; None: the
            session's own).

    Raises:
        psycopg.errors.QueryCanceled: the statement ran past ``timeout_ms``.
    """
    bound_statements(conn, timeout_ms)
    row = conn.execute(_LOAD, (token_id,)).fetchone()
    if row is None:
        return None
    ids, digests = row
    return WantedEvents(tuple(str(i) for i in ids), tuple(bytes(d) for d in digests))


def done_events(
    conn: psycopg.Connection,
    wanted: WantedEvents,
    reader_digest: bytes | None = None,
    timeout_ms: int | None = None,
) -> set[str]:
    """The ids of ``wanted`` that are done (applied, dead-lettered, or of an erased child);
    all of them when ``reader_digest`` (the read's own child) was erased: that read answers
    404 whatever it waits for.

    ``timeout_ms`` bounds the query in milliseconds (``bound_statements``; None: the
    session's own bound).

    Raises:
        psycopg.errors.QueryCanceled: the query ran past ``timeout_ms``.
    """
    if not wanted.event_ids:
        return set()
    bound_statements(conn, timeout_ms)
    rows = conn.execute(
        _DONE, (list(wanted.event_ids), list(wanted.user_digests), reader_digest)
    ).fetchall()
    return {str(row[0]) for row in rows}


def delete_expired(conn: psycopg.Connection, limit: int) -> int:
    """Delete up to ``limit`` expired write tokens, the oldest first; returns how many."""
    cur = conn.execute(_DELETE_EXPIRED, (limit,))
    return cur.rowcount
