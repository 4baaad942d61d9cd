"""Database plumbing: create the database if missing, run migrations, open connections.

Alembic and SQLAlchemy are imported only when a migration has to run: every processor process
migrates at start, and a database already at ``HEAD_REVISION`` needs neither (about 0.2 s of
CPU per start, imports and Alembic's own check).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from projections import advisory_locks

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

#: The newest migration's revision (``projections/migrations/versions``); a test checks it
#: against Alembic's head, so a new migration must change it.
HEAD_REVISION: Final = "0011"


class DatabaseUrlError(ValueError):
    """``DATABASE_URL`` is not a ``postgresql://`` URL with a database name."""


def database_name(url: str) -> str:
    """The database name of a PostgreSQL URL.

    Raises:
        DatabaseUrlError: no database name in the path.
    """
    name = urlsplit(url).path.lstrip("/")
    if not name:
        raise DatabaseUrlError(f"DATABASE_URL {url!r} names no database")
    return name


def libpq_url(url: str) -> str:
    """The URL for psycopg (``postgresql://``), whatever SQLAlchemy driver suffix it had."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise DatabaseUrlError(f"DATABASE_URL must start with postgresql://, got {parts.scheme!r}")
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy with the psycopg 3 driver (``postgresql+psycopg://``)."""
    return "postgresql+psycopg" + libpq_url(url)[len("postgresql") :]


def maintenance_url(url: str) -> str:
    """The same server's ``postgres`` database, used to create or drop databases."""
    parts = urlsplit(libpq_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, parts.fragment))


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist; safe to call concurrently.

    Returns:
        True when this call created it.
    """
    name = database_name(url)
    with psycopg.connect(maintenance_url(url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            return False
        log.info("created database %s", name)
        return True


def drop_database(url: str) -> None:
    """Drop the database named in ``url`` (terminating its sessions); used by test cleanup."""
    name = database_name(url)
    with psycopg.connect(maintenance_url(url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def alembic_config() -> Config:
    """The Alembic configuration shipped inside the ``projections`` package."""
    from alembic.config import Config  # noqa: PLC0415 - only when a migration runs

    ini = resources.files("projections") / "alembic.ini"
    return Config(str(ini))


def at_head(url: str) -> bool:
    """True when the database of ``url`` exists and its ``alembic_version`` is exactly
    ``HEAD_REVISION`` (committed: Alembic moves it in the migration's own transaction).

    False for a missing database, a database never migrated, one at an older revision, and
    one at a revision this code does not know (``migrate`` then lets Alembic decide).
    """
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except psycopg.Error:  # no database, no table, no right to read it: Alembic decides
        return False
    return rows == [(HEAD_REVISION,)]


def migrate(url: str) -> None:
    """Create the database if needed and upgrade it to the newest migration.

    Serialised by an advisory lock, so any number of processes may call it at start. A
    database already at ``HEAD_REVISION`` is left as it is without loading Alembic.

    Raises:
        psycopg.OperationalError: the server cannot be reached.
        alembic.util.CommandError: the database is at a revision this code does not know.
    """
    if at_head(url):
        return
    from alembic import command  # noqa: PLC0415 - only when a migration runs
    from sqlalchemy import create_engine, text  # noqa: PLC0415

    ensure_database(url)
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_locks.MIGRATION}
            )
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def connect(url: str, *, application_name: str = "friendship-stream") -> psycopg.Connection:
    """Open an autocommit psycopg connection; transactions are always explicit.

    psycopg 3 otherwise opens an implicit transaction on the first statement, which would keep
    locks and snapshots alive between batches.

    The session's time zone is UTC, whatever the database's: a valid instant near year 1 or 9999
    (``9999-12-31T23:59:59Z``) may fall outside years 1-9999 in a local time zone, where psycopg
    cannot load it, and every later batch of that user would fail.
    """
    conn = psycopg.connect(
        libpq_url(url),
        autocommit=True,
        application_name=application_name,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )
    try:
        conn.execute("SET TIME ZONE 'UTC'")
    except BaseException:
        conn.close()
        raise
    return conn
