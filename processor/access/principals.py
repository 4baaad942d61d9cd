"""Least privilege: the broker users and database roles the product's processes run as.

``provision`` makes them (again: safe to run twice) for one deployment; ``remove`` drops them.
Broker users and database roles are server-wide, so each deployment names its own with a
prefix: ``fs_`` and the deployment's database name by default (``fs_events``), so two
deployments on one server never share a principal.

- ``PREFIX-publisher`` (broker user): write to the ``events`` exchange; nothing else.
- ``PREFIX-reader`` (broker user): read the partition streams ``events.pNNN``; nothing else.
- ``PREFIX_processor`` (database role): apply batches (projections, event ids, dead letters,
  checkpoints, membership); read data keys, erasures and erased event ids; fence stale members
  (``pg_terminate_backend`` of its own role's sessions: no ``pg_signal_backend``, which would
  reach every session of the server).
- ``PREFIX_api`` (database role): read the projections, checkpoints, leases and tokens; make
  data keys (ingest); erase (delete a child's rows and key, record the erasure and the event
  ids the child used, take its id out of other children's misrouted dead letters); see the
  processors' sessions (``pg_read_all_stats``: who holds which lease); store, read and expire
  the write tokens of read-your-writes (the HTTP ingest runs in the API process).
- ``PREFIX_ingest`` (database role): make and read data keys, read erasures (``just publish``).

Neither database role may change the schema: migrations, topology and replay run as the
deployment's owner (``DATABASE_URL``, ``AMQP_URL`` as given). Passwords are random, kept in
``SECRETS_DIR/principals.json`` (mode 0600) and reused when provisioning again.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from processor.access.errors import AccessError
from processor.settings import EXCHANGE, STREAM_PREFIX, Settings
from projections.database import connect

#: Port of the RabbitMQ management API (users and permissions are made there).
MANAGEMENT_PORT: Final = 15672
PRINCIPALS_FILE: Final = "principals.json"

_PROJECTIONS: Final = ("friendships", "topic_metrics", "applied_events", "dead_letters")
_PROCESSOR_GRANTS: Final = (
    ("SELECT, INSERT, UPDATE", _PROJECTIONS),  # a batch never deletes
    (
        "SELECT, INSERT, UPDATE, DELETE",
        ("checkpoints", "checkpoint_log", "members", "member_backends"),
    ),
    ("SELECT", ("data_keys", "erasures", "erased_event_ids", "alembic_version")),
    ("SELECT, INSERT", ("deployment_keys",)),  # the first check records the key ids
    ("SELECT, INSERT, UPDATE", ("projection_builds",)),  # a build it cannot run says so
)
_API_GRANTS: Final = (
    ("SELECT, DELETE", (*_PROJECTIONS, "data_keys")),
    ("INSERT", ("data_keys", "erasures")),
    ("SELECT, INSERT", ("erased_event_ids",)),  # ON CONFLICT (event_id) reads the index
    # erasing an erased child again: ON CONFLICT DO UPDATE; taking an erased child's id out of
    # another child's misrouted dead letter
    ("UPDATE", ("erasures", "dead_letters")),
    (
        "SELECT",
        (
            "erasures",
            "api_tokens",
            "members",
            "member_backends",
            "alembic_version",
            "projection_builds",
            "checkpoint_log",  # the dashboard's events per second
        ),
    ),
    ("SELECT, UPDATE", ("checkpoints",)),
    ("SELECT, INSERT", ("deployment_keys",)),
    # read-your-writes: ingest stores a write token, reads look it up, expired ones go
    ("SELECT, INSERT, DELETE", ("write_tokens",)),
)
_INGEST_GRANTS: Final = (
    ("SELECT, INSERT", ("data_keys", "deployment_keys")),
    ("SELECT", ("erasures",)),
)


class ProvisioningFailed(AccessError):
    """The broker or the database refused to make a user or a role (the message says which)."""


@dataclass(frozen=True)
class Principals:
    """The names and passwords of one deployment's principals (passwords never printed)."""

    prefix: str
    passwords: dict[str, str]

    @property
    def publisher(self) -> str:
        """The broker user that may only publish."""
        return f"{self.prefix}-publisher"

    @property
    def reader(self) -> str:
        """The broker user that may only read the partition streams."""
        return f"{self.prefix}-reader"

    def role(self, name: str) -> str:
        """The database role ``processor``, ``api`` or ``ingest``."""
        return f"{self.prefix}_{name}"

    def __repr__(self) -> str:
        return f"Principals(prefix={self.prefix!r})"


def _with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with ``user`` and ``password``; host, port, database and query string (TLS
    parameters such as ``sslmode``, ``sslrootcert``) kept."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def settings_as(settings: Settings, principals: Principals, process: str) -> Settings:
    """``settings`` with the credentials of ``process`` (``processor``, ``api`` or ``ingest``).

    The processor reads as the reader; the API publishes as the publisher and reads the tails
    as the reader; ``just publish`` publishes as the publisher.
    """
    broker = principals.reader if process == "processor" else principals.publisher
    passwords = principals.passwords
    role = principals.role(process)
    return settings.with_overrides(
        amqp_url=_with_credentials(settings.amqp_url, broker, passwords[broker]),
        database_url=_with_credentials(settings.database_url, role, passwords[role]),
        stream_username=principals.reader,
        stream_password=passwords[principals.reader],
    )


