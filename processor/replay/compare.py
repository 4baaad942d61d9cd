"""Compare the rebuilt projections with live, row by row, in SQL.

One ``FULL OUTER JOIN`` per table on its key: friendships by user, topic metrics by (user, topic),
dead letters by (partition, offset), applied event ids by id, and the checkpoints' offsets and
per-partition counters by partition. A row differs when it exists
on one side only or when any compared column ``IS DISTINCT FROM`` the other side's. Wall-clock
columns (``dead_lettered_at``, ``checkpoints.updated_at``), the dead-letter ``id`` and the
ownership columns (``owner``, ``lease_epoch``) are not compared: they say when and by whom live
processing ran, not what the log holds.

The caller runs ``compare_projections`` where both sides are at the same checkpoints (see
``processor.replay.run``); the comparison reads each table once and returns at most ``sample``
differing rows per table plus the total count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from projections.tables import SENTIMENT_COLUMNS


@dataclass(frozen=True)
class TableSpec:
    """A compared table: its key columns, the compared value columns, and the column naming
    the user (for the per-user report; None when the table has none)."""

    name: str
    key: tuple[str, ...]
    values: tuple[str, ...]
    user_column: str | None


TABLES: Final = (
    TableSpec("friendships", ("user_id",), ("score", "events_applied", "last_event_at"), "user_id"),
    TableSpec(
        "topic_metrics",
        ("user_id", "topic"),
        ("conversations", "turns", "duration_s", *SENTIMENT_COLUMNS, "last_discussed_at"),
        "user_id",
    ),
    TableSpec(
        "applied_events",
        ("event_id",),
        ("partition", "log_offset", "user_id", "type", "occurred_at"),
        "user_id",
    ),
    TableSpec(
        "dead_letters", ("partition", "log_offset"), ("event_id", "field", "reason", "raw"), None
    ),
    TableSpec(
        "checkpoints",
        ("partition",),
        ("committed_offset", "applied_count", "dead_lettered_count"),
        None,
    ),
)


@dataclass(frozen=True)
class RowDiff:
    """One differing row: its key and both sides' values (None: the row is missing there)."""

    table: str
    key: tuple[Any, ...]
    user_id: str | None
    live: dict[str, Any] | None
    replay: dict[str, Any] | None

    def differing_columns(self) -> list[str]:
        """Columns whose values differ (every column when one side is missing)."""
        if self.live is None or self.replay is None:
            return list((self.live or self.replay or {}).keys())
        return [c for c in self.live if self.live[c] != self.replay.get(c)]


@dataclass(frozen=True)
class TableComparison:
    """One table: rows on each side, how many rows differ, and the first differing rows."""

    spec: TableSpec
    live_rows: int
    replay_rows: int
    differing: int
    samples: tuple[RowDiff, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Comparison:
    """The whole comparison, table by table, at the checkpoints both sides reached."""

    tables: tuple[TableComparison, ...]
    checkpoints: dict[int, int]

    @property
    def identical(self) -> bool:
        """True when no row differs in any table."""
        return all(t.differing == 0 for t in self.tables)

    def differing_users(self, limit: int) -> list[str]:
        """The first ``limit`` users (sorted) with a differing row in any per-user table."""
        users = {d.user_id for t in self.tables for d in t.samples if d.user_id is not None}
        return sorted(users)[:limit]


def _count(conn: psycopg.Connection, schema: str, table: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _compare_table(
    conn: psycopg.Connection, spec: TableSpec, live: str, shadow: str, sample: int
) -> TableComparison:
    def cols(alias: str, names: Sequence[str]) -> sql.Composed:
        return sql.SQL(", ").join(sql.Identifier(alias, n) for n in names)

    join_on = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier("l", k), sql.Identifier("s", k)) for k in spec.key
    )
    keys = sql.SQL(", ").join(
        sql.SQL("coalesce({}, {})").format(sql.Identifier("l", k), sql.Identifier("s", k))
        for k in spec.key
    )
    first_key = spec.key[0]
    query = sql.SQL(
        "SELECT count(*) OVER (), {keys}, {l_key} IS NOT NULL, {s_key} IS NOT NULL, "
        "{l_values}, {s_values} "
        "FROM {live} l FULL OUTER JOIN {shadow} s ON {join_on} "
        "WHERE {l_key} IS NULL OR {s_key} IS NULL OR ({l_values}) IS DISTINCT FROM ({s_values}) "
        "ORDER BY {keys} LIMIT {sample}"
    ).format(
        keys=keys,
        l_key=sql.Identifier("l", first_key),
        s_key=sql.Identifier("s", first_key),
        l_values=cols("l", spec.values),
        s_values=cols("s", spec.values),
        live=sql.Identifier(live, spec.name),
        shadow=sql.Identifier(shadow, spec.name),
        join_on=join_on,
        sample=sql.Literal(sample),
    )
    rows = conn.execute(query).fetchall()
    width = len(spec.values)
    samples = []
    for row in rows:
        key = tuple(row[1 : 1 + len(spec.key)])
        in_live, in_replay = row[1 + len(spec.key)], row[2 + len(spec.key)]
        values_at = 3 + len(spec.key)
        live_values = dict(zip(spec.values, row[values_at : values_at + width], strict=True))
        replay_values = dict(zip(spec.values, row[values_at + width :], strict=True))
        user: str | None = None
        if spec.user_column is not None:
            source = live_values if in_live else replay_values
            user = str(key[0]) if spec.user_column in spec.key else str(source[spec.user_column])
        samples.append(
            RowDiff(
                spec.name,
                key,
                user,
                live_values if in_live else None,
                replay_values if in_replay else None,
            )
        )
    return TableComparison(
        spec,
        live_rows=_count(conn, live, spec.name),
        replay_rows=_count(conn, shadow, spec.name),
        differing=int(rows[0][0]) if rows else 0,
        samples=tuple(samples),
    )


def compare_projections(
    conn: psycopg.Connection,
    live: str,
    shadow: str,
    checkpoints: dict[int, int],
    *,
    sample: int = 50,
) -> Comparison:
    """Compare every projection table of ``live`` and ``shadow`` (schema names).

    Args:
        conn: a connection whose snapshot holds both sides at ``checkpoints`` (the caller's
            repeatable-read transaction).
        live, shadow: the two schemas.
        checkpoints: the offsets both sides reached (reported, not checked here).
        sample: most differing rows kept per table.
    """
    return Comparison(
        tuple(_compare_table(conn, spec, live, shadow, sample) for spec in TABLES),
        dict(checkpoints),
    )
