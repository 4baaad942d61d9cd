"""The shadow schema: create it, connect to it, check it matches live, swap it in, drop it.

A replay builds its projections in a schema of its own, ``replay_<id>``, holding the tables of
``projections.tables`` (created from that single description, so names of indexes, constraints
and the dead-letter id sequence equal the migrations') and its own checkpoint rows at -1. The
batch SQL uses unqualified table names, so a connection whose ``search_path`` is the shadow
schema applies batches there with the very code live processing uses.

Swapping moves tables between schemas inside the caller's transaction: the live tables go to a
new schema ``replay_<id>_replaced`` (a snapshot at the swap checkpoints, kept for inspection or
rollback), the shadow's tables take their place. ``ALTER TABLE ... SET SCHEMA`` moves indexes,
constraints and the owned sequence along, so no name collides. Readers wait on the table locks
and then see the new tables; nobody sees a half-built state. Cached plans (psycopg prepares
statements after a few executions) are invalidated by the move and re-analysed by name, so live
owners write the new tables from their next statement on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Final

import psycopg
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import create_engine

from processor.applying import checkpoint
from processor.applying.checkpoint import ensure_checkpoints
from processor.replay.errors import SchemaDrift
from projections.database import alembic_config, connect, sqlalchemy_url
from projections.tables import GLOBAL_TABLES, REPLACED_SUFFIX, REPLAY_SCHEMA_PREFIX, metadata

#: The projection tables a swap replaces (the checkpoints stay: their values are equal). A new
#: projection table joins this list and ``processor.replay.compare.TABLES``.
SWAPPED_TABLES: Final = ("friendships", "topic_metrics", "applied_events", "dead_letters")


def new_run_id() -> str:
    """A short random id naming one replay's schemas (8 hex digits; not from the clock)."""
    return uuid.uuid4().hex[:8]


def shadow_schema(run_id: str) -> str:
    """The shadow schema of a run: ``replay_<id>``."""
    return f"{REPLAY_SCHEMA_PREFIX}{run_id}"


def replaced_schema(run_id: str) -> str:
    """Where a swap puts the tables it replaced: ``replay_<id>_replaced``."""
    return f"{REPLAY_SCHEMA_PREFIX}{run_id}{REPLACED_SUFFIX}"


def live_schema(conn: psycopg.Connection) -> str:
    """The schema of the live tables: where ``checkpoints`` resolves on a default connection.

    Raises:
        SchemaDrift: there is no ``checkpoints`` table (the database was never migrated).
    """
    schema = checkpoint.checkpoints_schema(conn)
    if schema is None:
        raise SchemaDrift("no checkpoints table: run `just migrate` (or the processor) first")
    return schema


