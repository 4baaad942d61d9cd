"""Every problem of an invalid event, in words a producer understands. Pure.

The decoder (``schemas.validation``) stops at the first problem and speaks in msgspec's terms
(``Expected `str` matching regex ...``). When an event is invalid, this module looks at the
decoded JSON value once more and lists every rule of docs/contract.md sections 1 and 2 it breaks,
each as ``(field, reason)``. It runs only for invalid events, so valid traffic pays nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from schemas.events import RATINGS, SENTIMENTS, TOPIC_PATTERN, USER_ID_PATTERN, UUID_PATTERN
from schemas.upcasting import CURRENT_VERSIONS, TURN_RECORDED, newer_version_reason

#: ``(field, reason)``: the dotted path of a field (``"data.topic"``) and the rule it breaks.
Problem = tuple[str, str]

_UUID: Final = re.compile(UUID_PATTERN)
_USER_ID: Final = re.compile(USER_ID_PATTERN)
_TOPIC: Final = re.compile(TOPIC_PATTERN)
#: RFC 3339 date-time with a required offset (``Z`` or ``+HH:MM``); fractions of any length.
_RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})(?!\n)$"
)

#: Why a well-formed ``occurred_at`` is still invalid: its instant has no year 1-9999 in UTC.
OUT_OF_RANGE: Final = "out of range: the instant in UTC must lie in years 0001-9999"

#: The rule of each field, as a producer reads it.
RULES: Final[Mapping[str, str]] = {
    "event_id": "a UUID in the canonical 8-4-4-4-12 hex form",
    "type": ("one of conversation.turn_recorded, conversation.completed, friendship.adjusted"),
    "user_id": "1 to 128 characters from A-Z, a-z, 0-9 and . _ : @ -",
    "occurred_at": "an RFC 3339 timestamp with a UTC offset (Z or +07:00)",
    "data": "an object with the fields of the event's type",
    "data.conversation_id": "a string of 1 to 128 characters",
    "data.topic": "1 to 64 characters from a-z, 0-9 and _",
    "version": "a whole number from 1 (absent: 1)",
    "data.speaker": "child or robot",
    "data.sentiment": (
        f"an object with label (one of {', '.join(SENTIMENTS)}) and confidence (a number from 0 "
        "to 1)"
    ),
    "data.turns": "a whole number from 0 to 10000",
    "data.duration_s": "a number from 0 to 86400 (seconds)",
    "data.rating": f"one of {', '.join(RATINGS)}",
    "data.delta": "a whole number from -100 to 100",
    "data.reason": "a string of 1 to 256 characters",
}


def _string(value: Any, pattern: re.Pattern[str] | None = None, most: int = 0) -> bool:
    if not isinstance(value, str):
        return False
    if most and not 1 <= len(value) <= most:
        return False
    return pattern is None or pattern.match(value) is not None


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _instant(value: Any) -> bool:
    if not isinstance(value, str) or _RFC3339.match(value) is None:
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return False
    return True


_NO_SECONDS: Final = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}([Zz]|[+-]\d{2}:?\d{2})(?!\n)$")


def _instant_problem(value: Any) -> str:
    """Why a present, non-naive ``occurred_at`` is invalid, as precisely as can be told."""
    if isinstance(value, str):
        if _NO_SECONDS.match(value):
            return f"seconds are missing; must be {RULES['occurred_at']}"
        if _RFC3339.match(value):
            return (
                "not a real date and time (month 01-12, a day that month has, hours 00-23, "
                f"minutes and seconds 00-59); must be {RULES['occurred_at']}"
            )
    return RULES["occurred_at"]


def _naive(value: Any) -> bool:
    """A date-time without a UTC offset (``2024-05-01T10:00:00``)."""
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is None
    except ValueError:
        return False


def _outside_utc_years(value: str) -> bool:
    """A well-formed timestamp whose instant falls outside years 1-9999 in UTC."""
    try:
        datetime.fromisoformat(value.replace("z", "Z")).astimezone(UTC)
    except OverflowError:
        return True
    return False


#: Why a naive timestamp is invalid.
_NAIVE: Final = (
    "no time zone: a naive time is ambiguous; give an RFC 3339 timestamp with a UTC offset "
    "(Z or +07:00)"
)

_Check = Callable[[Any], bool]
_TOPIC_CHECK: Final[_Check] = lambda v: _string(v, _TOPIC)  # noqa: E731
_CONVERSATION_CHECK: Final[_Check] = lambda v: _string(v, most=128)  # noqa: E731


def _sentiment_reading(value: Any) -> bool:
    """``data.sentiment`` of a version-2 turn: ``{"label": ..., "confidence": 0..1}``."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("label"), str)
        and value["label"] in SENTIMENTS
        and _number(value.get("confidence"), 0, 1)
    )


