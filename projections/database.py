"""Database plumbing: create the database if missing, run migrations, open connections."""

from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import create_engine, text

from projections import advisory_locks

log = logging.getLogger(__name__)


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
    ini = resources.files("projections") / "alembic.ini"
    return Config(str(ini))


def migrate(url: str) -> None:
    """Create the database if needed and upgrade it to the newest migration.

    Serialised by an advisory lock, so any number of processes may call it at start.
    """
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