def ensure_migrated(conn: psycopg.Connection) -> None:
    """Refuse a live database that is not at the newest migration: the rebuild follows
    ``projections.tables`` (the newest revision), so an older live schema cannot be compared
    or swapped.

    Raises:
        SchemaDrift: the database's Alembic revision is not the head of ``projections``.
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    current = None if row is None else str(row[0])
    if current != head:
        raise SchemaDrift(
            f"the database is at migration {current}, this code expects {head}: run "
            "`just migrate` (or start a processor, which migrates) before replaying"
        )


def create_shadow(
    database_url: str, schema: str, partitions: int, live: str, fold_version: int = 1
) -> None:
    """Create ``schema`` with the tables of one build of the projections (every table of
    ``projections.tables`` but the deployment's ``GLOBAL_TABLES``) and checkpoint rows at -1
    that carry ``fold_version`` (the rule the shadow is built with).

    Raises:
        psycopg.errors.DuplicateSchema: the schema exists already.
    """
    with connect(database_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as sa_conn:
            translated = sa_conn.execution_options(schema_translate_map={None: schema})
            built = [t for t in metadata.sorted_tables if t.name not in GLOBAL_TABLES]
            metadata.create_all(translated, tables=built)
    finally:
        engine.dispose()
    with connect(database_url) as conn:
        ensure_checkpoints(conn, partitions, schema, fold_version)
        with conn.transaction(), conn.cursor() as cur:
            copy_grants(cur, live, schema)


def copy_grants(cur: psycopg.Cursor, source: str, target: str) -> None:
    """Give every role the privileges on ``target``'s tables it has on ``source``'s, and the
    use of ``target``: the least-privilege roles (``processor.access.principals``) reach a
    shadow or a swapped-in table as they reach live, and an erasure reaches replay schemas."""
    rows = cur.execute(
        """
        SELECT c.relname, pg_get_userbyid(a.grantee), string_agg(a.privilege_type, ', ')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
             aclexplode(c.relacl) a
        WHERE n.nspname = %s AND c.relkind = 'r' AND a.grantee <> c.relowner AND a.grantee <> 0
        GROUP BY 1, 2
        """,
        (source,),
    ).fetchall()
    grantees = set()
    for table, grantee, privileges in rows:
        exists = cur.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", (target, table)
        ).fetchone()
        if exists:
            cur.execute(
                sql.SQL("GRANT " + privileges + " ON {} TO {}").format(
                    sql.Identifier(target, table), sql.Identifier(grantee)
                )
            )
            grantees.add(grantee)
    for grantee in sorted(grantees):
        cur.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(target), sql.Identifier(grantee)
            )
        )
        cur.execute(
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                sql.Identifier(target), sql.Identifier(grantee)
            )
        )


def drop_schema(database_url: str, schema: str) -> None:
    """Drop a replay schema and everything in it (no error when it is gone already)."""
    if not schema.startswith(REPLAY_SCHEMA_PREFIX):
        raise ValueError(f"refusing to drop {schema!r}: not a replay schema")
    with connect(database_url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def replay_schemas(conn: psycopg.Connection) -> list[str]:
    """Every schema replay created and that still exists (shadows left by a killed run and the
    ``_replaced`` snapshots of past swaps)."""
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s ORDER BY nspname",
        (REPLAY_SCHEMA_PREFIX.replace("_", r"\_") + "%",),
    ).fetchall()
    return [str(r[0]) for r in rows]


def connect_shadow(
    database_url: str,
    schema: str,
    live: str,
    *,
    application_name: str = "friendship-stream replay",
) -> psycopg.Connection:
    """An autocommit connection whose unqualified table names resolve in ``schema``, then in
    ``live`` (the deployment's ``GLOBAL_TABLES``: erasures and data keys are live's).

    ``synchronous_commit`` is off: the shadow is disposable until the swap, and the swap's own
    commit is synchronous, which makes everything written before it durable too (WAL order).
    """
    conn = connect(database_url, application_name=application_name)
    path = sql.SQL(", ").join([sql.Identifier(schema), sql.Identifier(live)])
    conn.execute(sql.SQL("SET search_path TO {}").format(path))
    conn.execute("SET synchronous_commit TO off")
    return conn


def analyze(database_url: str, schema: str) -> None:
    """Refresh the planner statistics of the shadow's tables (a bulk load leaves none; live
    batches would otherwise be planned blind right after a swap)."""
    with connect(database_url) as conn:
        for table in SWAPPED_TABLES:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))


_SHAPE: Final = """
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || replace(pg_get_expr(d.adbin, d.adrelid), %(qualifier)s, ''), '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND a.attnum > 0
  AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || i.relname || ' ' || replace(pg_get_indexdef(i.oid), %(qualifier)s, '')
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s)
UNION ALL
SELECT 'constraint ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s)
UNION ALL
SELECT 'privileges ' || c.relname || ' '
       || coalesce((SELECT string_agg(item::text, ',' ORDER BY item::text)
                    FROM unnest(c.relacl) item), 'default')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s)
