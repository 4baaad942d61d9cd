"""The checkpoint: how far each partition's log has been applied, and who may move it.

One row per partition (``checkpoints``): the committed offset (-1 = nothing yet), the owner, the
lease epoch (the fencing token), counters of applied and dead-lettered events, and the fold
version whose results the projections hold (a second fence: a batch of another version stops).
It is the tracking record of README "How it works": it moves in the same transaction as the
projection rows it covers, so a crash anywhere replays at most the uncommitted batch.

The life cycle of one batch, inside its transaction:

1. ``lock`` the row (``SELECT ... FOR UPDATE``) and check it still holds the offset and the
   lease epoch the owner resumed with (fencing: a zombie owner stops here), and the fold
   version the batch folds with (a writer of the old rule stops once a new one is live);
2. the batch reads and locks its projection rows and folds them;
3. ``advance`` the row by compare-and-set on the old offset and epoch, in one statement with
   the batch's writes (rows, dead letters), append the commit to ``checkpoint_log`` (the
   audit of who committed which offsets) and announce it on ``PROGRESS_CHANNEL`` (``NOTIFY``,
   delivered at COMMIT: the API's read-your-writes waiters wake, ``processor.api.waiting``).
   A replay's shadow batches announce nothing.

This module is the one place whose SQL reads or writes checkpoint rows (live or a replay
shadow schema).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg import sql

from processor.applying.errors import (
    CheckpointConflict,
    CheckpointMissing,
    FoldVersionChanged,
    PartitionCountMismatch,
)
from processor.applying.store import CheckpointAdvance

if TYPE_CHECKING:
    from sqlalchemy import Connection

_LOCK: Final = (
    "SELECT committed_offset, lease_epoch, fold_version FROM checkpoints WHERE partition = %s "
    "FOR UPDATE"
)
#: The ``NOTIFY`` channel of committed progress: a live batch sends ``<partition>:<offset>``,
#: an erasure ``erasure``, a replay's swap ``swap``. PostgreSQL delivers a notification when
#: (and only if) its transaction commits.
PROGRESS_CHANNEL: Final = "friendship_progress"
# A live owner's advance is one statement: the compare-and-set, the commit's audit row and its
# announcement (one round trip per batch instead of two; nothing is logged when nothing moved).
# ``{along}`` holds the batch's own writes as data-modifying CTEs (``advance``'s ``along``).
_ADVANCE_AND_LOG: Final = """
WITH {along}moved AS (
  UPDATE checkpoints SET committed_offset = %s, owner = %s, updated_at = now(),
    applied_count = applied_count + %s, dead_lettered_count = dead_lettered_count + %s
  WHERE partition = %s AND committed_offset = %s AND lease_epoch = %s
  RETURNING partition, committed_offset
), logged AS (
  INSERT INTO checkpoint_log (partition, first_offset, last_offset, owner, lease_epoch, applied,
                              dead_lettered, committed_at)
  SELECT partition, %s, committed_offset, %s, %s, %s, %s, clock_timestamp()
  FROM moved
  RETURNING partition, last_offset
)
SELECT pg_notify(%s, partition || ':' || last_offset) FROM logged
"""
# A replay shadow's advance: the compare-and-set alone (with the batch's writes, as above).
_ADVANCE_SHADOW: Final = """
WITH {along}moved AS (
  UPDATE checkpoints SET committed_offset = %s, owner = %s, updated_at = now(),
    applied_count = applied_count + %s, dead_lettered_count = dead_lettered_count + %s
  WHERE partition = %s AND committed_offset = %s
  RETURNING partition
)
SELECT partition FROM moved
"""
#: A batch write that goes with the advance: ``(data-modifying SQL, its parameters)``, with
#: positional placeholders. The SQL is one of ``processor.applying.postgres``'s constants, never
#: text from input; ``advance`` names each ``write_<n>``.
AlongWrite = tuple[str, tuple[object, ...]]
_LOCK_MODES: Final = ("", "FOR SHARE", "FOR UPDATE")


def lock(
    cur: psycopg.Cursor,
    partition: int,
    expected: int,
    lease_epoch: int | None,
    fold_version: int | None = None,
) -> None:
    """Lock the partition's row for this transaction and fence a stale owner.

    Args:
        cur: a cursor inside the batch's transaction.
        partition: the partition.
        expected: the committed offset the owner resumed from (-1 = nothing yet).
        lease_epoch: the owner's fencing token; None (a replay shadow) checks none.
        fold_version: the version of the rule the batch folds with; None checks none.

    Raises:
        CheckpointConflict: the row holds another offset or a newer lease epoch.
        FoldVersionChanged: the projections are at another fold version now.
    """
    row = cur.execute(_LOCK, (partition,)).fetchone()
    if row is None or int(row[0]) != expected:
        raise CheckpointConflict(partition, expected, None if row is None else int(row[0]))
    found = int(row[0])
    if lease_epoch is not None and int(row[1]) != lease_epoch:
        raise CheckpointConflict(
            partition, expected, found, f" (lease epoch {row[1]}, this owner holds {lease_epoch})"
        )
    if fold_version is not None and int(row[2]) != fold_version:
        raise FoldVersionChanged(partition, expected, int(row[2]), fold_version)


def advance(
    cur: psycopg.Cursor, advance: CheckpointAdvance, along: Sequence[AlongWrite] = ()
) -> None:
    """Move the checkpoint from ``advance.expected`` to ``advance.last_offset``
    (compare-and-set) and, for a live owner (``lease_epoch`` given), append the commit to
    ``checkpoint_log`` and announce it on ``PROGRESS_CHANNEL`` (sent at COMMIT).

    Args:
        cur: a cursor inside the batch's transaction.
        advance: how the checkpoint moves.
        along: the batch's own writes, sent in the same statement as data-modifying CTEs (one
            round trip for the batch's writes and its checkpoint). PostgreSQL runs every
            data-modifying CTE to completion whether or not the statement reads it, all on one
            snapshot (PostgreSQL manual, "WITH Queries", 7.8.4); they write other tables than
            the checkpoint, whose rows the batch locked before.

    Raises:
        CheckpointConflict: the row no longer holds ``expected`` and the epoch (nothing moved).
        psycopg.Error: a write of ``along`` failed (a ``DataError`` for a value the database
            rejects, as the statement on its own would raise); the transaction is aborted.
    """
    prefix = "".join(
        f"write_{index} AS ({statement}), " for index, (statement, _) in enumerate(along)
    )
    params: list[object] = [value for _, values in along for value in values]
    common = (advance.last_offset, advance.owner, advance.applied, advance.dead_lettered)
    epoch = advance.lease_epoch
    if epoch is None:
        params += (*common, advance.partition, advance.expected)
        cur.execute(_ADVANCE_SHADOW.format(along=prefix), params)
    else:
        params += (*common, advance.partition, advance.expected, epoch)
        params += (advance.first_offset, advance.owner, epoch, advance.applied)
        params += (advance.dead_lettered, PROGRESS_CHANNEL)
        cur.execute(_ADVANCE_AND_LOG.format(along=prefix), params)
    if len(cur.fetchall()) != 1:
        raise CheckpointConflict(advance.partition, advance.expected, None)


def announce(cur: psycopg.Cursor, what: str) -> None:
    """Send ``what`` on ``PROGRESS_CHANNEL`` in the caller's transaction (delivered at COMMIT):
    a change that may end read-your-writes waits (an erasure, a replay's swap)."""
    cur.execute("SELECT pg_notify(%s, %s)", (PROGRESS_CHANNEL, what))


def begin_lease_epoch(conn: psycopg.Connection, partition: int, member: str) -> tuple[int, int]:
    """Start a new lease epoch for a partition whose lease ``conn`` holds.

    Raises the row's ``lease_epoch`` (the fencing token) and records the owner, so a previous
    owner's late commit fails its compare-and-set.

    Returns:
        ``(committed_offset, lease_epoch)`` of the partition.

    Raises:
        CheckpointMissing: the partition has no checkpoint row.
    """
    row = conn.execute(
        "UPDATE checkpoints SET lease_epoch = lease_epoch + 1, owner = %s, updated_at = now() "
        "WHERE partition = %s RETURNING committed_offset, lease_epoch",
        (member, partition),
    ).fetchone()
    if row is None:
        raise CheckpointMissing(f"partition {partition} has no checkpoint row")
    return int(row[0]), int(row[1])


def ensure_checkpoints(
    conn: psycopg.Connection,
    partitions: int,
    schema: str | None = None,
    fold_version: int = 1,
) -> None:
    """Create the rows 0..partitions-1 (offset -1) that do not exist yet.

    Args:
        conn: an autocommit connection.
        partitions: the deployment's partition count.
        schema: a replay shadow schema; None for the live tables.
        fold_version: the fold version of the rows made in an empty table (a new deployment
            starts at the code's current rule, a shadow at the rule it is built with); rows
            added beside others take theirs.

    Raises:
        PartitionCountMismatch: rows exist for partitions >= ``partitions``: the deployment was
            created with more partitions, and fewer would leave some unread.
    """
    table = _table(schema)
    row = conn.execute(sql.SQL("SELECT max(partition) FROM {}").format(table)).fetchone()
    if row is not None and row[0] is not None and int(row[0]) >= partitions:
        raise PartitionCountMismatch(
            f"the database has checkpoints for {int(row[0]) + 1} partitions but PARTITIONS="
            f"{partitions}; set PARTITIONS to the deployment's count"
        )
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} (partition, fold_version) "
                "SELECT generate_series(0, %s - 1), "
                "coalesce((SELECT max(fold_version) FROM {t}), %s) "
                "ON CONFLICT (partition) DO NOTHING"
            ).format(t=table),
            (partitions, fold_version),
        )


