"""Opening a batch's encrypted events, and dropping what belongs to erased children. Pure.

Two steps of ``processor.applying.batch.apply_batch`` (docs/contract.md, "Erasure"):

- ``open_records``: each encrypted record (its body read once: ``sealed_records``) is
  decrypted with its child's data key (the store gives the wrapped keys, the key-encryption
  key unwraps them; one cipher per child and batch). A record that does not open is
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

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from processor.applying.decode import DeadLetter, DecodedBatch, erased_key_reason
from processor.applying.store import BatchStore, WrappedKey
from processor.privacy.crypto import (
    SealedEvent,
    data_cipher,
    is_encrypted,
    open_sealed,
    sealed_event,
    unwrap_data_key,
)
from processor.privacy.errors import DecryptionFailed
from processor.privacy.keys import Keys
from processor.reading.log_record import LogRecord

#: An encrypted record's parts (``processor.privacy.crypto.sealed_event``).
Sealed = tuple[SealedEvent, str, str]

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


def sealed_records(records: Sequence[LogRecord]) -> dict[int, Sealed]:
    """The parts of each encrypted record, by offset (records with a read error skipped); each
    body is read once here and not again to open it."""
    sealed = {}
    for record in records:
        if record.error is None and is_encrypted(record.body):
            parts = sealed_event(record.body)
            if parts is not None:
                sealed[record.offset] = parts
    return sealed


def open_records(
    records: Sequence[LogRecord],
    sealed: Mapping[int, Sealed],
    wrapped: Mapping[str, WrappedKey],
    keys: Keys | None,
) -> OpenedBatch:
    """Decrypt the encrypted records of a batch.

    Args:
        records: the batch, in log order.
        sealed: ``sealed_records(records)``.
        wrapped: the wrapped data key of each of their users that has one.
        keys: the key-encryption key (None: none configured, nothing opens).
    """
    opened = OpenedBatch()
    kek = None if keys is None else AESGCM(keys.kek)
    ciphers: dict[str, AESGCM | DecryptionFailed] = {}
    for record in records:
        parts = sealed.get(record.offset)
        if parts is None:
            continue
        user_id = parts[0].user_id
        cipher = ciphers.get(user_id)
        if cipher is None:
            cipher = ciphers[user_id] = _cipher(kek, wrapped.get(user_id), user_id)
        try:
            if isinstance(cipher, DecryptionFailed):
                raise cipher
            opened.plaintexts[record.offset] = open_sealed(record.body, parts, cipher)
        except DecryptionFailed as exc:
            opened.unopened[record.offset] = str(exc)
    return opened


def open_batch(store: BatchStore, records: Sequence[LogRecord], keys: Keys) -> OpenedBatch:
    """Decrypt the encrypted events of ``records`` with the data keys ``store`` holds."""
    sealed = sealed_records(records)
    if not sealed:
        return OpenedBatch()
    wrapped = store.data_keys(sorted({parts[0].user_id for parts in sealed.values()}))
    return open_records(records, sealed, wrapped, keys)


def _cipher(
    kek: AESGCM | None, wrapped: WrappedKey | None, user_id: str
) -> AESGCM | DecryptionFailed:
    """The child's data cipher, or why there is none (the dead letters' reason)."""
    key = _unwrap(kek, wrapped, user_id)
    if isinstance(key, DecryptionFailed):
        return key
    try:
        return data_cipher(key)
    except ValueError:
        return DecryptionFailed("the event's data does not open with its child's data key")


def _unwrap(
    kek: AESGCM | None, wrapped: WrappedKey | None, user_id: str
) -> bytes | DecryptionFailed:
    """The child's data key, or why there is none (the dead letters' reason)."""
    if kek is None or wrapped is None:
        return DecryptionFailed(NO_DATA_KEY)
    try:
        return unwrap_data_key(kek, wrapped[0], user_id)
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
