"""The deployment's key ids, recorded in its database, so a process with other keys stops.

Both secrets change what a process finds, not only what it can read:

- the hash key names erased children (``erasures.user_digest``) and API tokens: a process with
  another hash key finds no erasure, and would apply an erased child's plain events again,
  make the child a new data key, and bring the child back with a ``replay --swap``;
- the key-encryption key (KEK) wraps the data keys: a process with another KEK cannot open any
  encrypted event, and would dead-letter them all.

``deployment_keys`` holds one public id of each (a hash of the key, never the key:
``Keys.hash_key_id``, ``Keys.kek_id``). The first process that checks records them; every
later check compares, and a mismatch is ``KeyMissing`` (exit 2) before anything is written: a
check compares first and records a missing id only when nothing it holds disagrees, in one
transaction. A rotation of the KEK (``rewrap_data_keys``) moves the recorded id in its
transaction.

Known limit: on a deployment that had erasures or tokens before ids were recorded (before
migration 0008), the first process to check defines the hash key's id; start that one with the
right key.
"""

from __future__ import annotations

from typing import Final

import psycopg

from processor.privacy.errors import KeyMissing
from processor.privacy.keys import Keys

#: The row names of ``deployment_keys``.
HASH_KEY: Final = "hash_key"
KEK: Final = "kek"

_RECORD: Final = (
    "INSERT INTO deployment_keys (name, key_id) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"
)
_RECORDED: Final = "SELECT name, key_id FROM deployment_keys"


def check_key_ids(
    conn: psycopg.Connection,
    keys: Keys,
    rotating_to: str = "",
    *,
    data_keys: bool = False,
) -> None:
    """Refuse other keys than the recorded ones, then record the ids not recorded yet.

    Cheap (two rows by primary key): a data key is made only after this check, in the same
    transaction (``privacy.data_keys.ensure_data_keys``).

    Args:
        conn: a connection to the deployment's database (in a transaction or not: the check
            is one transaction, or a savepoint of the caller's).
        keys: the keys this process loaded.
        rotating_to: the id of a KEK being rotated to (``keys rotate``), also accepted.
        data_keys: also refuse stored data keys wrapped by another KEK (a whole-table look,
            for a process's start: it catches data keys older than the recorded ids).

    Raises:
        KeyMissing: the recorded hash key or KEK is another one, or (``data_keys``) a data key
            was wrapped by another KEK; nothing was recorded (the message names the ids).
    """
    accepted = [keys.kek_id, rotating_to or keys.kek_id]
    with conn.transaction():
        recorded = {str(name): str(key_id) for name, key_id in conn.execute(_RECORDED)}
        _compare(recorded, keys, accepted)
        if data_keys:
            others = sorted(
                str(row[0])
                for row in conn.execute(
                    "SELECT DISTINCT kek_id FROM data_keys WHERE kek_id <> ALL(%s::text[])",
                    (accepted,),
                )
            )
            if others:
                raise KeyMissing(_other_kek(", ".join(others), keys))
        for name, key_id in ((HASH_KEY, keys.hash_key_id), (KEK, keys.kek_id)):
            if name not in recorded:
                conn.execute(_RECORD, (name, key_id))
        recorded = {str(name): str(key_id) for name, key_id in conn.execute(_RECORDED)}
        _compare(recorded, keys, accepted)  # another process may have recorded meanwhile


def _compare(recorded: dict[str, str], keys: Keys, accepted: list[str]) -> None:
    if recorded.get(HASH_KEY, keys.hash_key_id) != keys.hash_key_id:
        raise KeyMissing(
            f"this deployment's erasures and tokens were made with the hash key "
            f"{recorded[HASH_KEY]}, and this process has {keys.hash_key_id}: it would not find "
            "the erased children; point SECRETS_DIR (or HASH_KEY) at the key this deployment uses"
        )
    if recorded.get(KEK, keys.kek_id) not in accepted:
        raise KeyMissing(_other_kek(recorded[KEK], keys))


def check_keys(conn: psycopg.Connection, keys: Keys, rotating_to: str = "") -> None:
    """``check_key_ids`` with the look at every stored data key: for a process's start.

    Raises:
        KeyMissing: as ``check_key_ids``.
    """
    check_key_ids(conn, keys, rotating_to, data_keys=True)


def record_kek(conn: psycopg.Connection, kek_id: str) -> None:
    """Record ``kek_id`` as the deployment's KEK (a rotation, in its transaction)."""
    conn.execute(
        "INSERT INTO deployment_keys (name, key_id) VALUES (%s, %s) "
        "ON CONFLICT (name) DO UPDATE SET key_id = excluded.key_id",
        (KEK, kek_id),
    )


def _other_kek(recorded: str, keys: Keys) -> str:
    return (
        f"the children's data keys in this database were wrapped by the key-encryption key "
        f"{recorded}, and this process has {keys.kek_id}: point SECRETS_DIR (or "
        "KEY_ENCRYPTION_KEY) at the key this deployment uses"
    )
