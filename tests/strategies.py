"""Valid events for tests: a JSON builder and Hypothesis strategies (docs/contract.md sections 1-2).

Everything here produces raw JSON bodies (``bytes``), exactly what a producer publishes, so unit
tests (``decode_event(body)``), integration tests (publish the body) and the reference fold
(``testkit.reference.reference_fold``) can all start from the same values. The rules are written
out here on purpose instead of being imported from ``schemas``: the tests must not share the code
they check.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from hypothesis import strategies as st

from testkit.privacy import record_inputs

TURN_RECORDED: Final = "conversation.turn_recorded"
COMPLETED: Final = "conversation.completed"
ADJUSTED: Final = "friendship.adjusted"
EVENT_TYPES: Final = (TURN_RECORDED, COMPLETED, ADJUSTED)

SENTIMENT_LABELS: Final = (
    "happy",
    "curious",
    "surprised",
    "neutral",
    "sad",
    "fearful",
    "angry",
    "disgusted",
)
RATING_LABELS: Final = ("excellent", "good", "passable", "not_good", "poor")
SPEAKERS: Final = ("child", "robot")

#: A few users (every allowed punctuation character appears) and topics, so that events collide.
USER_IDS: Final = ("alice", "bob", "Kid-7.x:y@z_1")
TOPICS: Final = ("space", "dinosaurs", "music_2")
#: UTC offsets in minutes: Z, +07:00, -05:00, +05:45, -09:30, +14:00, -12:00.
OFFSET_MINUTES: Final = (0, 420, -300, 345, -570, 840, -720)
_EPOCH: Final = datetime(2024, 3, 1, tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    """Render an aware datetime as RFC 3339 (``+00:00`` is kept, use ``Z`` yourself if wanted)."""
    if moment.utcoffset() is None:
        raise ValueError("naive datetime: the contract needs an offset")
    return moment.isoformat()


def make_event_dict(
    type: str,
    user_id: str,
    occurred_at: str | datetime,
    data: Mapping[str, Any],
    event_id: str | None = None,
) -> dict[str, Any]:
    """The event as a JSON-ready dict; a random UUID4 ``event_id`` when none is given. Its
    personal values join the running test's log check (``testkit.privacy.record_inputs``)."""
    record_inputs(user_id, data.get("conversation_id"), data.get("reason"))
    return {
        "event_id": str(uuid.uuid4()) if event_id is None else event_id,
        "type": type,
        "user_id": user_id,
        "occurred_at": occurred_at if isinstance(occurred_at, str) else rfc3339(occurred_at),
        "data": dict(data),
    }


def make_event(
    type: str,
    user_id: str,
    occurred_at: str | datetime,
    data: Mapping[str, Any],
    event_id: str | None = None,
) -> bytes:
    """The JSON body (UTF-8) of one event; ``occurred_at`` may be a string or an aware datetime."""
    return json.dumps(make_event_dict(type, user_id, occurred_at, data, event_id)).encode()


@st.composite
def occurred_ats(draw: st.DrawFn) -> str:
    """An RFC 3339 timestamp with an offset, within ~10 days so that events often reorder."""
    seconds = draw(st.integers(min_value=0, max_value=10 * 24 * 3600))
    micros = draw(st.sampled_from((0, 0, 500_000, 123_456)))
    offset = timezone(timedelta(minutes=draw(st.sampled_from(OFFSET_MINUTES))))
    moment = (_EPOCH + timedelta(seconds=seconds, microseconds=micros)).astimezone(offset)
    text = rfc3339(moment)
    if text.endswith("+00:00") and draw(st.booleans()):
        text = text[: -len("+00:00")] + "Z"
    return text


def _with_extra(draw: st.DrawFn, obj: dict[str, Any], key: str) -> dict[str, Any]:
    """Sometimes add an unknown field, which the contract says is ignored."""
    if draw(st.booleans()):
        obj[key] = {"added": "later", "n": [1, 2]}
    return obj


