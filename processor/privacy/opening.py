"""Opening a batch's encrypted events, and dropping what belongs to erased children. Pure.

Two steps of ``processor.applying.batch.apply_batch`` (docs/contract.md, "Erasure"):

- ``open_records``: each encrypted record is decrypted with its child's data key (the store
  gives the wrapped keys, the key-encryption key unwraps them). A record that does not open is
  dead-lettered, unless its child was erased: then its key is gone on purpose;
- ``drop_erased``: valid events and dead letters of erased children are skipped (counted, not
  applied, not kept): the log still holds them, and neither live processing nor a replay brings
  the child back. A dead letter of another child whose routing key was an erased child's id
  keeps its place, with the key taken out of its reason (``erased_key_reason``), as the
  erasure did to the rows it found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace

from processor.applying.decode import DeadLetter, DecodedBatch, erased_key_reason
from processor.applying.store import BatchStore, WrappedKey
from processor.privacy.crypto import decrypt_event, envelope_of, is_encrypted, unwrap_data_key
from processor.privacy.errors import DecryptionFailed
from processor.privacy.keys import Keys
from processor.reading.log_record import LogRecord

NO_DATA_KEY = "the event's data is encrypted and its child has no data key here"


@dataclass
class OpenedBatch:
    """What opening a batch found.

    Attributes:
        plaintexts: the decrypted body of each encrypted record that opened, by offset.
        unopened: why each encrypted record that did not open (no key, another key, altered
            bytes) is a dead letter, by offset; dropped instead when its child was erased.
    """

    plaintexts: dict[int, bytes] = field(default_factory=dict)
    unopened: dict[int, str] = field(default_factory=dict)

    @property
    def encrypted(self) -> set[int]:
        """Offsets of the encrypted records."""
        return set(self.plaintexts) | set(self.unopened)


def encrypted_users(records: Sequence[LogRecord]) -> dict[int, str]:
    """The ``user_id`` of each encrypted record, by offset (records with a read error skipped)."""
    users = {}
    for record in records:
        if record.error is None and is_encrypted(record.body):
            envelope = envelope_of(record.body)
            if envelope is not None:
                users[record.offset] = envelope[1]
    return users


def open_records(
    records: Sequence[LogRecord],
    owners: Mapping[int, str],
    wrapped: Mapping[str, WrappedKey],
    keys: Keys | None,
) -> OpenedBatch:
    """Decrypt the encrypted records of a batch.

    Args:
        records: the batch, in log order.
        owners: ``encrypted_users(records)``.
        wrapped: the wrapped data key of each of those users that has one.
        keys: the key-encryption key (None: none configured, nothing opens).
    """
    opened = OpenedBatch()
    data_keys: dict[str, bytes | DecryptionFailed] = {}
    for record in records:
        user_id = owners.get(record.offset)
        if user_id is None:
            continue
        if user_id not in data_keys:
            data_keys[user_id] = _unwrap(keys, wrapped.get(user_id), user_id)
        data_key = data_keys[user_id]
        try:
            if isinstance(data_key, DecryptionFailed):
                raise data_key
            opened.plaintexts[record.offset] = decrypt_event(record.body, data_key)
        except DecryptionFailed as exc:
            opened.unopened[record.offset] = str(exc)
    return opened


def open_batch(store: BatchStore, records: Sequence[LogRecord], keys: Keys) -> OpenedBatch:
    """Decrypt the encrypted events of ``records`` with the data keys ``store`` holds."""
    owners = encrypted_users(records)
    if not owners:
        return OpenedBatch()
    wrapped = store.data_keys(sorted(set(owners.values())))
    return open_records(records, owners, wrapped, keys)


def _unwrap(
    keys: Keys | None, wrapped: WrappedKey | None, user_id: str
) -> bytes | DecryptionFailed:
    """The child's data key, or why there is none (the dead letters' reason)."""
    if keys is None or wrapped is None:
        return DecryptionFailed(NO_DATA_KEY)
    try:
        return unwrap_data_key(keys.kek, wrapped[0], user_id)
    except DecryptionFailed as exc:
        return exc


@dataclass
class Kept:
    """A batch after erased children are dropped: what to apply and keep, and what was skipped."""

    decoded: DecodedBatch
    skipped: int = 0


def batch_users(decoded: DecodedBatch) -> set[str]:
    """Every child a batch names: its valid events' users, its readable dead letters', and the
    routing keys of its misrouted events (each may be a child's id)."""
    users = {event.user_id for event, _ in decoded.valid}
    for letter in decoded.dead:
        users.update(name for name in (letter.user_id, letter.routing_key) if name is not None)
    return users


def drop_erased(decoded: DecodedBatch, erased_users: Iterable[str]) -> Kept:
    """``decoded`` without the events and dead letters of ``erased_users``, and with no erased
    child's id as a kept dead letter's routing key."""
    erased = set(erased_users)
    if not erased:
        return Kept(decoded)
    kept = DecodedBatch(
        valid=[(e, o) for e, o in decoded.valid if e.user_id not in erased],
        dead=[
            without_erased_key(d, erased)
            for d in decoded.dead
            if d.user_id is None or d.user_id not in erased
        ],
    )
    skipped = len(decoded.valid) + len(decoded.dead) - len(kept.valid) - len(kept.dead)
    return Kept(kept, skipped)


def without_erased_key(letter: DeadLetter, erased: Set[str]) -> DeadLetter:
    """``letter``, or, when its routing key is one of ``erased``, the letter without the key
    (``routing_key`` None, the reason of ``erased_key_reason``)."""
    if letter.routing_key is None or letter.routing_key not in erased:
        return letter
    return replace(letter, routing_key=None, reason=erased_key_reason(letter.user_id or ""))
