"""Children's data keys in PostgreSQL (``data_keys``, wrapped by the key-encryption key), and
sealing events with them before they are published.

A child's key is made once: concurrent first events of the same child race on
``INSERT ... ON CONFLICT DO NOTHING`` and all read the one row that won. An erased child gets no
key again: a key is made under the child's advisory lock, which an erasure takes too, after a
look at the erasures; ``seal_events`` refuses an erased child's events (``UserErased``) before
anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import msgspec
import psycopg

from processor.privacy.crypto import encrypt_event, new_data_key, unwrap_data_key, wrap_data_key
from processor.privacy.errors import KeyMissing, UserErased
from processor.privacy.key_ids import check_key_ids, record_kek
from processor.privacy.keys import Keys
from projections.advisory_locks import CHILD_CLASS, child_lock_key

_SELECT: Final = (
    "SELECT user_id, wrapped_key, kek_id FROM data_keys WHERE user_id = ANY(%s::text[])"
)
_INSERT: Final = (
    "INSERT INTO data_keys (user_id, wrapped_key, kek_id) "
    "SELECT * FROM unnest(%s::text[], %s::bytea[], %s::text[]) ON CONFLICT (user_id) DO NOTHING"
)
_ERASED: Final = "SELECT user_digest FROM erasures WHERE user_digest = ANY(%s::bytea[])"
#: One child lock after the other, in key order (callers pass sorted keys), so two
#: transactions never wait for each other crosswise.
_LOCK_CHILDREN: Final = (
    "SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::int[]) WITH ORDINALITY AS u(k, n) "
    "ORDER BY n"
)
_USER: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_STRING: Final = msgspec.json.Decoder(str)


def erased_users(conn: psycopg.Connection, users: Iterable[str], keys: Keys) -> set[str]:
    """The users among ``users`` who were erased."""
    digests = {user: keys.user_digest(user) for user in set(users)}
    if not digests:
        return set()
    found = {bytes(r[0]) for r in conn.execute(_ERASED, (list(digests.values()),))}
    return {user for user, digest in digests.items() if digest in found}


def ensure_data_keys(
    conn: psycopg.Connection, users: Iterable[str], keys: Keys
) -> dict[str, bytes]:
    """The data key of each of ``users``, made (and stored wrapped) for those that have none.

    Keys are made in one transaction that holds each new child's advisory lock
    (``projections.advisory_locks.CHILD_CLASS``, also taken by an erasure) and checks the
    erasures under it: a key is never made for a child whose erasure committed. On a
    connection in a transaction already, that transaction is a savepoint and the locks are held
    until the caller commits.

    Raises:
        UserErased: a child without a key was erased (no key was made for any of ``users``).
        KeyMissing: keys are to be made, and the stored ones were wrapped by another
            key-encryption key, or another hash key is recorded (``key_ids.check_key_ids``;
            nothing was written).
        DecryptionFailed: a stored key does not open with ``keys.kek``.
    """
    wanted = sorted(set(users))
    if not wanted:
        return {}
    stored = _read(conn, wanted, keys)
    missing = [user for user in wanted if user not in stored]
    if missing:
        stored.update(_make(conn, missing, keys))
    return {user: unwrap_data_key(keys.kek, stored[user], user) for user in wanted}


def _make(conn: psycopg.Connection, users: list[str], keys: Keys) -> dict[str, bytes]:
    """Store new wrapped keys for ``users`` (or read the winners of a race); see
    ``ensure_data_keys``. Checking the key ids after the insert, in its transaction, closes
    the race with a rotation: ``rewrap_data_keys`` locks the table and records its new KEK id,
    so either it re-wraps this insert too or this check sees the new id and rolls back. The
    same check refuses another hash key, with which the look at the erasures would miss."""
    lock_keys = sorted({child_lock_key(keys.user_digest(user)) for user in users})
    with conn.transaction():
        conn.execute(_LOCK_CHILDREN, (CHILD_CLASS, lock_keys))
        if erased_users(conn, users, keys):
            raise UserErased("some of the children were erased: no data key is made for them")
        wrapped = [wrap_data_key(keys.kek, new_data_key(), user) for user in users]
        conn.execute(_INSERT, (users, wrapped, [keys.kek_id] * len(users)))
        check_key_ids(conn, keys)
        return _read(conn, users, keys)  # ours, or those of a transaction that won a race


def _read(conn: psycopg.Connection, users: list[str], keys: Keys) -> dict[str, bytes]:
    """The wrapped keys of ``users`` that have one.

    Raises:
        KeyMissing: one was wrapped by another KEK than ``keys.kek`` (this process missed a
            rotation: it must be restarted with the deployment's key).
    """
    found = {}
    for user, wrapped, kek_id in conn.execute(_SELECT, (users,)).fetchall():
        if kek_id != keys.kek_id:
            raise KeyMissing(
                f"a data key was wrapped by the key-encryption key {kek_id}, and this process "
                f"has {keys.kek_id}: restart it with the deployment's key"
            )
        found[str(user)] = bytes(wrapped)
    return found


def destroy_data_key(cur: psycopg.Cursor, user_id: str) -> bool:
    """Delete the child's data key (crypto-shredding); True when there was one."""
    cur.execute("DELETE FROM data_keys WHERE user_id = %s", (user_id,))
    return cur.rowcount > 0


def user_of(body: bytes) -> str:
    """The ``user_id`` of a valid event body (the caller validated it).

    Raises:
        ValueError: the body has no string ``user_id``.
    """
    try:
        return _STRING.decode(_USER.decode(body)["user_id"])
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
        raise ValueError("an event without a user_id") from exc


def seal_events(conn: psycopg.Connection, bodies: Sequence[bytes], keys: Keys) -> list[bytes]:
    """Encrypt the ``data`` of valid event bodies with their children's data keys.

    Args:
        conn: an autocommit connection to the deployment's database (keys are made in a
            transaction of their own: see ``ensure_data_keys``).
        bodies: valid events (validated by the caller).
        keys: the hash key (finds erased children) and the key-encryption key.

    Returns:
        The sealed bodies, in order.

    Raises:
        UserErased: some events are of erased children; nothing was sealed (its ``indexes``
            attribute names them).
        KeyMissing, DecryptionFailed: as ``ensure_data_keys``.
    """
    users = [user_of(body) for body in bodies]
    try:
        erased = erased_users(conn, users, keys)
        if not erased:
            data_keys = ensure_data_keys(conn, users, keys)
    except UserErased:  # an erasure committed meanwhile
        erased = erased_users(conn, users, keys)
    if erased:
        indexes = tuple(i for i, user in enumerate(users) if user in erased)
        raise UserErased(f"{len(indexes)} events are of erased children", indexes)
    return [encrypt_event(body, data_keys[user]) for body, user in zip(bodies, users, strict=True)]


def rewrap_data_keys(conn: psycopg.Connection, keys: Keys, new_kek: bytes) -> int:
    """Wrap every data key with ``new_kek`` instead of ``keys.kek``, in one transaction.

    The table is locked (``EXCLUSIVE``: reads go on, no key is made meanwhile). Keys already
    wrapped by ``new_kek`` are left alone, so a rotation that stopped after its commit can be
    run again with the same new key.

    Returns:
        How many data keys were re-wrapped.

    Raises:
        DecryptionFailed: a data key opens with neither key (nothing was changed).
    """
    rotated = Keys(hash_key=keys.hash_key, kek=new_kek)
    with conn.transaction():
        conn.execute("LOCK TABLE data_keys IN EXCLUSIVE MODE")
        rows = conn.execute(
            "SELECT user_id, wrapped_key FROM data_keys WHERE kek_id <> %s ORDER BY user_id",
            (rotated.kek_id,),
        ).fetchall()
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE data_keys SET wrapped_key = %s, kek_id = %s WHERE user_id = %s",
                [
                    (
                        wrap_data_key(new_kek, unwrap_data_key(keys.kek, bytes(w), u), u),
                        rotated.kek_id,
                        u,
                    )
                    for u, w in rows
                ],
            )
        record_kek(conn, rotated.kek_id)
    return len(rows)
