"""The envelope rules (docs/contract.md sections 1 and 4): what ``decode_event`` accepts and
rejects.

The per-type ``data`` rules and ``decode_event_batch`` are in ``test_schemas_data.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import (
    ConversationCompleted,
    EventValidationError,
    FriendshipAdjusted,
    TurnRecorded,
    decode_event,
)
from tests.strategies import (
    ADJUSTED,
    COMPLETED,
    EVENT_TYPES,
    SAMPLE_EVENT_ID,
    TURN_RECORDED,
    sample_event_dict,
)

MISSING = object()


def body(type_: str = TURN_RECORDED, path: str = "", value: Any = MISSING) -> bytes:
    """A valid sample event with the field at dotted ``path`` set to ``value`` (or removed)."""
    event = sample_event_dict(type_)
    if path:
        *parents, name = path.split(".")
        target = event
        for parent in parents:
            target = target[parent]
        if value is MISSING:
            del target[name]
        else:
            target[name] = value
    return json.dumps(event).encode()


def rejected(raw: bytes) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        decode_event(raw)
    assert info.value.reason, "a rejection must say why"
    return info.value


# --- valid events -------------------------------------------------------------------------------


def test_accepts_turn_recorded() -> None:
    event = decode_event(body(TURN_RECORDED))
    assert isinstance(event, TurnRecorded)
    assert event.event_id == SAMPLE_EVENT_ID
    assert event.user_id == "alice"
    assert event.occurred_at == datetime(2024, 5, 1, 5, 30, tzinfo=UTC)
    assert (event.data.conversation_id, event.data.topic) == ("conv-1", "space")
    assert (event.data.speaker, event.data.sentiment.label) == ("child", "curious")


def test_accepts_conversation_completed() -> None:
    event = decode_event(body(COMPLETED))
    assert isinstance(event, ConversationCompleted)
    assert (event.data.conversation_id, event.data.topic) == ("conv-1", "space")
    assert (event.data.turns, event.data.duration_s, event.data.rating) == (12, 95.5, "good")


def test_accepts_friendship_adjusted() -> None:
    event = decode_event(body(ADJUSTED))
    assert isinstance(event, FriendshipAdjusted)
    assert (event.data.delta, event.data.reason) == (-7, "operator correction")


def test_accepts_str_and_bytearray_bodies() -> None:
    raw = body(ADJUSTED)
    assert decode_event(raw.decode()) == decode_event(bytearray(raw)) == decode_event(raw)


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_unknown_top_level_field_is_ignored(type_: str) -> None:
    assert decode_event(body(type_, "schema_version", {"major": 2})) == decode_event(body(type_))


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_unknown_data_field_is_ignored(type_: str) -> None:
    assert decode_event(body(type_, "data.added_later", [1, "x"])) == decode_event(body(type_))


def test_data_is_validated_against_its_type() -> None:
    """Turn data under the adjusted type is not an adjustment: its `delta` is missing."""
    event = sample_event_dict(TURN_RECORDED)
    event["type"] = ADJUSTED
    assert rejected(json.dumps(event).encode()).field == "data.delta"


# --- event_id -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_id",
    [
        pytest.param("3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b", id="lowercase-v4"),
        pytest.param("3F2B8C1E-9A4D-4E6F-8B7A-0C1D2E3F4A5B", id="uppercase"),
        pytest.param("3f2B8c1E-9a4d-1e6f-8b7a-0c1d2e3f4a5b", id="mixed-case-v1"),
        pytest.param("018f3c2a-7b1c-7d2e-9f00-0123456789ab", id="v7"),
        pytest.param("00000000-0000-0000-0000-000000000000", id="nil"),
    ],
)
def test_event_id_canonical_uuid_accepted(event_id: str) -> None:
    assert decode_event(body(path="event_id", value=event_id)).event_id == event_id


@pytest.mark.parametrize(
    "event_id",
    [
        pytest.param("3f2b8c1e9a4d4e6f8b7a0c1d2e3f4a5b", id="32-hex-no-dashes"),
        pytest.param("{3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b}", id="braces"),
        pytest.param("3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b\n", id="trailing-newline"),
        pytest.param(" 3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b", id="leading-space"),
        pytest.param("urn:uuid:3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b", id="urn"),
        pytest.param("3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5g", id="non-hex"),
        pytest.param("3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5", id="short-last-group"),
        pytest.param("3f2b8c1e9-a4d-4e6f-8b7a-0c1d2e3f4a5b", id="dashes-misplaced"),
        pytest.param("", id="empty"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
        pytest.param(MISSING, id="missing"),
    ],
)
def test_event_id_rejected(event_id: object) -> None:
    assert rejected(body(path="event_id", value=event_id)).field == "event_id"


# --- user_id ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("a", id="one-char"),
        pytest.param("u" * 128, id="128-chars"),
        pytest.param("AZaz09._:@-", id="every-allowed-class"),
        pytest.param("child:42@school.example", id="typical"),
    ],
)
def test_user_id_accepted(user_id: str) -> None:
    assert decode_event(body(path="user_id", value=user_id)).user_id == user_id


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("", id="empty"),
        pytest.param("u" * 129, id="129-chars"),
        pytest.param("ann smith", id="space"),
        pytest.param("ann/smith", id="slash"),
        pytest.param("zoë", id="unicode"),
        pytest.param("ann\n", id="trailing-newline"),
        pytest.param("\nann", id="leading-newline"),
        pytest.param("ann+1", id="plus"),
        pytest.param(7, id="number"),
        pytest.param(None, id="null"),
        pytest.param(MISSING, id="missing"),
    ],
)
def test_user_id_rejected(user_id: object) -> None:
    assert rejected(body(path="user_id", value=user_id)).field == "user_id"


# --- occurred_at --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "instant", "offset"),
    [
        pytest.param("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC), 0, id="Z"),
        pytest.param(
            "2024-05-01T12:30:00+07:00", datetime(2024, 5, 1, 5, 30, tzinfo=UTC), 420, id="+07:00"
        ),
        pytest.param(
            "2024-05-01T12:30:00-05:30", datetime(2024, 5, 1, 18, 0, tzinfo=UTC), -330, id="-05:30"
        ),
        pytest.param(
            "2024-05-01T12:30:00.250+00:00",
            datetime(2024, 5, 1, 12, 30, 0, 250_000, tzinfo=UTC),
            0,
            id="fraction",
        ),
    ],
)
def test_occurred_at_with_offset_accepted(text: str, instant: datetime, offset: int) -> None:
    occurred_at = decode_event(body(path="occurred_at", value=text)).occurred_at
    assert occurred_at == instant
    assert occurred_at.utcoffset() == timedelta(minutes=offset)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2024-05-01T12:30:00", id="naive"),
        pytest.param("2024-05-01T12:30:00.123456", id="naive-fraction"),
        pytest.param("2024-05-01", id="date-only"),
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("2024-13-01T00:00:00Z", id="month-13"),
        pytest.param("2024-05-01T12:30:00+24:00", id="offset-out-of-range"),
        pytest.param(1714563000, id="unix-number"),
        pytest.param(None, id="null"),
        pytest.param(MISSING, id="missing"),
    ],
)
def test_occurred_at_rejected(text: object) -> None:
    assert rejected(body(path="occurred_at", value=text)).field == "occurred_at"


# --- type ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_",
    [
        pytest.param("conversation.started", id="unknown"),
        pytest.param("Friendship.Adjusted", id="wrong-case"),
        pytest.param("friendship.adjusted ", id="trailing-space"),
        pytest.param("", id="empty"),
        pytest.param(3, id="number"),
        pytest.param(None, id="null"),
        pytest.param(MISSING, id="missing"),
    ],
)
def test_type_rejected(type_: object) -> None:
    assert rejected(body(path="type", value=type_)).field == "type"


# --- data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([], id="array"),
        pytest.param("delta=1", id="string"),
        pytest.param(None, id="null"),
        pytest.param(MISSING, id="missing"),
    ],
)
def test_data_must_be_an_object(data: object) -> None:
    assert rejected(body(ADJUSTED, "data", data)).field == "data"


# --- the body as a whole ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="whitespace"),
        pytest.param(body()[:-1], id="truncated"),
        pytest.param(body() + b"{}", id="trailing-garbage"),
        pytest.param(b"{'event_id': 1}", id="single-quotes"),
    ],
)
def test_not_json_rejected_as_body(raw: bytes) -> None:
    assert rejected(raw).field == ""


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" + body() + b"]", id="array"),
        pytest.param(b'"an event"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="bool"),
    ],
)
def test_json_that_is_not_an_object_rejected_as_body(raw: bytes) -> None:
    assert rejected(raw).field == ""


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(body(ADJUSTED).replace(b"operator", b"op\xe9rator"), id="latin-1-in-string"),
        pytest.param(b"\xff\xfe" + body(), id="bytes-before-object"),
        pytest.param(body().decode().encode("utf-16"), id="utf-16"),
    ],
)
def test_non_utf8_bytes_rejected(raw: bytes) -> None:
    assert rejected(raw).field == ""


def test_error_names_field_and_reason_in_message() -> None:
    error = rejected(body(path="user_id", value="a b"))
    assert error.field in str(error)
    assert error.reason in str(error)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2024-12-31T23:59:59.9999996Z", datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        ("9999-12-31T23:59:59.9999995Z", datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        ("2024-06-01T10:00:00.1234569+02:00", datetime(2024, 6, 1, 8, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-06-01T10:00:00.123456Z", datetime(2024, 6, 1, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-06-01T10:00:00.1Z", datetime(2024, 6, 1, 10, 0, 0, 100_000, tzinfo=UTC)),
        ("2024-06-01T10:00:00.000000999Z", datetime(2024, 6, 1, 10, 0, 0, 0, tzinfo=UTC)),
    ],
)
def test_fractions_beyond_microseconds_are_truncated_never_rounded(
    given: str, stored: datetime
) -> None:
    # Regression: msgspec rounded, so ...59.9999996Z became the next year and
    # 9999-12-31T23:59:59.9999995Z was refused as out of range.
    event = sample_event_dict(TURN_RECORDED)
    event["occurred_at"] = given
    assert decode_event(json.dumps(event).encode()).occurred_at == stored


def test_a_long_fraction_elsewhere_changes_nothing() -> None:
    event = sample_event_dict("conversation.completed")
    event["data"]["duration_s"] = 12.123456789
    decoded = decode_event(json.dumps(event).encode())
    assert decoded.data.duration_s == pytest.approx(12.123456789)  # type: ignore[union-attr]


def test_a_lone_surrogate_escape_gets_an_honest_reason() -> None:
    # Regression: the reason was msgspec's "Input data was truncated".
    body = json.dumps(sample_event_dict(TURN_RECORDED)).replace('"child"', '"\\ud800"')
    with pytest.raises(EventValidationError, match="lone UTF-16 surrogate") as caught:
        decode_event(body.encode())
    assert "truncated" not in str(caught.value)


def test_every_problem_of_an_event_is_listed_in_words() -> None:
    event = sample_event_dict(TURN_RECORDED)
    event["user_id"] = "has space"
    event["data"]["topic"] = "Not-Valid"
    del event["data"]["speaker"]
    with pytest.raises(EventValidationError) as caught:
        decode_event(json.dumps(event).encode())
    assert caught.value.problems == (
        ("user_id", "1 to 128 characters from A-Z, a-z, 0-9 and . _ : @ -"),
        ("data.topic", "1 to 64 characters from a-z, 0-9 and _"),
        ("data.speaker", "missing; must be child or robot"),
    )
    assert (caught.value.field, caught.value.reason) == caught.value.problems[0]
