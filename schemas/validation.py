"""Decoding bytes into events, with errors that name the field and the reason."""

from __future__ import annotations

import codecs
import re
from datetime import UTC
from typing import Any, Final, Union

import msgspec

from schemas.events import Event
from schemas.problems import OUT_OF_RANGE, RULES, list_problems
from schemas.upcasting import (
    CURRENT_VERSIONS,
    NEWEST_VERSION,
    AnyVersion,
    newer_version_reason,
    structs_at,
    upcast,
)


class _Probe(msgspec.Struct):
    """The two envelope fields that choose a decoder (every other field is skipped)."""

    type: Any = None
    version: Any = 1


#: One decoder per envelope version: the tagged union of every type's Struct at that version.
_DECODERS: Final[dict[int, msgspec.json.Decoder[AnyVersion]]] = {
    version: msgspec.json.Decoder(Union[structs_at(version)])  # noqa: UP007
    for version in range(1, NEWEST_VERSION + 1)
}
_PROBE: Final = msgspec.json.Decoder(_Probe)
#: A body without these bytes names no ``version``, or only with an escape (``_decoder_for``).
_VERSION_KEY: Final = b'"version"'
_ESCAPE: Final = b"\\u"
_RAW_LIST_DECODER: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ENCODER: Final = msgspec.json.Encoder()
_ANY_DECODER: Final = msgspec.json.Decoder()
_AT_PATH: Final = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
#: Seven or more digits after a dot somewhere in a body: maybe a timestamp to truncate.
_LONG_FRACTION: Final = re.compile(rb"\.\d{7}")
#: The fraction of a timestamp: its first six digits are kept.
_FRACTION: Final = re.compile(r"(\.\d{6})\d+")
#: A JSON escape of a UTF-16 surrogate (a lone one is not a character).
_LONE_SURROGATE: Final = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"  # a high one without its low one
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a low one alone
)
#: The years whose times may fall outside years 1-9999 in UTC (an offset is under a day).
_EDGE_YEARS: Final = frozenset({1, 9999})
#: Why a body nested deeper than the decoder's recursion limit is invalid.
TOO_DEEP: Final = "nested too deeply to decode"


