"""Partition leases: PostgreSQL session-level advisory locks held on the owner's connection.

A lease is ``pg_try_advisory_lock(LEASE_LOCK_CLASS, partition)`` in the processor's database.
It lives exactly as long as the owner's connection: a process that dies, or whose connection is
terminated, loses its leases at once, and another process can take them. The lease is what says
who owns a partition; the checkpoint compare-and-set is what stops a late commit of an owner
that lost it (see ``projections.batch``). Source: DESIGN.md, "Ownership across processes".
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Final

import psycopg

from processor.membership import OWNER_APPLICATION_PREFIX

#: First key of the two-key advisory lock; the second key is the partition number.
LEASE_LOCK_CLASS: Final = 0x7061  # "pa"


def member_id() -> str:
    """This process's name as an owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def try_acquire_lease(conn: psycopg.Connection, partition: int) -> bool:
    """Try to take the partition's lease on ``conn`` without waiting; True when taken."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (LEASE_LOCK_CLASS, partition)
    ).fetchone()
    return bool(row and row[0])


def release_lease(conn: psycopg.Connection, partition: int) -> None:
    """Give the partition's lease back (closing the connection does the same)."""
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LEASE_LOCK_CLASS, partition))


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a partition lease now: the holder's application name and backend pid."""

    partition: int
    owner: str
    backend_pid: int


def current_lease_holders(conn: psycopg.Connection) -> dict[int, LeaseHolder]:
    """The live lease of every partition that has one, read from ``pg_locks``.

    The owner is the member the holding session registered as (``member_backends``, keyed by
    backend pid and start time); a session that did not register (a processor from before that
    table) is known by its ``application_name`` (``friendship-stream owner host:pid``).
    """
    rows = conn.execute(
        """
        SELECT l.objid::int, b.member_id, a.application_name, a.pid
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        LEFT JOIN member_backends b
          ON b.backend_pid = a.pid AND b.backend_start = a.backend_start
        WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        (LEASE_LOCK_CLASS,),
    ).fetchall()
    holders: dict[int, LeaseHolder] = {}
    for partition, member, application_name, pid in rows:
        owner = member or str(application_name).removeprefix(OWNER_APPLICATION_PREFIX)
        holders[int(partition)] = LeaseHolder(int(partition), owner, int(pid))
    return holders