@st.composite
def turn_data(draw: st.DrawFn, topics: Sequence[str] = TOPICS) -> dict[str, Any]:
    data = {
        "conversation_id": draw(st.sampled_from(("c-1", "c-2", "conv:3"))),
        "topic": draw(st.sampled_from(topics)),
        "speaker": draw(st.sampled_from(SPEAKERS)),
        "sentiment": draw(st.sampled_from(SENTIMENT_LABELS)),
    }
    return _with_extra(draw, data, "x_future")


@st.composite
def completed_data(draw: st.DrawFn, topics: Sequence[str] = TOPICS) -> dict[str, Any]:
    duration = draw(
        st.one_of(
            st.integers(min_value=0, max_value=86_400),
            st.floats(min_value=0, max_value=86_400, allow_nan=False, allow_infinity=False),
        )
    )
    data = {
        "conversation_id": draw(st.sampled_from(("c-1", "c-2", "conv:3"))),
        "topic": draw(st.sampled_from(topics)),
        "turns": draw(st.integers(min_value=0, max_value=10_000)),
        "duration_s": duration,
        "rating": draw(st.sampled_from(RATING_LABELS)),
    }
    return _with_extra(draw, data, "x_future")


@st.composite
def adjusted_data(draw: st.DrawFn) -> dict[str, Any]:
    data = {
        "delta": draw(st.integers(min_value=-100, max_value=100)),
        "reason": draw(st.sampled_from(("bonus", "operator fix", "r" * 256, "été"))),
    }
    return _with_extra(draw, data, "x_future")


@st.composite
def valid_event_dicts(
    draw: st.DrawFn,
    user_ids: Sequence[str] = USER_IDS,
    topics: Sequence[str] = TOPICS,
) -> dict[str, Any]:
    """One valid event as a JSON-ready dict, any of the three types."""
    type_ = draw(st.sampled_from(EVENT_TYPES))
    if type_ == TURN_RECORDED:
        data = draw(turn_data(topics))
    elif type_ == COMPLETED:
        data = draw(completed_data(topics))
    else:
        data = draw(adjusted_data())
    event_id = str(draw(st.uuids()))
    if draw(st.booleans()):
        event_id = event_id.upper()
    event = make_event_dict(
        type_, draw(st.sampled_from(user_ids)), draw(occurred_ats()), data, event_id
    )
    return _with_extra(draw, event, "x_envelope_future")


def valid_events(
    user_ids: Sequence[str] = USER_IDS, topics: Sequence[str] = TOPICS
) -> st.SearchStrategy[bytes]:
    """One valid event body (JSON bytes), any type, for one of a few users and topics."""
    return valid_event_dicts(user_ids, topics).map(lambda event: json.dumps(event).encode())


def valid_event_logs(
    user_ids: Sequence[str] = USER_IDS,
    topics: Sequence[str] = TOPICS,
    min_size: int = 0,
    max_size: int = 40,
) -> st.SearchStrategy[list[bytes]]:
    """A log of valid event bodies with distinct event ids (compared as UUIDs)."""
    return st.lists(
        valid_event_dicts(user_ids, topics),
        min_size=min_size,
        max_size=max_size,
        unique_by=lambda event: uuid.UUID(event["event_id"]),
    ).map(lambda events: [json.dumps(event).encode() for event in events])


#: One valid ``data`` object per type, for tests that change one field at a time.
SAMPLE_DATA: Final[Mapping[str, Mapping[str, Any]]] = {
    TURN_RECORDED: {
        "conversation_id": "conv-1",
        "topic": "space",
        "speaker": "child",
        "sentiment": "curious",
    },
    COMPLETED: {
        "conversation_id": "conv-1",
        "topic": "space",
        "turns": 12,
        "duration_s": 95.5,
        "rating": "good",
    },
    ADJUSTED: {"delta": -7, "reason": "operator correction"},
}
SAMPLE_EVENT_ID: Final = "3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b"
SAMPLE_OCCURRED_AT: Final = "2024-05-01T12:30:00+07:00"


def sample_event_dict(type: str = TURN_RECORDED) -> dict[str, Any]:
    """A fresh, valid event dict of ``type`` with fixed values (safe to mutate)."""
    return make_event_dict(
        type,
        "alice",
        SAMPLE_OCCURRED_AT,
        json.loads(json.dumps(SAMPLE_DATA[type])),
        SAMPLE_EVENT_ID,
    )