def _load(path: Path, prefix: str) -> Principals:
    names = [f"{prefix}-publisher", f"{prefix}-reader"] + [
        f"{prefix}_{role}" for role in ("processor", "api", "ingest")
    ]
    known: dict[str, str] = {}
    if path.exists():
        known = json.loads(path.read_text()).get(prefix, {}).get("passwords", {})
    passwords = {name: known.get(name) or secrets.token_urlsafe(24) for name in names}
    return Principals(prefix, passwords)


def _save(path: Path, principals: Principals) -> None:
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[principals.prefix] = asdict(principals)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(stored, out, indent=2)


def _management(settings: Settings, method: str, path: str, body: object | None) -> None:
    amqp = settings.amqp
    request = urllib.request.Request(
        f"http://{amqp.host}:{MANAGEMENT_PORT}/api/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": "Basic "
            + base64.b64encode(f"{amqp.username}:{amqp.password}".encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            return
    except urllib.error.HTTPError as exc:
        if method == "DELETE" and exc.code == 404:  # noqa: PLR2004 - gone already
            return
        raise ProvisioningFailed(f"the broker refused {method} {path}: HTTP {exc.code}") from exc
    except OSError as exc:
        raise ProvisioningFailed(f"the broker's management API is not reachable: {exc}") from exc


def _provision_broker(settings: Settings, principals: Principals) -> None:
    vhost = urllib.parse.quote(settings.amqp.vhost, safe="")
    streams = "^" + STREAM_PREFIX.replace(".", r"\.") + "[0-9]{3}$"
    wanted = {
        principals.publisher: {"configure": "^$", "write": f"^{EXCHANGE}$", "read": "^$"},
        principals.reader: {"configure": "^$", "write": "^$", "read": streams},
    }
    for user, permissions in wanted.items():
        name = urllib.parse.quote(user, safe="")
        password = principals.passwords[user]
        _management(settings, "PUT", f"users/{name}", {"password": password, "tags": ""})
        _management(settings, "PUT", f"permissions/{vhost}/{name}", permissions)


def _provision_roles(settings: Settings, principals: Principals) -> None:
    grants = {"processor": _PROCESSOR_GRANTS, "api": _API_GRANTS, "ingest": _INGEST_GRANTS}
    with connect(settings.database_url) as conn, conn.transaction():
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        for process, table_grants in grants.items():
            role = sql.Identifier(principals.role(process))
            password = principals.passwords[principals.role(process)]
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (principals.role(process),)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password))
            )
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(str(database[0])), role
                )
            )
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
            conn.execute(
                sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(role)
            )
            # Provisioning again gives exactly today's grants, none an older version gave.
            conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(role))
            if exists and _member_of(conn, principals.role(process), "pg_signal_backend"):
                conn.execute(sql.SQL("REVOKE pg_signal_backend FROM {}").format(role))
            for privileges, tables in table_grants:
                conn.execute(
                    sql.SQL("GRANT " + privileges + " ON {} TO {}").format(
                        sql.SQL(", ").join(sql.Identifier(t) for t in tables), role
                    )
                )
        # Lease holders are matched on pg_stat_activity's backend start, which PostgreSQL
        # shows a role only for its own sessions, or with pg_read_all_stats (read-only).
        conn.execute(
            sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(principals.role("api")))
        )


def default_prefix(settings: Settings) -> str:
    """``fs_`` + the deployment's database name, in ``a-z 0-9 _`` (``fs_events``)."""
    name = urlsplit(settings.database_url).path.lstrip("/").lower()
    return "fs_" + "".join(c if c.isalnum() else "_" for c in name)


def provision(settings: Settings, prefix: str | None = None) -> Principals:
    """Make (or update) the deployment's broker users and database roles.

    Runs with the owner's credentials of ``settings`` (an administrator of the vhost and the
    owner of the database, migrated).

    Raises:
        ProvisioningFailed: the broker's management API refused or is not reachable.
        psycopg.Error: the database refused (the owner may not create roles).
    """
    path = Path(settings.secrets_dir) / PRINCIPALS_FILE
    principals = _load(path, prefix or default_prefix(settings))
    _provision_broker(settings, principals)
    _provision_roles(settings, principals)
    _save(path, principals)
    return principals


def remove(settings: Settings, prefix: str | None = None) -> None:
    """Drop the broker users and database roles of ``prefix`` (safe when they are gone), and
    their passwords from ``SECRETS_DIR/principals.json``.

    Raises:
        ProvisioningFailed: the broker's management API refused or is not reachable.
        psycopg.Error: the database refused.
    """
    path = Path(settings.secrets_dir) / PRINCIPALS_FILE
    principals = _load(path, prefix or default_prefix(settings))
    for user in (principals.publisher, principals.reader):
        _management(settings, "DELETE", f"users/{urllib.parse.quote(user, safe='')}", None)
    with connect(settings.database_url) as conn:
        for process in ("processor", "api", "ingest"):
            role = principals.role(process)
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                with conn.transaction():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    _forget(path, principals.prefix)


def _forget(path: Path, prefix: str) -> None:
    """``path`` without the passwords of ``prefix`` (the file stays, mode 0600; replaced in one
    rename, so the other deployments' passwords survive a crash)."""
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    if stored.pop(prefix, None) is None:
        return
    staged = path.with_name(path.name + ".new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(stored, out, indent=2)
    staged.replace(path)


def _member_of(conn: psycopg.Connection, role: str, group: str) -> bool:
    row = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (role, group)).fetchone()
    return bool(row and row[0])


__all__ = [
    "Principals",
    "ProvisioningFailed",
    "default_prefix",
    "provision",
    "remove",
    "settings_as",
]
