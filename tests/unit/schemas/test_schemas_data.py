"""The per-type ``data`` rules (docs/contract.md section 2) and ``decode_event_batch``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas import EventValidationError, decode_event, decode_event_batch
from tests.strategies import (
    ADJUSTED,
    COMPLETED,
    RATING_LABELS,
    SAMPLE_DATA,
    SENTIMENT_LABELS,
    TURN_RECORDED,
    sample_event_dict,
)

MISSING = object()
CONVERSATION_TYPES = [pytest.param(TURN_RECORDED, id="turn"), pytest.param(COMPLETED, id="done")]


def body(type_: str, field: str, value: Any = MISSING) -> bytes:
    """A valid sample event of ``type_`` with ``data[field]`` set to ``value`` (or removed)."""
    event = sample_event_dict(type_)
    if value is MISSING:
        del event["data"][field]
    else:
        event["data"][field] = value
    return json.dumps(event).encode()


def accepted(type_: str, field: str, value: Any) -> Any:
    """The decoded value of ``data[field]``."""
    return getattr(decode_event(body(type_, field, value)).data, field)


def rejected_field(type_: str, field: str, value: Any = MISSING) -> str:
    with pytest.raises(EventValidationError) as info:
        decode_event(body(type_, field, value))
    assert info.value.reason
    return info.value.field


@pytest.mark.parametrize(
    ("type_", "field"),
    [pytest.param(t, f, id=f"{t.split('.')[-1]}-{f}") for t in SAMPLE_DATA for f in SAMPLE_DATA[t]],
)
def test_missing_data_field_is_named(type_: str, field: str) -> None:
    assert rejected_field(type_, field) == f"data.{field}"


# --- conversation_id and topic (both conversation types) ----------------------------------------


@pytest.mark.parametrize("type_", CONVERSATION_TYPES)
@pytest.mark.parametrize(
    "value", ["c", "c" * 128, "é" * 128, "conv 1/2"], ids=["1", "128", "128-unicode", "any-chars"]
)
def test_conversation_id_accepted(type_: str, value: str) -> None:
    assert accepted(type_, "conversation_id", value) == value


@pytest.mark.parametrize("type_", CONVERSATION_TYPES)
@pytest.mark.parametrize("value", ["", "c" * 129, 5, None], ids=["empty", "129", "number", "null"])
def test_conversation_id_rejected(type_: str, value: object) -> None:
    assert rejected_field(type_, "conversation_id", value) == "data.conversation_id"


@pytest.mark.parametrize("type_", CONVERSATION_TYPES)
@pytest.mark.parametrize(
    "value", ["a", "space_2", "t" * 64, "0_9"], ids=["1", "underscore-digit", "64", "digits"]
)
def test_topic_accepted(type_: str, value: str) -> None:
    assert accepted(type_, "topic", value) == value


@pytest.mark.parametrize("type_", CONVERSATION_TYPES)
@pytest.mark.parametrize(
    "value",
    ["", "t" * 65, "Space", "outer-space", "outer space", "café", "space\n", "a.b", 1, None],
    ids=[
        "empty",
        "65",
        "uppercase",
        "hyphen",
        "space",
        "unicode",
        "newline",
        "dot",
        "number",
        "null",
    ],
)
def test_topic_rejected(type_: str, value: object) -> None:
    assert rejected_field(type_, "topic", value) == "data.topic"


# --- conversation.turn_recorded -----------------------------------------------------------------


@pytest.mark.parametrize("speaker", ["child", "robot"])
def test_speaker_accepted(speaker: str) -> None:
    assert accepted(TURN_RECORDED, "speaker", speaker) == speaker


@pytest.mark.parametrize(
    "speaker", ["Child", "parent", "", None], ids=["Child", "parent", "empty", "null"]
)
def test_speaker_rejected(speaker: object) -> None:
    assert rejected_field(TURN_RECORDED, "speaker", speaker) == "data.speaker"


@pytest.mark.parametrize("label", SENTIMENT_LABELS)
def test_every_sentiment_label_accepted(label: str) -> None:
    assert accepted(TURN_RECORDED, "sentiment", label).label == label


@pytest.mark.parametrize(
    "label", ["Happy", "joy", "", 1, None], ids=["Happy", "joy", "empty", "number", "null"]
)
def test_sentiment_rejected(label: object) -> None:
    assert rejected_field(TURN_RECORDED, "sentiment", label) == "data.sentiment"


# --- conversation.completed ---------------------------------------------------------------------


@pytest.mark.parametrize("rating", RATING_LABELS)
def test_every_rating_accepted(rating: str) -> None:
    assert accepted(COMPLETED, "rating", rating) == rating


@pytest.mark.parametrize("rating", ["Not Good", "not good", "NOT_GOOD", "great", "", None])
def test_rating_rejected(rating: object) -> None:
    assert rejected_field(COMPLETED, "rating", rating) == "data.rating"


@pytest.mark.parametrize("turns", [0, 1, 10_000])
def test_turns_accepted(turns: int) -> None:
    value = accepted(COMPLETED, "turns", turns)
    assert value == turns
    assert type(value) is int


@pytest.mark.parametrize(
    "turns",
    [True, False, 3.0, 2.5, "3", 10_001, -1, 2**65, -(2**65), 2**64 + 1, None],
    ids=[
        "true",
        "false",
        "float-3.0",
        "float",
        "string",
        "10001",
        "-1",
        "65-bit",
        "-65-bit",
        "2^64+1",
        "null",
    ],
)
def test_turns_rejected(turns: object) -> None:
    """2**65 == 36893488147419103232: it must be refused, never wrapped into range."""
    assert rejected_field(COMPLETED, "turns", turns) == "data.turns"


@pytest.mark.parametrize(
    ("duration", "expected"),
    [(0, 0.0), (60, 60.0), (0.5, 0.5), (86_400, 86_400.0), (86_400.0, 86_400.0)],
    ids=["0", "int", "float", "max-int", "max-float"],
)
def test_duration_s_accepted(duration: float, expected: float) -> None:
    value = accepted(COMPLETED, "duration_s", duration)
    assert value == expected
    assert type(value) is float


@pytest.mark.parametrize(
    "duration",
    [-1, -0.5, 86_400.5, 86_401, True, False, "60", None],
    ids=["-1", "-0.5", "86400.5", "86401", "true", "false", "string", "null"],
)
def test_duration_s_rejected(duration: object) -> None:
    assert rejected_field(COMPLETED, "duration_s", duration) == "data.duration_s"


# --- friendship.adjusted ------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-100, -1, 0, 1, 100])
def test_delta_accepted(delta: int) -> None:
    assert accepted(ADJUSTED, "delta", delta) == delta


@pytest.mark.parametrize(
    "delta",
    [True, False, 1.0, 0.5, 101, -101, 2**64, -(2**64), "5", None],
    ids=["true", "false", "float-1.0", "float", "101", "-101", "2^64", "-2^64", "string", "null"],
)
def test_delta_rejected(delta: object) -> None:
    assert rejected_field(ADJUSTED, "delta", delta) == "data.delta"


@pytest.mark.parametrize("reason", ["x", "r" * 256, "é" * 256], ids=["1", "256", "256-unicode"])
def test_reason_accepted(reason: str) -> None:
    assert accepted(ADJUSTED, "reason", reason) == reason


@pytest.mark.parametrize("reason", ["", "r" * 257, 5, None], ids=["empty", "257", "number", "null"])
def test_reason_rejected(reason: object) -> None:
    assert rejected_field(ADJUSTED, "reason", reason) == "data.reason"


# --- decode_event_batch -------------------------------------------------------------------------


def _raw(type_: str = ADJUSTED, **data: Any) -> bytes:
    event = sample_event_dict(type_)
    event["data"].update(data)
    return json.dumps(event).encode()


def test_batch_single_valid_object() -> None:
    raw = _raw()
    valid, invalid = decode_event_batch(raw)
    assert invalid == []
    assert valid == [(decode_event(raw), raw)]


def test_batch_single_invalid_object_is_index_0() -> None:
    valid, invalid = decode_event_batch(_raw(delta=500))
    assert valid == []
    assert [(index, error.field) for index, error in invalid] == [(0, "data.delta")]


def test_batch_array_reports_the_bad_item_index() -> None:
    items = [_raw(delta=1), _raw(TURN_RECORDED, topic="Bad-Topic"), _raw(COMPLETED, rating="good")]
    valid, invalid = decode_event_batch(b"  [" + b", ".join(items) + b"]")
    assert [(index, error.field) for index, error in invalid] == [(1, "data.topic")]
    assert [event for event, _ in valid] == [decode_event(items[0]), decode_event(items[2])]
    # Each valid item comes with its own raw bytes, which decode to that same event.
    assert [decode_event(raw) for _, raw in valid] == [event for event, _ in valid]


def test_batch_array_of_non_objects() -> None:
    valid, invalid = decode_event_batch(b'[1, "x", null, [], true]')
    assert valid == []
    assert [(index, error.field) for index, error in invalid] == [(i, "") for i in range(5)]


def test_batch_empty_array() -> None:
    assert decode_event_batch(b"[]") == ([], [])


def test_batch_malformed_array_is_a_body_error() -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event_batch(b"[" + _raw() + b",")
    assert info.value.field == ""


@pytest.mark.parametrize(
    "raw", [b"garbage", b'"text"', b"\xff\xfe"], ids=["not-json", "string", "not-utf8"]
)
def test_batch_body_neither_object_nor_array_is_refused(raw: bytes) -> None:
    """Either raised or reported as item 0; in both cases nothing is valid and the field is ""."""
    try:
        valid, invalid = decode_event_batch(raw)
    except EventValidationError as error:
        assert error.field == ""
    else:
        assert valid == []
        assert [(index, error.field) for index, error in invalid] == [(0, "")]
