"""A straightforward reference fold: the test oracle for the projections (docs/contract.md section
2).

Written independently of ``projections.fold`` and of ``schemas``: plain ``json``, dicts and ints,
the score clamped after every change. Unit tests compare it with ``fold_by_user``; integration
tests compare it with what the read API answers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec

SENTIMENTS = ("happy", "curious", "surprised", "neutral", "sad", "fearful", "angry", "disgusted")
CHILD_TURN_DELTA = {
    "happy": 1,
    "curious": 1,
    "surprised": 0,
    "neutral": 0,
    "sad": -1,
    "fearful": -1,
    "angry": -2,
    "disgusted": -2,
}
RATING_DELTA = {"excellent": 2, "good": 1, "passable": 0, "not_good": -2, "poor": -3}


def reference_level(score: int) -> str:
    """0-19 stranger, 20-39 acquaintance, 40-59 buddy, 60-79 friend, 80-100 best_friend."""
    if score >= 80:
        return "best_friend"
    if score >= 60:
        return "friend"
    if score >= 40:
        return "buddy"
    if score >= 20:
        return "acquaintance"
    return "stranger"


def _as_dict(event: bytes | str | Mapping[str, Any] | msgspec.Struct) -> Mapping[str, Any]:
    if isinstance(event, bytes | str):
        decoded: Mapping[str, Any] = json.loads(event)
        return decoded
    if isinstance(event, msgspec.Struct):
        # A decoded schemas event: its builtins form carries the `type` tag.
        builtins: Mapping[str, Any] = msgspec.to_builtins(event)
        return builtins
    return event


def _parse_time(value: str | datetime) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.utcoffset() is None:
        raise ValueError(f"naive occurred_at {value!r}: the reference fold takes valid events")
    return moment


def _new_topic() -> dict[str, Any]:
    return {
        "conversations": 0,
        "turns": 0,
        "duration_s": 0.0,
        "sentiment": dict.fromkeys(SENTIMENTS, 0),
        "last_discussed_at": None,
    }


def reference_fold(
    events: Iterable[bytes | str | Mapping[str, Any] | msgspec.Struct],
    child_turn_delta: Mapping[str, int] = CHILD_TURN_DELTA,
) -> dict[str, dict[str, Any]]:
    """Fold valid events, in log order, into one projection per user.

    Args:
        events: valid events as JSON bodies, JSON dicts or decoded ``schemas`` events, of any
            version (a turn's ``sentiment`` is a label in version 1, ``{"label", "confidence"}``
            from version 2). An event whose ``event_id`` (compared as a UUID, so
            case-insensitive) was already seen is ignored, as the processor does for a
            redelivery.
        child_turn_delta: the score change of a child turn by label (the contract's by
            default; a test of a rule change passes its own).

    Returns:
        ``{user_id: {"score", "level", "events_applied", "last_event_at", "topics": {topic:
        {"conversations", "turns", "duration_s", "sentiment": {label: n}, "last_discussed_at"}}}}``
        with aware ``datetime`` values (``None`` never appears for a user that has an event).
    """
    users: dict[str, dict[str, Any]] = {}
    seen: set[uuid.UUID] = set()
    for raw in events:
        event = _as_dict(raw)
        event_id = uuid.UUID(event["event_id"])
        if event_id in seen:
            continue
        seen.add(event_id)
        user = users.setdefault(
            event["user_id"],
            {"score": 0, "events_applied": 0, "last_event_at": None, "topics": {}},
        )
        at = _parse_time(event["occurred_at"])
        data = event["data"]
        kind = event["type"]

        delta = 0
        if kind == "conversation.turn_recorded":
            topic = user["topics"].setdefault(data["topic"], _new_topic())
            topic["turns"] += 1
            if data["speaker"] == "child":
                sentiment = data["sentiment"]
                label = sentiment["label"] if isinstance(sentiment, Mapping) else sentiment
                topic["sentiment"][label] += 1
                delta = child_turn_delta[label]
        elif kind == "conversation.completed":
            topic = user["topics"].setdefault(data["topic"], _new_topic())
            topic["conversations"] += 1
            topic["duration_s"] += float(data["duration_s"])
            delta = RATING_DELTA[data["rating"]]
        elif kind == "friendship.adjusted":
            topic = None
            delta = int(data["delta"])
        else:
            raise ValueError(f"unknown type {kind!r}: the reference fold takes valid events")

        if topic is not None and (
            topic["last_discussed_at"] is None or at > topic["last_discussed_at"]
        ):
            topic["last_discussed_at"] = at
        user["score"] = min(100, max(0, user["score"] + delta))
        user["events_applied"] += 1
        if user["last_event_at"] is None or at > user["last_event_at"]:
            user["last_event_at"] = at

    for user in users.values():
        user["level"] = reference_level(user["score"])
    return users
