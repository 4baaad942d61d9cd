"""Partition leases: PostgreSQL session-level advisory locks held on the owner's connection.

A lease is ``pg_try_advisory_lock(LEASE_CLASS, partition)`` in the processor's database.
It lives exactly as long as the owner's connection: a process that dies, or whose connection is
terminated, loses its leases at once, and another process can take them. The lease is what says
who owns a partition; the checkpoint compare-and-set is what stops a late commit of an owner
that lost it (see ``processor.applying.batch``). Source: README "Many processes, on one machine or
many".
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from projections.advisory_locks import LEASE_CLASS


def try_acquire_lease(conn: psycopg.Connection, partition: int) -> bool:
    """Try to take the partition's lease on ``conn`` without waiting; True when taken."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LEASE_CLASS, partition)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a partition lease now: the holder's member id and backend pid."""

    partition: int
    owner: str
    backend_pid: int


def current_lease_holders(conn: psycopg.Connection) -> dict[int, LeaseHolder]:
    """The live lease of every partition that has one, read from ``pg_locks``.

    The owner is the member the holding session registered as (``member_backends``, keyed by
    what the database knows for sure: backend pid and start time, never ``application_name``,
    which PostgreSQL cuts at 63 bytes). A session that holds a lease without having registered
    (not one of ours) is named by its backend pid.
    """
    rows = conn.execute(
        """
        SELECT l.objid::int, b.member_id, a.pid
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        LEFT JOIN member_backends b
          ON b.backend_pid = a.pid AND b.backend_start = a.backend_start
        WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        (LEASE_CLASS,),
    ).fetchall()
    holders: dict[int, LeaseHolder] = {}
    for partition, member, pid in rows:
        owner = member or f"unregistered session (backend pid {pid})"
        holders[int(partition)] = LeaseHolder(int(partition), owner, int(pid))
    return holders
