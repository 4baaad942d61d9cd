"""Every problem of an invalid event, in words (``schemas.problems`` through ``decode_event``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas import EventValidationError, decode_event
from schemas.problems import OUT_OF_RANGE, RULES, list_problems
from tests.strategies import ADJUSTED, COMPLETED, EVENT_TYPES, TURN_RECORDED, sample_event_dict

NAIVE_REASON_START = "no time zone"


def problems_of(event: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    with pytest.raises(EventValidationError) as caught:
        decode_event(json.dumps(event).encode())
    error = caught.value
    assert (error.field, error.reason) == error.problems[0]
    return error.problems


def test_only_the_timestamp_is_named_as_missing_a_time_zone() -> None:
    # Regression: any envelope string that parsed as a naive date-time got the "no time zone"
    # reason, so an event_id "2024-05-01" was told to add a UTC offset.
    event = sample_event_dict(TURN_RECORDED)
    event["event_id"] = "2024-05-01"
    event["user_id"] = "2024-05-01 10:00"
    event["occurred_at"] = "2024-05-01T10:00:00"
    problems = dict(problems_of(event))
    assert problems["event_id"] == RULES["event_id"]
    assert problems["user_id"] == RULES["user_id"]
    assert problems["occurred_at"].startswith(NAIVE_REASON_START)


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_instant_outside_utc_years_is_listed_with_the_other_problems(at: str) -> None:
    # Regression: msgspec stopped at the bad topic and the range was checked only after a
    # successful decode, so the out-of-range occurred_at was not listed.
    event = sample_event_dict(TURN_RECORDED)
    event["occurred_at"] = at
    event["data"]["topic"] = "Bad Topic"
    assert problems_of(event) == (
        ("occurred_at", OUT_OF_RANGE),
        ("data.topic", RULES["data.topic"]),
    )


def test_an_instant_outside_utc_years_alone_keeps_its_reason() -> None:
    event = sample_event_dict(TURN_RECORDED)
    event["occurred_at"] = "0001-01-01T00:00:00+01:00"
    assert problems_of(event) == (("occurred_at", OUT_OF_RANGE),)


_BAD_VALUES: list[Any] = [
    None,
    True,
    -101,
    10_001,
    5.5,
    "",
    "x" * 300,
    "has space",
    "Not_Lower",
    "2024-01-01T00:00:00",
    [],
    {},
]
_FIELDS = {
    TURN_RECORDED: ["conversation_id", "topic", "speaker", "sentiment"],
    COMPLETED: ["conversation_id", "topic", "turns", "duration_s", "rating"],
    ADJUSTED: ["delta", "reason"],
}


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_no_reason_holds_a_regular_expression_or_the_bad_value(kind: str) -> None:
    # Regression: the reason was msgspec's "Expected `str` matching regex '^[a-z0-9_]{1,64}...'".
    paths = ["event_id", "user_id", "occurred_at", "type"] + [f"data.{f}" for f in _FIELDS[kind]]
    for path in paths:
        for value in _BAD_VALUES:
            event = sample_event_dict(kind)
            *parents, name = path.split(".")
            target = event["data"] if parents else event
            target[name] = value
            try:
                decode_event(json.dumps(event).encode())
            except EventValidationError as error:
                for field, reason in error.problems:
                    assert field in RULES, (path, value, field)
                    assert "regex" not in reason and "(?!" not in reason and "`" not in reason
                    if isinstance(value, str) and len(value) > 3:
                        assert value not in reason, (path, value, reason)


@pytest.mark.parametrize(
    ("occurred_at", "starts"),
    [
        ("2024-13-01T00:00:00Z", "not a real date and time"),
        ("2024-02-30T10:00:00+02:00", "not a real date and time"),
        ("2024-01-01T00:00Z", "seconds are missing"),
        ("yesterday", "an RFC 3339 timestamp with a UTC offset"),
    ],
)
def test_a_bad_timestamp_with_an_offset_says_what_is_wrong(occurred_at: str, starts: str) -> None:
    # A month 13 or missing seconds were told to add a UTC offset they already had.
    event = {
        "event_id": "3f1a2b3c-1111-2222-3333-444455556666",
        "type": "friendship.adjusted",
        "user_id": "u",
        "occurred_at": occurred_at,
        "data": {"delta": 1, "reason": "x"},
    }
    ((field, reason),) = list_problems(event)
    assert field == "occurred_at"
    assert reason.startswith(starts)
