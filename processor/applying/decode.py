"""Decode a batch of log records into valid events and dead letters. Pure: no I/O.

The first step of a batch (README "How it works"): every record becomes either a valid event
with its offset, or a ``DeadLetter`` naming why it is invalid (docs/contract.md section 4): an
entry the reader could not unpack, a body that is not a valid event, or an event whose routing
key is not its ``user_id`` ("Routing"). The de-duplication by event id that follows needs what
the store recorded before (``projections.event_ids`` holds its rule, the store the ids).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from processor.applying.errors import OffsetsOutOfOrder
from processor.reading.log_record import LogRecord
from projections.event_ids import ReusedId
from schemas.events import Event
from schemas.validation import EventValidationError, decode_event

#: Longest routing key quoted in a dead letter's reason (AMQP allows 255 bytes).
QUOTED_KEY_CHARS: Final = 128
#: Longest ``event_id`` kept from the body of an invalid record.
KEPT_EVENT_ID_CHARS: Final = 64

_EVENT_ID_PROBE: Final = msgspec.json.Decoder(dict[str, object])
_STRING: Final = msgspec.json.Decoder(str)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An invalid record: where it is in the log, why it is invalid and its raw bytes.

    ``user_id`` is the body's ``user_id`` when it is a readable string (an erasure finds the
    child's dead letters by it, and a batch drops those of an erased child). ``routing_key`` is
    the key of an event published under another routing key than its ``user_id``: the key may
    be another child's id, so an erasure of that child finds the row by it and takes it out of
    the reason (``erased_key_reason``).
    """

    partition: int
    offset: int
    event_id: str | None
    field: str
    reason: str
    raw: bytes
    user_id: str | None = None
    routing_key: str | None = None