def fold_versions(conn: psycopg.Connection, schema: str | None = None) -> dict[int, int]:
    """``{partition: fold version}`` of every row (live, or a replay shadow)."""
    query = sql.SQL("SELECT partition, fold_version FROM {} ORDER BY partition").format(
        _table(schema)
    )
    return {int(p): int(v) for p, v in conn.execute(query).fetchall()}


def partition_fold_version(conn: psycopg.Connection, partition: int) -> int:
    """The fold version of one live partition's row.

    Raises:
        CheckpointMissing: the partition has no checkpoint row.
    """
    row = conn.execute(
        "SELECT fold_version FROM checkpoints WHERE partition = %s", (partition,)
    ).fetchone()
    if row is None:
        raise CheckpointMissing(f"partition {partition} has no checkpoint row")
    return int(row[0])


def set_fold_version(cur: psycopg.Cursor, schema: str, version: int) -> None:
    """Record ``version`` on every row of ``schema`` (a swap, holding the rows' locks)."""
    cur.execute(sql.SQL("UPDATE {} SET fold_version = %s").format(_table(schema)), (version,))


def read_checkpoints(
    conn: psycopg.Connection, schema: str | None = None, *, lock_mode: str = ""
) -> dict[int, int]:
    """``{partition: committed offset}`` of every row.

    Args:
        conn: a connection (inside the caller's transaction when ``lock_mode`` is used).
        schema: a schema to read (live or a replay shadow); None: the connection's default.
        lock_mode: ``""``, ``"FOR SHARE"`` or ``"FOR UPDATE"``; rows lock in partition order.

    Raises:
        ValueError: an unknown ``lock_mode``.
    """
    if lock_mode not in _LOCK_MODES:
        raise ValueError(f"unknown lock {lock_mode!r}")
    query = sql.SQL(
        "SELECT partition, committed_offset FROM {} ORDER BY partition " + lock_mode
    ).format(_table(schema))
    return {int(p): int(o) for p, o in conn.execute(query).fetchall()}


