"""API bearer tokens: random, shown once, stored only as a keyed hash, revocable, expiring.

A token reads ``fst_`` + a 16-hex-digit id + a 43-character random secret (256 bits). The
``api_tokens`` table keeps the id, the scope and HMAC-SHA-256 of the secret under the hash key
(``processor.privacy.keys``): a database leak gives no usable token, and a check costs one
keyed hash. Lookup goes by the id; the secret's hash is compared in constant time
(``hmac.compare_digest``). Every check reads the table, so a revocation takes effect on the
token's next use, without a restart.

Scopes (docs/contract.md, "Access"): ``ingest`` may publish, ``read`` may read, ``admin`` may do
everything (erasure and dead letters included).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg

from processor.access.errors import BadScope, TokenExists, UnknownToken
from processor.privacy.keys import Keys

SCOPES: Final = ("ingest", "read", "admin")
PREFIX: Final = "fst_"
_ID_HEX: Final = 16
_SECRET_BYTES: Final = 32
_PURPOSE: Final = "api-token"


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret.

    Attributes:
        name: unique, chosen at creation (``robot-app``).
        scope: ``ingest``, ``read`` or ``admin``.
        created_at, expires_at, revoked_at: database times (None: never expires / not revoked).
    """

    name: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def allows(self, scope: str) -> bool:
        """True when this token may act in ``scope`` (``admin`` may act in every scope)."""
        return self.scope in (scope, "admin")


#: The public id of a token as ``create_token`` makes it: 16 lower-case hex digits.
_TOKEN_ID: Final = re.compile(f"[0-9a-f]{{{_ID_HEX}}}")


def _parse(token: str) -> tuple[str, str] | None:
    """``(token id, secret)`` of ``token``, or None when it is not shaped as ``create_token``
    makes them: the prefix, an id of 16 lower-case hex digits, a non-empty secret.

    Only such an id is ever sent to the database: anything else (a NUL byte, which psycopg
    refuses to send, would fail every request batched with it) is refused here, as unknown.
    """
    if not token.startswith(PREFIX) or len(token) <= len(PREFIX) + _ID_HEX:
        return None
    body = token[len(PREFIX) :]
    token_id = body[:_ID_HEX]
    if _TOKEN_ID.fullmatch(token_id) is None:
        return None
    return token_id, body[_ID_HEX:]


def token_id_of(token: str) -> str | None:
    """The public id in ``token`` (16 hex digits; not a secret), None when it is not a token.

    A browser session names its token by this id (``processor.api.sessions``), never by the
    secret.
    """
    parsed = _parse(token)
    return None if parsed is None else parsed[0]