@dataclass(slots=True)
class DecodedBatch:
    """A batch after decoding: ``valid`` ``(event, offset)`` in log order, and ``dead``."""

    valid: list[tuple[Event, int]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def check_offsets(partition: int, records: Sequence[LogRecord], checkpoint: int) -> None:
    """Refuse a batch whose offsets do not strictly increase after ``checkpoint``.

    Raises:
        OffsetsOutOfOrder: an offset is not above the previous record's last offset (or the
            checkpoint); holes are allowed.
    """
    previous = checkpoint
    for record in records:
        if record.offset <= previous:
            raise OffsetsOutOfOrder(
                f"partition {partition}: record at offset {record.offset} does not follow "
                f"offset {previous}"
            )
        previous = record.last_offset


def storable(text: str) -> str:
    """Text PostgreSQL accepts: NUL characters (which a producer may send) escaped."""
    return text.replace("\x00", "\\u0000")


def readable_ids(body: bytes) -> tuple[str | None, str | None]:
    """``(event_id, user_id)`` of an invalid body, each when it is a readable string.

    A body that is not a JSON object (cut short, say) is searched for the first
    ``"event_id": "..."`` and ``"user_id": "..."``: a child's dead letter must be found by an
    erasure even when its body is broken.
    """
    try:
        decoded = _EVENT_ID_PROBE.decode(body)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deeply
        decoded = {
            "event_id": _string_member(body, b"event_id"),
            "user_id": _string_member(body, b"user_id"),
        }
    event_id, user_id = decoded.get("event_id"), decoded.get("user_id")
    return (
        storable(event_id[:KEPT_EVENT_ID_CHARS]) if isinstance(event_id, str) else None,
        storable(user_id) if isinstance(user_id, str) else None,
    )


def _string_member(body: bytes, name: bytes) -> str | None:
    """The first ``"name": "<JSON string>"`` in ``body``, decoded (None when there is none)."""
    found = re.search(rb'"' + name + rb'"\s*:\s*("(?:[^"\\]|\\.)*")', body)
    if found is None:
        return None
    try:
        return _STRING.decode(found.group(1))
    except msgspec.DecodeError:
        return None


def misrouted_reason(routing_key: str, user_id: str) -> str:
    """Why an event published under another routing key than its ``user_id`` is dead: it names
    both (docs/contract.md, "Routing"); a key longer than ``QUOTED_KEY_CHARS`` is cut."""
    shown = routing_key[:QUOTED_KEY_CHARS]
    if len(routing_key) > QUOTED_KEY_CHARS:
        shown += "..."
    return _misrouted(repr(shown), user_id)


def erased_key_reason(user_id: str) -> str:
    """``misrouted_reason`` once the routing key's child was erased: the key is not quoted."""
    return storable(_misrouted("(an erased child's id)", user_id))


def _misrouted(shown_key: str, user_id: str) -> str:
    return (
        f"routing key {shown_key} is not the user_id {user_id!r}: the key chose the partition, "
        "so this user's events could sit in two partitions and lose their order; publish with "
        "routing key = user_id"
    )


def dead_letter(
    partition: int,
    record: LogRecord,
    field_name: str,
    reason: str,
    body: bytes | None = None,
    *,
    routing_key: str | None = None,
) -> DeadLetter:
    """The dead letter of ``record`` (raw bytes as in the log; ids read from ``body``, the
    decrypted body when there is one; ``routing_key`` only for a misrouted event)."""
    event_id, user_id = readable_ids(record.body if body is None else body)
    return DeadLetter(
        partition=partition,
        offset=record.offset,
        event_id=event_id,
        field=storable(field_name),
        reason=storable(reason),
        raw=record.body,
        user_id=user_id,
        routing_key=None if routing_key is None else storable(routing_key),
    )


def decode_records(
    partition: int,
    records: Sequence[LogRecord],
    poisoned: Mapping[int, str] | None = None,
    plaintexts: Mapping[int, bytes] | None = None,
) -> DecodedBatch:
    """Decode a batch into valid events and dead letters, in log order.

    Records with an ``error``, and those whose offset is in ``poisoned`` (offset -> reason, the
    records the database rejected, or encrypted ones that do not open), are dead letters
    whatever their body holds; so is a valid event whose routing key is not its ``user_id``.

    Args:
        partition: the records' partition.
        records: in log order.
        poisoned: offsets to dead-letter, with the reason.
        plaintexts: the decrypted body of each encrypted record, by offset (it is decoded in
            place of the record's body; a dead letter keeps the bytes of the log).
    """
    decoded = DecodedBatch()
    poisoned = poisoned or {}
    plaintexts = plaintexts or {}
    for record in records:
        reason = record.error or (poisoned.get(record.offset) if poisoned else None)
        body = plaintexts.get(record.offset, record.body) if plaintexts else record.body
        if reason is not None:
            decoded.dead.append(dead_letter(partition, record, "", reason, body))
            continue
        try:
            event = decode_event(body)
        except EventValidationError as error:
            decoded.dead.append(dead_letter(partition, record, error.field, error.reason, body))
            continue
        if record.routing_key is not None and record.routing_key != event.user_id:
            key = record.routing_key
            reason = misrouted_reason(key, event.user_id)
            decoded.dead.append(
                dead_letter(partition, record, "user_id", reason, body, routing_key=key)
            )
            continue
        decoded.valid.append((event, record.offset))
    return decoded


def reused_id_letters(
    partition: int, reused: Sequence[ReusedId], records: Sequence[LogRecord]
) -> list[DeadLetter]:
    """The dead letters of event ids reused for another user (``projections.event_ids``)."""
    if not reused:  # nearly every batch: no map of the batch's bodies to build
        return []
    bodies = {record.offset: record.body for record in records}
    return [
        DeadLetter(
            partition=partition,
            offset=use.offset,
            event_id=use.event.event_id,
            field="event_id",
            reason=storable(use.reason),
            raw=bodies[use.offset],
            user_id=use.event.user_id,
        )
        for use in reused
    ]


def rejected_reason(error: Exception) -> str:
    """The dead-letter reason of a record the database rejected (a value outside a column's
    range, say), the same for live processing and replay."""
    return f"the database rejected this event: {error}".strip()
