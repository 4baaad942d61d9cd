"""Decoding bytes into events, with errors that name the field and the reason."""

from __future__ import annotations

import codecs
import re
from datetime import UTC
from typing import Final

import msgspec

from schemas.events import Event

_DECODER: Final = msgspec.json.Decoder(Event)
_RAW_LIST_DECODER: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ENCODER: Final = msgspec.json.Encoder()
_AT_PATH: Final = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
#: Why a body nested deeper than the decoder's recursion limit is invalid.
TOO_DEEP: Final = "nested too deeply to decode"


class EventValidationError(ValueError):
    """An event body that breaks a rule of CONTRACT.md section 1 or 2.

    Attributes:
        field: dotted path of the offending field (``"data.topic"``), ``""`` for the whole body.
        reason: what is wrong, in words (``"Expected `int` <= 100"``).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field or '<body>'}: {reason}")
        self.field = field
        self.reason = reason


def _to_validation_error(exc: msgspec.DecodeError) -> EventValidationError:
    message = str(exc)
    match = _AT_PATH.search(message)
    path = match.group("path") if match else ""
    reason = message[: match.start()] if match else message
    missing = re.fullmatch(r"Object missing required field `(?P<name>[^`]+)`", reason)
    if missing is not None:
        path = f"{path}.{missing.group('name')}" if path else missing.group("name")
        reason = "missing required field"
    return EventValidationError(path, reason)


def decode_event(body: bytes | bytearray | memoryview | str) -> Event:
    """Decode and validate one event from its JSON body (UTF-8).

    Args:
        body: the message body exactly as received.

    Returns:
        A frozen ``TurnRecorded``, ``ConversationCompleted`` or ``FriendshipAdjusted``.

    Raises:
        EventValidationError: not JSON (bytes that are not UTF-8 included), not an object, a
            missing or wrongly typed field, an unknown ``type``, an out-of-range value, a naive
            timestamp or one whose instant falls outside years 1-9999 in UTC (CONTRACT.md section
            4), or nesting deeper than the decoder's recursion limit.
    """
    if not isinstance(body, str):
        # msgspec skips unknown fields without checking their bytes; the whole body must be UTF-8.
        try:
            codecs.utf_8_decode(body, "strict", True)
        except UnicodeDecodeError as exc:
            raise EventValidationError(
                "", f"not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
            ) from exc
    try:
        event: Event = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise _to_validation_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise EventValidationError("", f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise EventValidationError("", TOO_DEEP) from exc
    _check_utc_range(event)
    return event


def _check_utc_range(event: Event) -> None:
    """The instant must exist in UTC between years 1 and 9999 (``9999-12-31T23:59:59-01:00``
    does not: it is in year 10000 in UTC, which no timestamp store can hold)."""
    try:
        event.occurred_at.astimezone(UTC)
    except OverflowError as exc:
        raise EventValidationError(
            "occurred_at", "out of range: the instant in UTC must lie in years 0001-9999"
        ) from exc


def decode_event_batch(
    body: bytes,
) -> tuple[list[tuple[Event, bytes]], list[tuple[int, EventValidationError]]]:
    """Decode an HTTP ingest body: one event object or a JSON array of events.

    Args:
        body: the request body (UTF-8 JSON).

    Returns:
        ``(valid, invalid)``: ``valid`` holds ``(event, raw bytes of that item)`` in input order;
        ``invalid`` holds ``(index, error)``. A body that is not an array is one item (index 0),
        so a lone non-object or non-JSON body comes back as invalid item 0.

    Raises:
        EventValidationError: the body starts as an array but is not valid JSON (or is nested
            too deeply to decode).
    """
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        try:
            items = _RAW_LIST_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            raise EventValidationError("", f"not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise EventValidationError("", TOO_DEEP) from exc
        raws = [bytes(item) for item in items]
    else:
        raws = [bytes(body)]
    valid: list[tuple[Event, bytes]] = []
    invalid: list[tuple[int, EventValidationError]] = []
    for index, raw in enumerate(raws):
        try:
            valid.append((decode_event(raw), raw))
        except EventValidationError as error:
            invalid.append((index, error))
    return valid, invalid


def encode_event(event: Event) -> bytes:
    """Encode an event to its canonical JSON body (the ``type`` tag included)."""
    return _ENCODER.encode(event)