#: The ``data`` rules of each type at its current version.
_DATA_CHECKS: Final[Mapping[str, Mapping[str, _Check]]] = {
    "conversation.turn_recorded": {
        "conversation_id": _CONVERSATION_CHECK,
        "topic": _TOPIC_CHECK,
        "speaker": lambda v: v in ("child", "robot"),
        "sentiment": _sentiment_reading,
    },
    "conversation.completed": {
        "conversation_id": _CONVERSATION_CHECK,
        "topic": _TOPIC_CHECK,
        "turns": lambda v: _whole(v, 0, 10_000),
        "duration_s": lambda v: _number(v, 0, 86_400),
        "rating": lambda v: isinstance(v, str) and v in RATINGS,
    },
    "friendship.adjusted": {
        "delta": lambda v: _whole(v, -100, 100),
        "reason": lambda v: _string(v, most=256),
    },
}
#: The ``data`` rules of older versions that differ from the current ones (``schemas.upcasting``).
_OLDER_DATA_CHECKS: Final[Mapping[tuple[str, int], Mapping[str, _Check]]] = {
    (TURN_RECORDED, 1): {
        **_DATA_CHECKS[TURN_RECORDED],
        "sentiment": lambda v: isinstance(v, str) and v in SENTIMENTS,
    },
}
#: The reasons of older versions' fields whose rules differ.
_OLDER_RULES: Final[Mapping[tuple[str, int], Mapping[str, str]]] = {
    (TURN_RECORDED, 1): {"data.sentiment": f"one of {', '.join(SENTIMENTS)}"},
}
_ENVELOPE_CHECKS: Final[Mapping[str, _Check]] = {
    "event_id": lambda v: _string(v, _UUID),
    "user_id": lambda v: _string(v, _USER_ID),
    "occurred_at": _instant,
}


def _check_field(problems: list[Problem], obj: Mapping[str, Any], name: str, path: str) -> bool:
    """Record a missing field; True when it is present."""
    if name in obj:
        return True
    problems.append((path, f"missing; must be {RULES[path]}"))
    return False


def _occurred_at_problem(value: Any) -> str | None:
    """Why ``occurred_at`` is invalid, or None when it is valid."""
    if _instant(value):
        return OUT_OF_RANGE if _outside_utc_years(value) else None
    if _naive(value):
        return _NAIVE  # only a timestamp can lack its time zone
    return _instant_problem(value)


def _envelope_problems(value: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for name, check in _ENVELOPE_CHECKS.items():
        if not _check_field(problems, value, name, name):
            continue
        if name == "occurred_at":
            reason = _occurred_at_problem(value[name])
            if reason is not None:
                problems.append((name, reason))
        elif not check(value[name]):
            problems.append((name, RULES[name]))
    return problems


def _data_problems(
    value: Mapping[str, Any],
    data_checks: Mapping[str, _Check] | None,
    rules: Mapping[str, str] = RULES,
) -> list[Problem]:
    problems: list[Problem] = []
    if not _check_field(problems, value, "data", "data"):
        return problems
    data = value["data"]
    if not isinstance(data, dict):
        return [("data", rules["data"])]
    for name, check in (data_checks or {}).items():
        path = f"data.{name}"
        if _check_field(problems, data, name, path) and not check(data[name]):
            problems.append((path, rules[path]))
    return problems


def _version_problems(value: Mapping[str, Any], kind: object) -> tuple[list[Problem], int]:
    """The problems of ``version``, and the version whose ``data`` rules apply."""
    version = value.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return [("version", RULES["version"])], 0
    current = CURRENT_VERSIONS.get(kind) if isinstance(kind, str) else None
    if current is not None and version > current:
        return [("version", newer_version_reason(str(kind), version))], 0
    return [], version


def list_problems(value: Any) -> list[Problem]:
    """Every contract rule the decoded JSON ``value`` breaks, in field order; ``data`` is
    checked by the rules of the envelope's ``version`` (absent = 1).

    Returns:
        ``[(field, reason), ...]``; empty when these checks find nothing (the decoder's own
        message then stands).
    """
    if not isinstance(value, dict):
        return [("", "an event must be a JSON object")]
    problems = _envelope_problems(value)
    kind = value.get("type")
    data_checks = _DATA_CHECKS.get(kind) if isinstance(kind, str) else None
    if _check_field(problems, value, "type", "type") and data_checks is None:
        problems.append(("type", RULES["type"]))
    version_problems, version = _version_problems(value, kind)
    if not version:  # which data rules apply is unknown
        return problems + version_problems
    older = (str(kind), version)
    rules = {**RULES, **_OLDER_RULES.get(older, {})}
    return problems + _data_problems(value, _OLDER_DATA_CHECKS.get(older, data_checks), rules)
