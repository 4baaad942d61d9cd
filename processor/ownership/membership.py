"""Processor membership: who shares the partitions, their heartbeats, and fencing stale members.

A member is a processor process. It joins by taking a session advisory lock keyed by its member
id on its control connection and upserting a ``members`` row; it heartbeats by updating that
row (database time, so machines' clocks do not matter). A member is:

- *live* while its lock is held and its heartbeat is younger than the member timeout;
- *gone* when its lock is not held (its process or connection died): its row is removed and its
  leases are already free, because they lived on its connections;
- *stale* when its lock is still held but its heartbeat is old: the process is paused, or cut off
  from the database while its connections linger. Any live member then fences it by terminating
  its backends (``pg_terminate_backend``), which frees its leases and aborts any transaction it
  had open; if it wakes up, it finds its connections gone and commits nothing. The lease epoch
  in the checkpoint row is a second fence (``processor.applying.batch``).

``pg_terminate_backend`` may end the sessions of the caller's own role (PostgreSQL 15,
"Server Signaling Functions"): every processor of a deployment runs as the same database user,
so it needs neither superuser nor ``pg_signal_backend``, which would let it end any session of
the server.
"""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass
from typing import Final

import psycopg

from processor.ownership.errors import MemberIdInUse
from projections.advisory_locks import MEMBER_CLASS

#: ``application_name`` prefixes of a member's control connection and of its lease
#: connections: what an operator sees in ``pg_stat_activity``. Display only: PostgreSQL cuts
#: the name at 63 bytes, so members and lease holders are found through ``member_backends``.
MEMBER_APPLICATION_PREFIX: Final = "friendship-stream member "
OWNER_APPLICATION_PREFIX: Final = "friendship-stream owner "


def member_id() -> str:
    """This process's member id: ``host:pid`` (any length: a Kubernetes pod name is up to 63
    characters, and nothing here depends on ``application_name``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def register_backend(conn: psycopg.Connection, member_id: str) -> None:
    """Record that the session of ``conn`` belongs to ``member_id``.

    Called on every processor connection right after it opens. Rows of sessions that have
    ended are removed on the way (a backend pid is reused by later sessions).
    """
    conn.execute(
        """
        WITH gone AS (
          DELETE FROM member_backends b WHERE NOT EXISTS (
            SELECT 1 FROM pg_stat_activity a
            WHERE a.pid = b.backend_pid AND a.backend_start = b.backend_start))
        INSERT INTO member_backends (backend_pid, backend_start, member_id)
        SELECT pid, backend_start, %s FROM pg_stat_activity WHERE pid = pg_backend_pid()
        ON CONFLICT (backend_pid, backend_start) DO UPDATE SET member_id = excluded.member_id
        """,
        (member_id,),
    )


def member_lock_key(member_id: str) -> int:
    """The second advisory-lock key of a member: CRC-32 of its id, in the positive int4 range."""
    return zlib.crc32(member_id.encode()) & 0x7FFF_FFFF


@dataclass(frozen=True)
class MembershipView:
    """Members as seen from the database now: ``live`` (sorted) and ``stale`` member ids."""

    live: tuple[str, ...]
    stale: tuple[str, ...]


def join(conn: psycopg.Connection, member_id: str) -> None:
    """Register ``member_id`` on its control connection ``conn`` (lock, then upsert its row).

    Raises:
        MemberIdInUse: another live connection already holds this member id's lock.
    """
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (MEMBER_CLASS, member_lock_key(member_id))
    ).fetchone()
    if not (row and row[0]):
        raise MemberIdInUse(f"member id {member_id!r} is already in use by a live process")
    conn.execute(
        "INSERT INTO members (member_id, started_at, heartbeat_at) VALUES (%s, now(), now()) "
        "ON CONFLICT (member_id) DO UPDATE SET started_at = now(), heartbeat_at = now()",
        (member_id,),
    )


def heartbeat(conn: psycopg.Connection, member_id: str) -> None:
    """Record that ``member_id`` is alive (its row's ``heartbeat_at`` := database ``now()``)."""
    conn.execute(
        "INSERT INTO members (member_id, started_at, heartbeat_at) VALUES (%s, now(), now()) "
        "ON CONFLICT (member_id) DO UPDATE SET heartbeat_at = now()",
        (member_id,),
    )


def leave(conn: psycopg.Connection, member_id: str) -> None:
    """Deregister ``member_id`` so the others rebalance at once (graceful shutdown)."""
    conn.execute("DELETE FROM members WHERE member_id = %s", (member_id,))
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (MEMBER_CLASS, member_lock_key(member_id)))


def read_membership(conn: psycopg.Connection, timeout_s: float) -> MembershipView:
    """Classify the registered members and forget the gone ones.

    Args:
        conn: any connection to the processor's database.
        timeout_s: heartbeat age, in seconds, beyond which a member with a held lock is stale.
    """
    ids = [str(r[0]) for r in conn.execute("SELECT member_id FROM members").fetchall()]
    rows = conn.execute(
        """
        SELECT k.member_id,
               now() - m.heartbeat_at > make_interval(secs => %s) AS stale,
               EXISTS (
                   SELECT 1 FROM pg_locks l
                   WHERE l.locktype = 'advisory' AND l.granted
                     AND l.classid = %s AND l.objsubid = 2 AND l.objid = k.lock_key::oid
                     AND l.database = (SELECT oid FROM pg_database
                                       WHERE datname = current_database())
               ) AS locked
        FROM unnest(%s::text[], %s::bigint[]) AS k(member_id, lock_key)
        JOIN members m ON m.member_id = k.member_id
        """,
        (timeout_s, MEMBER_CLASS, ids, [member_lock_key(member) for member in ids]),
    ).fetchall()
    live = sorted(member for member, stale, locked in rows if locked and not stale)
    stale_members = sorted(member for member, stale, locked in rows if locked and stale)
    gone = [member for member, _stale, locked in rows if not locked]
    if gone:
        conn.execute("DELETE FROM members WHERE member_id = ANY(%s)", (gone,))
    return MembershipView(live=tuple(live), stale=tuple(stale_members))


def fence(conn: psycopg.Connection, member_id: str) -> int:
    """Terminate every backend of a stale member (its leases and open transactions end).

    Its backends are the sessions it registered in ``member_backends`` (``register_backend``),
    matched by backend pid and start time.

    Returns:
        The number of backends terminated.
    """
    rows = conn.execute(
        """
        SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
        JOIN member_backends b ON b.backend_pid = a.pid AND b.backend_start = a.backend_start
        WHERE b.member_id = %s AND a.datname = current_database() AND a.pid <> pg_backend_pid()
        """,
        (member_id,),
    ).fetchall()
    conn.execute("DELETE FROM member_backends WHERE member_id = %s", (member_id,))
    conn.execute("DELETE FROM members WHERE member_id = %s", (member_id,))
    return sum(1 for (terminated,) in rows if terminated)
