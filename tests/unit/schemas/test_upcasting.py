"""Event versions: older versions decode and upcast to the current shape, newer ones are
refused with a reason, and a log mixing versions folds as if it were written in the newest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.fold import fold_by_user
from schemas import EventValidationError, decode_event
from schemas.events import SentimentReading, TurnRecorded
from schemas.upcasting import CURRENT_VERSIONS, V1_CONFIDENCE
from testkit.reference import reference_fold
from tests.strategies import TURN_RECORDED, sample_event_dict, valid_event_logs


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def as_v2(event: dict[str, Any], confidence: float) -> dict[str, Any]:
    """The same event written as version 2 (only turns changed between 1 and 2)."""
    if event["type"] != TURN_RECORDED:
        return event
    data = {
        **event["data"],
        "sentiment": {"label": event["data"]["sentiment"], "confidence": confidence},
    }
    return {**event, "version": 2, "data": data}


def test_a_version_1_turn_is_upcast_to_the_current_shape() -> None:
    event = sample_event_dict()
    decoded = decode_event(body(event))
    assert isinstance(decoded, TurnRecorded) and decoded.version == 2
    assert decoded.data.sentiment == SentimentReading("curious", V1_CONFIDENCE)
    explicit = decode_event(body({**event, "version": 1}))
    assert explicit == decoded, "version 1 written out is version 1 absent"


def test_a_version_2_turn_keeps_its_confidence() -> None:
    decoded = decode_event(body(as_v2(sample_event_dict(), 0.25)))
    assert isinstance(decoded, TurnRecorded)
    assert decoded.data.sentiment == SentimentReading("curious", 0.25)


@pytest.mark.parametrize(
    ("version", "sentiment"),
    [
        (2, "curious"),  # a version-1 label in a version-2 event
        (2, {"label": "curious", "confidence": 1.5}),
        (2, {"label": "joy", "confidence": 0.5}),
        (2, {"label": "curious"}),
        (1, {"label": "curious", "confidence": 0.5}),  # a version-2 object in version 1
    ],
)
def test_each_version_is_checked_by_its_own_rules(version: int, sentiment: object) -> None:
    event = sample_event_dict()
    event["data"]["sentiment"] = sentiment
    with pytest.raises(EventValidationError) as raised:
        decode_event(body({**event, "version": version}))
    assert raised.value.field == "data.sentiment"
    expected = "confidence" in raised.value.reason
    assert expected == (version == 2), raised.value.reason


@pytest.mark.parametrize(
    ("kind", "version"),
    [(TURN_RECORDED, 3), ("conversation.completed", 2), ("friendship.adjusted", 9)],
)
def test_a_version_newer_than_the_code_knows_is_invalid_with_a_clear_reason(
    kind: str, version: int
) -> None:
    event = {**sample_event_dict(kind), "version": version}
    with pytest.raises(EventValidationError) as raised:
        decode_event(body(event))
    assert raised.value.field == "version"
    assert f"version {version} of {kind} is newer than this processor knows" in raised.value.reason
    assert f"versions 1 to {CURRENT_VERSIONS[kind]}" in raised.value.reason


def test_an_escaped_version_name_is_still_the_version() -> None:
    text = body(sample_event_dict())[:-1] + b', "\\u0076ersion": 3}'
    with pytest.raises(EventValidationError) as raised:
        decode_event(text)
    assert raised.value.field == "version"


@pytest.mark.parametrize("version", [0, -1, "2", True, 1.5, None])
def test_a_version_that_is_not_a_whole_number_from_1_is_invalid(version: object) -> None:
    with pytest.raises(EventValidationError) as raised:
        decode_event(body({**sample_event_dict(), "version": version}))
    assert raised.value.field == "version"
    assert "whole number from 1" in raised.value.reason


@settings(max_examples=150, deadline=None)
@given(
    valid_event_logs(max_size=40),
    st.lists(st.booleans(), min_size=40, max_size=40),
    st.lists(st.floats(min_value=0, max_value=1), min_size=40, max_size=40),
)
def test_a_log_mixing_versions_folds_as_the_same_log_written_in_version_2(
    bodies: list[bytes], written_as_v2: list[bool], confidences: list[float]
) -> None:
    events = [json.loads(b) for b in bodies]
    all_v2 = [body(as_v2(e, c)) for e, c in zip(events, confidences, strict=False)]
    mixed = [
        v2 if upgraded else original
        for original, v2, upgraded in zip(bodies, all_v2, written_as_v2, strict=False)
    ]
    folded = fold_by_user(decode_event(b) for b in mixed)
    assert folded == fold_by_user(decode_event(b) for b in all_v2)
    assert reference_fold(mixed) == reference_fold(bodies)


def test_a_valid_version_2_event_with_an_escaped_version_name_decodes() -> None:
    text = body(as_v2(sample_event_dict(), 0.5)).replace(b'"version"', b'"\\u0076ersion"')
    decoded = decode_event(text)
    assert isinstance(decoded, TurnRecorded)
    assert decoded.data.sentiment == SentimentReading("curious", 0.5)