def create_token(
    conn: psycopg.Connection,
    keys: Keys,
    name: str,
    scope: str,
    expires_in: timedelta | None = None,
) -> str:
    """Make a token and store its keyed hash; the token itself is returned once, never stored.

    Raises:
        BadScope: ``scope`` is not one of ``SCOPES``.
        TokenExists: a token named ``name`` exists (revoked ones too: names are not reused).
    """
    if scope not in SCOPES:
        raise BadScope(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    token_id = secrets.token_hex(_ID_HEX // 2)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    try:
        conn.execute(
            "INSERT INTO api_tokens (name, token_id, secret_hash, scope, expires_at) "
            "VALUES (%s, %s, %s, %s, now() + %s)",
            (name, token_id, keys.keyed_hash(_PURPOSE, secret), scope, expires_in),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise TokenExists(f"a token named {name!r} exists already") from exc
    return f"{PREFIX}{token_id}{secret}"


def list_tokens(conn: psycopg.Connection) -> list[TokenInfo]:
    """Every token, oldest first (revoked and expired ones included)."""
    rows = conn.execute(
        "SELECT name, scope, created_at, expires_at, revoked_at FROM api_tokens "
        "ORDER BY created_at, name"
    ).fetchall()
    return [TokenInfo(*row) for row in rows]


def revoke_token(conn: psycopg.Connection, name: str) -> None:
    """Revoke a token: refused from its next use on.

    Raises:
        UnknownToken: no token has that name.
    """
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = %s", (name,)
    )
    if cur.rowcount == 0:
        raise UnknownToken(f"no token named {name!r}")


_SELECT_BY_ID: Final = (
    "SELECT name, scope, created_at, expires_at, revoked_at, secret_hash, "
    "(expires_at IS NOT NULL AND expires_at <= now()) AS expired "
    "FROM api_tokens WHERE token_id = %s"
)


def _token_found(row: tuple[Any, ...] | None) -> tuple[TokenInfo, bytes, bool] | None:
    """A row of ``_SELECT_BY_ID`` as the token, its stored secret hash and whether it is usable
    now (not revoked, not expired); None for no row (an unknown id)."""
    if row is None:
        return None
    name, scope, created_at, expires_at, revoked_at, stored, expired = row
    info = TokenInfo(name, scope, created_at, expires_at, revoked_at)
    return info, bytes(stored), revoked_at is None and not expired


def _token_row(conn: psycopg.Connection, token_id: str) -> tuple[TokenInfo, bytes, bool] | None:
    """The token with this id, its stored secret hash and whether it is usable now (not
    revoked, not expired); None for an unknown id."""
    return _token_found(conn.execute(_SELECT_BY_ID, (token_id,)).fetchone())


def _accepted(
    found: tuple[TokenInfo, bytes, bool] | None, keys: Keys, secret: str
) -> TokenInfo | None:
    if found is None:
        return None
    info, stored, usable = found
    # The secret is compared first, whatever the token's state (constant time).
    if not hmac.compare_digest(stored, keys.keyed_hash(_PURPOSE, secret)):
        return None
    return info if usable else None


def verify_token(conn: psycopg.Connection, keys: Keys, token: str) -> TokenInfo | None:
    """The token's info when it is valid now: known, not revoked, not expired, secret right.

    Returns:
        None for any token that must be refused (the caller answers 401 without saying why).
    """
    parsed = _parse(token)
    if parsed is None:
        return None
    token_id, secret = parsed
    return _accepted(_token_row(conn, token_id), keys, secret)


async def verify_token_async(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], keys: Keys, token: str
) -> TokenInfo | None:
    """``verify_token`` on an async connection: one indexed lookup by the token's id, so a
    revoked or expired token is refused on its next use.

    Returns:
        None for any token that must be refused.
    """
    parsed = _parse(token)
    if parsed is None:
        return None
    token_id, secret = parsed
    cursor = await conn.execute(_SELECT_BY_ID, (token_id,))
    return _accepted(_token_found(await cursor.fetchone()), keys, secret)


@dataclass(frozen=True)
class JoinedRead:
    """A point read by one text key that rides in the token check's statement: one round trip
    for the check and the read (``verify_tokens_with_reads_async``), and one for many requests'.

    The row is read only for a token that is usable now (not revoked, not expired) and whose
    scope allows ``scope``; the token's secret is still compared (in constant time) before the
    row is handed back, so a refused token gets nothing.

    Attributes:
        scope: the scope the read needs (``read``; ``admin`` allows it too).
        table: the table and its alias, e.g. ``"friendships r"``.
        columns: the row's columns, e.g. ``"r.score, r.events_applied"``; the first must be
            NOT NULL in the table (a null there means: no row).
        condition: which row, ``{key}`` standing for the key, e.g. ``"r.user_id = {key}"``.
        sql: the whole statement, built once; its parameters are two text arrays of the same
            length, the token ids and the keys, and each row starts with the (1-based) position
            of its pair (a pair whose token id is unknown has no row).
    """

    scope: str
    table: str
    columns: str
    condition: str
    sql: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise BadScope(f"scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        condition = self.condition.format(key="k.key")
        sql = (
            "SELECT k.i, t.name, t.scope, t.created_at, t.expires_at, t.revoked_at, "
            "t.secret_hash, (t.expires_at IS NOT NULL AND t.expires_at <= now()) AS expired, "
            f"{self.columns} "
            "FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS k(token_id, key, i) "
            "JOIN api_tokens t ON t.token_id = k.token_id "
            f"LEFT JOIN {self.table} ON {condition} "
            "AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()) "
            f"AND t.scope IN ('{self.scope}', 'admin')"
        )
        object.__setattr__(self, "sql", sql)


#: What ``verify_tokens_with_reads_async`` answers for one request: the token's info (None:
#: refuse it) and the row (None: no row, or the token may not read it).
TokenAndRow = tuple[TokenInfo | None, tuple[Any, ...] | None]


async def verify_tokens_with_reads_async(
    conn: psycopg.AsyncConnection[tuple[Any, ...]],
    keys: Keys,
    read: JoinedRead,
    requests: Sequence[tuple[str, str]],
) -> list[TokenAndRow]:
    """``verify_token_async`` and ``read`` for each ``(token, key)`` of ``requests``, all in one
    statement (one round trip, however many requests).

    Args:
        conn: an async connection (autocommit: the statement is its own snapshot).
        keys: the hash key of the token secrets.
        read: the point read.
        requests: each request's bearer token as sent and the key of its read.

    Returns:
        One ``TokenAndRow`` per request, in order: ``(None, None)`` for a token that must be
        refused (malformed, unknown, revoked, expired, wrong secret); else the token's info and
        the row's columns, or None for the row when there is no such row or the token's scope
        does not allow ``read.scope``.

    Raises:
        psycopg.Error: the database failed.
    """
    parsed = [_parse(token) for token, _key in requests]
    asked = [(p[0], key) for p, (_token, key) in zip(parsed, requests, strict=True) if p]
    found: dict[int, tuple[Any, ...]] = {}
    if asked:
        token_ids, read_keys = zip(*asked, strict=True)
        cursor = await conn.execute(read.sql, (list(token_ids), list(read_keys)))
        found = {row[0]: row[1:] for row in await cursor.fetchall()}
    answers: list[TokenAndRow] = []
    position = 0
    for p in parsed:
        if p is None:
            answers.append((None, None))
            continue
        position += 1
        row = found.get(position)
        info = _accepted(_token_found(None if row is None else row[:7]), keys, p[1])
        if info is None or row is None:
            answers.append((None, None))
        else:
            answers.append((info, row[7:] if row[7] is not None else None))
    return answers


def verify_token_id(conn: psycopg.Connection, token_id: str) -> TokenInfo | None:
    """The info of the token with this id when it is valid now: known, not revoked, not expired.

    A browser session holds the id of the token it was opened with (its secret was checked at
    sign-in, ``verify_token``); every request of the session calls this, so revoking or expiring
    the token ends its sessions at once.

    Returns:
        None for a token id that must be refused.
    """
    return _usable(_token_row(conn, token_id))


async def verify_token_id_async(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], token_id: str
) -> TokenInfo | None:
    """``verify_token_id`` on an async connection.

    Returns:
        None for a token id that must be refused.
    """
    cursor = await conn.execute(_SELECT_BY_ID, (token_id,))
    return _usable(_token_found(await cursor.fetchone()))


def _usable(found: tuple[TokenInfo, bytes, bool] | None) -> TokenInfo | None:
    if found is None:
        return None
    info, _stored, usable = found
    return info if usable else None