def consumed_records(conn: psycopg.Connection) -> int:
    """How far the checkpoints are into the logs: the sum over partitions of offset + 1.

    Offsets may have holes (segment header chunks), so this is an upper bound of the records
    consumed; a difference of two readings is what the demo reports.
    """
    row = conn.execute("SELECT coalesce(sum(committed_offset + 1), 0) FROM checkpoints").fetchone()
    return int(row[0]) if row else 0


def checkpoints_schema(conn: psycopg.Connection) -> str | None:
    """The schema where ``checkpoints`` resolves on ``conn`` (the live tables on a default
    connection), None when there is no such table (the database was never migrated)."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass('checkpoints')"
    ).fetchone()
    return None if row is None else str(row[0])


def read_totals(conn: Connection) -> tuple[int, int]:
    """``(events applied, dead letters)`` over every partition: the counters that advance with
    each checkpoint (a sum over the partitions, not a count over every event).

    Args:
        conn: a SQLAlchemy connection (the read API's pool).
    """
    # Here, not at the top: a processor process does not load SQLAlchemy for its batches.
    from sqlalchemy import func, select  # noqa: PLC0415

    from projections import tables  # noqa: PLC0415

    row = conn.execute(
        select(
            func.coalesce(func.sum(tables.checkpoints.c.applied_count), 0),
            func.coalesce(func.sum(tables.checkpoints.c.dead_lettered_count), 0),
        )
    ).one()
    return int(row[0]), int(row[1])


def lock_all(cur: psycopg.Cursor) -> None:
    """Lock every live checkpoint row, in partition order, for the caller's transaction.

    Each batch locks its partition's row first, so while these are held no batch commits, and
    every batch after the caller commits sees what it wrote (an erasure uses this).
    """
    cur.execute("SELECT partition FROM checkpoints ORDER BY partition FOR UPDATE")


def subtract_counts(
    cur: psycopg.Cursor, counts: Mapping[int, tuple[int, int]], schema: str | None = None
) -> None:
    """Take ``{partition: (applied, dead-lettered)}`` off the per-partition counters (what an
    erasure removed; a replay of the log skips the same records, so both stay equal)."""
    for partition, (applied, dead) in sorted(counts.items()):
        cur.execute(
            sql.SQL(
                "UPDATE {} SET applied_count = applied_count - %s, "
                "dead_lettered_count = dead_lettered_count - %s WHERE partition = %s"
            ).format(_table(schema)),
            (applied, dead, partition),
        )


def copy_checkpoints(cur: psycopg.Cursor, source: str, target: str) -> None:
    """Create ``target.checkpoints`` as a copy of ``source.checkpoints`` (a swap's snapshot)."""
    cur.execute(
        sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
            sql.Identifier(target, "checkpoints"), sql.Identifier(source, "checkpoints")
        )
    )


def take_counters(cur: psycopg.Cursor, live: str, shadow: str) -> None:
    """Give live's checkpoint rows the shadow's applied and dead-lettered counts.

    The counters describe the projection tables, so they follow them when a swap puts the
    shadow's tables in place. Offsets and lease epochs stay: the offsets are equal, and the
    owners' fencing tokens are live's business.
    """
    cur.execute(
        sql.SQL(
            "UPDATE {l} l SET applied_count = s.applied_count, "
            "dead_lettered_count = s.dead_lettered_count FROM {s} s "
            "WHERE s.partition = l.partition"
        ).format(l=sql.Identifier(live, "checkpoints"), s=sql.Identifier(shadow, "checkpoints"))
    )


def _table(schema: str | None) -> sql.Composable:
    return sql.Identifier(schema, "checkpoints") if schema else sql.Identifier("checkpoints")
