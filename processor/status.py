"""Per-partition status: checkpoint, log tail, consumer lag and current owner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg

from processor import tuning
from processor.applying.checkpoint import read_checkpoints
from processor.errors import LagNotZero
from processor.ownership.leases import LeaseHolder, current_lease_holders
from processor.reading.probes import read_tail_offsets
from processor.settings import Settings


@dataclass(frozen=True)
class PartitionStatus:
    """One partition: committed offset, last offset in the log, lag (events) and owner.

    ``checkpoint`` and ``tail`` are stream offsets (-1 = none); ``lag = tail - checkpoint``;
    ``owner`` is the lease holder's ``host:pid``, or None when no process owns it.
    """

    partition: int
    checkpoint: int
    tail: int
    lag: int
    owner: str | None


async def read_partition_status(
    settings: Settings, conn: psycopg.Connection
) -> list[PartitionStatus]:
    """The status of partitions 0..PARTITIONS-1, in order (reads the database and the broker:
    a probe of its own, for one-off callers such as ``just status``; the API uses a
    ``TailCache`` instead)."""
    checkpoints = read_checkpoints(conn)
    holders = current_lease_holders(conn)
    tails = await read_tail_offsets(settings)
    return combine_status(settings.partitions, checkpoints, holders, tails)


def read_partition_rows(conn: psycopg.Connection) -> tuple[dict[int, int], dict[int, LeaseHolder]]:
    """``({partition: checkpoint}, {partition: lease holder})`` from the database (two small
    queries: the checkpoint rows and ``pg_locks``)."""
    return read_checkpoints(conn), current_lease_holders(conn)


def combine_status(
    partitions: int,
    checkpoints: Mapping[int, int],
    holders: Mapping[int, LeaseHolder],
    tails: Mapping[int, int],
) -> list[PartitionStatus]:
    """The status of partitions 0..``partitions``-1, in order, from checkpoints, lease holders
    and stream tails (offsets; a missing one counts as -1: none)."""
    statuses = []
    for partition in range(partitions):
        checkpoint = checkpoints.get(partition, -1)
        tail = tails.get(partition, -1)
        holder = holders.get(partition)
        statuses.append(
            PartitionStatus(
                partition=partition,
                checkpoint=checkpoint,
                tail=tail,
                lag=max(0, tail - checkpoint),
                owner=holder.owner if holder else None,
            )
        )
    return statuses


def wait_for_zero_lag(
    settings: Settings,
    conn: psycopg.Connection,
    timeout_s: float,
    poll_s: float = tuning.LAG_POLL_S,
) -> list[PartitionStatus]:
    """Poll until every partition's checkpoint reached its log tail.

    Returns:
        The final statuses.

    Raises:
        LagNotZero: lag is still above zero after ``timeout_s`` seconds (names the partitions).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = asyncio.run(read_partition_status(settings, conn))
        lagging = [s for s in statuses if s.lag > 0]
        if not lagging:
            return statuses
        if time.monotonic() >= deadline:
            detail = ", ".join(f"p{s.partition}: lag {s.lag}" for s in lagging[:8])
            raise LagNotZero(f"consumer lag still above zero after {timeout_s:.0f} s ({detail})")
        time.sleep(poll_s)