"""


def _shape(conn: psycopg.Connection, schema: str, tables: Iterable[str]) -> set[str]:
    rows = conn.execute(
        _SHAPE, {"schema": schema, "tables": list(tables), "qualifier": f"{schema}."}
    ).fetchall()
    return {str(r[0]) for r in rows}


def schema_differences(conn: psycopg.Connection, live: str, shadow: str) -> list[str]:
    """How the live tables differ from the shadow's (columns with types, nullability and
    defaults; indexes; constraints; privileges, in any order), as readable lines; empty when
    they match."""
    live_shape = _shape(conn, live, SWAPPED_TABLES)
    shadow_shape = _shape(conn, shadow, SWAPPED_TABLES)
    return [f"only live has {d}" for d in sorted(live_shape - shadow_shape)] + [
        f"only the rebuild has {d}" for d in sorted(shadow_shape - live_shape)
    ]


_SERIAL: Final = "pg_get_serial_sequence(quote_ident(%s) || '.dead_letters', 'id')"


def _carry_dead_letter_ids(cur: psycopg.Cursor, live: str, shadow: str) -> None:
    """Give the shadow's dead letters the ``id`` and ``dead_lettered_at`` of the same record
    (partition, offset) in live, and new ids after live's for the others, so the dead-letter
    list keeps its order and cursors across the swap."""
    live_t = sql.Identifier(live, "dead_letters")
    shadow_t = sql.Identifier(shadow, "dead_letters")
    cur.execute(sql.SQL("UPDATE {} SET id = -id").format(shadow_t))
    cur.execute(
        sql.SQL(
            "UPDATE {s} s SET id = l.id, dead_lettered_at = l.dead_lettered_at FROM {l} l "
            "WHERE s.partition = l.partition AND s.log_offset = l.log_offset"
        ).format(s=shadow_t, l=live_t)
    )
    row = cur.execute(
        sql.SQL(
            "SELECT greatest((SELECT coalesce(max(id), 0) FROM {l}), "
            f"coalesce(pg_sequence_last_value({_SERIAL}::regclass), 0))"
        ).format(l=live_t),
        (live,),
    ).fetchone()
    base = int(row[0]) if row is not None else 0
    cur.execute(
        sql.SQL(
            "UPDATE {s} s SET id = %s + fresh.n FROM ("
            "  SELECT id, row_number() OVER (ORDER BY partition, log_offset) AS n "
            "  FROM {s} WHERE id < 0) fresh "
            "WHERE s.id = fresh.id"
        ).format(s=shadow_t),
        (base,),
    )
    row = cur.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(shadow_t)).fetchone()
    highest = max(int(row[0]) if row is not None else 0, base)
    cur.execute(f"SELECT setval({_SERIAL}, greatest(%s, 1), %s)", (shadow, highest, highest > 0))


def swap_tables(
    conn: psycopg.Connection, live: str, shadow: str, replaced: str, lock_timeout_s: float
) -> None:
    """Put the shadow's projection tables in place of live's, in the caller's transaction.

    The caller holds the live checkpoint rows ``FOR UPDATE`` and has checked that the shadow's
    checkpoints equal them. Live tables move to ``replaced`` with a copy of the checkpoints; the
    live checkpoint rows take the shadow's applied and dead-lettered counts.

    Raises:
        psycopg.errors.LockNotAvailable: a reader held a table longer than ``lock_timeout_s``.
        psycopg.errors.DeadlockDetected: a reader locked the tables in another order.
    """
    with conn.cursor() as cur:
        timeout = sql.Literal(f"{int(lock_timeout_s * 1000)}ms")
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(timeout))
        cur.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(live, t) for t in SWAPPED_TABLES)
            )
        )
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(replaced)))
        _carry_dead_letter_ids(cur, live, shadow)
        for table in SWAPPED_TABLES:
            cur.execute(
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    sql.Identifier(live, table), sql.Identifier(replaced)
                )
            )
        for table in SWAPPED_TABLES:
            cur.execute(
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    sql.Identifier(shadow, table), sql.Identifier(live)
                )
            )
        checkpoint.copy_checkpoints(cur, live, replaced)
        copy_grants(cur, live, replaced)  # an erasure by the API role reaches the snapshot
        checkpoint.take_counters(cur, live, shadow)


def table_counts(conn: psycopg.Connection, schema: str) -> Mapping[str, int]:
    """Rows of each projection table in ``schema``."""
    counts: dict[str, int] = {}
    for table in SWAPPED_TABLES:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        ).fetchone()
        counts[table] = int(row[0]) if row is not None else 0
    return counts