class EventValidationError(ValueError):
    """An event body that breaks a rule of docs/contract.md section 1 or 2.

    Attributes:
        field: dotted path of the first offending field (``"data.topic"``), ``""`` for the
            whole body.
        reason: what is wrong with it, in words (``"1 to 64 characters from a-z, 0-9 and _"``).
        problems: every ``(field, reason)`` found, the first one included.
    """

    def __init__(self, field: str, reason: str, problems: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{field or '<body>'}: {reason}")
        self.field = field
        self.reason = reason
        self.problems = problems or ((field, reason),)


def _to_validation_error(
    exc: msgspec.DecodeError, body: bytes | bytearray | str
) -> EventValidationError:
    """Every problem of the body in words (``schemas.problems``), or msgspec's own when those
    checks find none; a regular expression never reaches the message."""
    try:
        problems = list_problems(_ANY_DECODER.decode(body))
    except (msgspec.DecodeError, RecursionError):
        problems = []
    if problems:
        field, reason = problems[0]
        return EventValidationError(field, reason, tuple(problems))
    message = str(exc)
    match = _AT_PATH.search(message)
    path = match.group("path") if match else ""
    reason = message[: match.start()] if match else message
    missing = re.fullmatch(r"Object missing required field `(?P<name>[^`]+)`", reason)
    if missing is not None:
        path = f"{path}.{missing.group('name')}" if path else missing.group("name")
        reason = "missing required field"
    if "regex" in reason:
        reason = RULES.get(path, "breaks the contract's rule for this field")
    return EventValidationError(path, reason)


def not_json_reason(exc: msgspec.DecodeError, body: bytes | bytearray | str) -> str:
    """Why msgspec could not decode ``body`` (``"not valid JSON: ..."``), honest about lone
    surrogate escapes (which msgspec reports as "Input data was truncated")."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if _LONE_SURROGATE.search(raw):
        return (
            "not valid JSON: a string holds a lone UTF-16 surrogate escape (such as \\ud800), "
            "which is not a Unicode character"
        )
    return f"not valid JSON: {exc}"


def _not_json(exc: msgspec.DecodeError, body: bytes | bytearray | str) -> EventValidationError:
    return EventValidationError("", not_json_reason(exc, body))


def _truncate_fractions(body: bytes | bytearray | str) -> bytes | bytearray | str:
    """The body with ``occurred_at`` cut to microseconds when it has more fraction digits.

    msgspec rounds to the nearest microsecond (``...59.9999996Z`` becomes the next year);
    the contract truncates (docs/contract.md section 1, "Times are kept to the microsecond"). Only
    bodies with seven or
    more digits after a dot come here, so valid traffic pays one byte search.
    """
    try:
        value = _ANY_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body  # the decoder reports it
    if not isinstance(value, dict) or not isinstance(value.get("occurred_at"), str):
        return body
    cut = _FRACTION.sub(lambda m: m.group(1), value["occurred_at"], count=1)
    if cut == value["occurred_at"]:
        return body
    value["occurred_at"] = cut
    return _ENCODER.encode(value)


def decode_event(body: bytes | bytearray | memoryview | str) -> Event:
    """Decode and validate one event from its JSON body (UTF-8).

    Args:
        body: the message body exactly as received.

    Returns:
        A frozen ``TurnRecorded``, ``ConversationCompleted`` or ``FriendshipAdjusted``, at its
        type's current version (older versions are upcast: ``schemas.upcasting``).

    Raises:
        EventValidationError: not JSON (bytes that are not UTF-8 included), not an object, a
            missing or wrongly typed field, an unknown ``type``, an out-of-range value, a naive
            timestamp or one whose instant falls outside years 1-9999 in UTC (docs/contract.md
            section 4), nesting deeper than the decoder's recursion limit, or a ``version``
            that is not a whole number from 1 or is newer than this code knows.
    """
    if isinstance(body, memoryview):
        body = bytes(body)
    if not isinstance(body, str) and not body.isascii():
        # msgspec skips unknown fields without checking their bytes; the whole body must be UTF-8
        # (ASCII is: most bodies pass that check without a decoded copy).
        try:
            codecs.utf_8_decode(body, "strict", True)
        except UnicodeDecodeError as exc:
            raise EventValidationError(
                "", f"not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
            ) from exc
    scanned = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if _LONG_FRACTION.search(scanned):
        body = _truncate_fractions(body)
    probed = _VERSION_KEY in scanned
    decoder = _decoder_for(body) if probed else _DECODERS[1]
    try:
        event = upcast(decoder.decode(body))
    except msgspec.ValidationError as exc:
        if not probed and _ESCAPE in scanned and _decoder_for(body) is not decoder:
            # The member's name is escaped ("\u0076ersion"): decode the body written plainly.
            return decode_event(_ENCODER.encode(_ANY_DECODER.decode(body)))
        raise _to_validation_error(exc, body) from exc
    except msgspec.DecodeError as exc:
        raise _not_json(exc, body) from exc
    except RecursionError as exc:
        raise EventValidationError("", TOO_DEEP) from exc
    _check_utc_range(event)
    return event


def _decoder_for(body: bytes | bytearray | str) -> Any:
    """The decoder of the body's envelope ``version`` (absent = 1; ``schemas.upcasting``).

    A body that cannot be probed (not JSON, not an object) gets version 1's decoder, whose
    error then describes it. ``decode_event`` skips this probe for a body without
    ``"version"`` in its bytes: version 1's Structs refuse any other version (``Literal[1]``),
    so an escaped name is seen on that error path.

    Raises:
        EventValidationError: ``version`` is not a whole number from 1, or is newer than this
            code knows for the event's type.
    """
    try:
        probe = _PROBE.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return _DECODERS[1]
    version, kind = probe.version, probe.type
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EventValidationError("version", RULES["version"])
    current = CURRENT_VERSIONS.get(kind) if isinstance(kind, str) else None
    if current is not None and version > current:
        raise EventValidationError("version", newer_version_reason(kind, version))
    return _DECODERS[min(version, NEWEST_VERSION)]


def _check_utc_range(event: Event) -> None:
    """The instant must exist in UTC between years 1 and 9999 (``9999-12-31T23:59:59-01:00``
    does not: it is in year 10000 in UTC, which no timestamp store can hold). Only a time in
    year 1 or 9999 can be a day from the edge, so no other is converted."""
    if event.occurred_at.year not in _EDGE_YEARS:
        return
    try:
        event.occurred_at.astimezone(UTC)
    except OverflowError as exc:
        raise EventValidationError("occurred_at", OUT_OF_RANGE) from exc


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
            raise _not_json(exc, body) from exc
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
