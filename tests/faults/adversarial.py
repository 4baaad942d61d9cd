"""Adversarial event bodies, each labelled valid or invalid *by construction* (docs/contract.md §1,
§4).

Every sample starts from a valid event (``tests.strategies``) and either breaks exactly one rule
(invalid: the label says which rule, ``category``) or stretches the rules without breaking one
(valid: NUL and non-ASCII text where text is free, maximal lengths and ranges, the extreme
instants, unknown fields that are big or nested). Random bytes, random JSON values and corrupted
JSON text complete the invalid side. The labels come from the contract, not from ``schemas``: the
decoder fuzz test checks that the two agree, and the poison scenario publishes the samples.

Nesting deeper than any JSON parser's limit (``DEEP_NESTING``) is labelled invalid: the contract
ignores unknown fields, but a body that cannot be decoded at all cannot be an event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.strategies import (
    ADJUSTED,
    COMPLETED,
    EVENT_TYPES,
    RATING_LABELS,
    SENTIMENT_LABELS,
    SPEAKERS,
    TURN_RECORDED,
    valid_event_dicts,
)

#: Required ``data`` fields of each type.
DATA_FIELDS: Final = {
    TURN_RECORDED: ("conversation_id", "topic", "speaker", "sentiment"),
    COMPLETED: ("conversation_id", "topic", "turns", "duration_s", "rating"),
    ADJUSTED: ("delta", "reason"),
}
ENVELOPE_FIELDS: Final = ("event_id", "type", "user_id", "occurred_at", "data")
USER_ID_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-"
TOPIC_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789_"
#: Nesting that no JSON decoder here takes (far beyond Python's recursion limit).
DEEP_NESTING: Final = 20_000


@dataclass(frozen=True)
class Sample:
    """One body to publish; ``valid`` is what the contract says; ``category`` names the rule."""

    body: bytes
    valid: bool
    category: str

    def __repr__(self) -> str:
        head = self.body[:120]
        more = f" +{len(self.body) - len(head)} bytes" if len(self.body) > len(head) else ""
        return f"Sample({self.category!r}, valid={self.valid}, {head!r}{more})"


def _dumps(event: Any) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


# -- values of the wrong JSON type, per expected type ---------------------------------------------

_NOT_A_STRING: Final = st.one_of(
    st.integers(),
    st.booleans(),
    st.none(),
    st.just([]),
    st.just({}),
    st.floats(allow_nan=False, allow_infinity=False),
)
_NOT_AN_INT: Final = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.just([1]),
    st.just({"n": 1}),
    st.integers(-1000, 1000).map(lambda n: n + 0.5),
)
_NOT_A_NUMBER: Final = st.one_of(
    st.booleans(), st.none(), st.text(max_size=5), st.just([1.0]), st.just({})
)
_NOT_AN_OBJECT: Final = st.one_of(
    st.integers(), st.booleans(), st.none(), st.text(max_size=5), st.just([{"delta": 1}])
)
_FIELD_KINDS: Final = {
    "event_id": "str",
    "type": "str",
    "user_id": "str",
    "occurred_at": "str",
    "data": "object",
    "conversation_id": "str",
    "topic": "str",
    "speaker": "str",
    "sentiment": "str",
    "rating": "str",
    "reason": "str",
    "turns": "int",
    "delta": "int",
    "duration_s": "number",
}
_WRONG_TYPE: Final = {
    "str": _NOT_A_STRING,
    "int": _NOT_AN_INT,
    "number": _NOT_A_NUMBER,
    "object": _NOT_AN_OBJECT,
}


def _fields(event: dict[str, Any]) -> list[tuple[str, ...]]:
    """Paths of every required field of ``event``: ``("user_id",)``, ``("data", "topic")``..."""
    return [(name,) for name in ENVELOPE_FIELDS] + [
        ("data", name) for name in DATA_FIELDS[event["type"]]
    ]


def _set(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = event
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


# -- invalid by construction ------------------------------------------------------------------


@st.composite
def _missing_field(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    path = draw(st.sampled_from(_fields(base)))
    target = base
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return Sample(_dumps(base), False, "missing field")


@st.composite
def _wrong_type(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    path = draw(st.sampled_from(_fields(base)))
    _set(base, path, draw(_WRONG_TYPE[_FIELD_KINDS[path[-1]]]))
    return Sample(_dumps(base), False, "wrong type")


_HUGE_LITERALS: Final = ("1" + "0" * 400, "-" + "9" * 60)


@st.composite
def _out_of_range(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    kind = base["type"]
    if kind == ADJUSTED:
        value: Any = draw(
            st.one_of(st.integers(101, 10**30), st.integers(-(10**30), -101), st.just("huge"))
        )
        name = "delta"
    elif kind == COMPLETED and draw(st.booleans()):
        value = draw(st.one_of(st.integers(10_001, 10**20), st.integers(-(10**6), -1)))
        name = "turns"
    elif kind == COMPLETED:
        value = draw(
            st.one_of(
                st.floats(86_400.001, 1e300),
                st.floats(-1e300, -1e-9),
                st.integers(86_401, 10**25),
                st.just("huge"),
            )
        )
        name = "duration_s"
    else:  # turn: lengths out of range
        name = draw(st.sampled_from(("conversation_id", "topic")))
        limit = 128 if name == "conversation_id" else 64
        value = draw(st.sampled_from(("", "a" * (limit + 1), "b" * (limit * 10))))
    if value == "huge":
        base["data"][name] = 0
        body = _dumps(base).replace(
            f'"{name}": 0'.encode(), f'"{name}": {draw(st.sampled_from(_HUGE_LITERALS))}'.encode()
        )
        return Sample(body, False, "out of range")
    base["data"][name] = value
    return Sample(_dumps(base), False, "out of range")


_FORBIDDEN_USER_CHARS: Final = st.sampled_from(
    [" ", "/", "#", "\x00", "\n", "\t", "é", "😀", "%", "+", ",", "\\", '"', "\u2028"]
)


@st.composite
def _bad_text(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    field = draw(st.sampled_from(("event_id", "user_id", "topic", "reason_or_id")))
    if field == "event_id":
        text = str(uuid.UUID(base["event_id"]))
        value = draw(
            st.sampled_from(
                (
                    text.replace("-", ""),
                    "{" + text + "}",
                    "urn:uuid:" + text,
                    text[:-1],
                    text + "0",
                    " " + text,
                    text + "\n",
                    "g" + text[1:],
                    "",
                    text.replace("-", "_"),
                )
            )
        )
        base["event_id"] = value
    elif field == "user_id":
        allowed = st.text(USER_ID_CHARS, max_size=20)
        value = draw(
            st.one_of(
                st.just(""),
                st.just("u" * 129),
                st.builds(lambda a, c, b: a + c + b, allowed, _FORBIDDEN_USER_CHARS, allowed),
            )
        )
        base["user_id"] = value
    elif field == "topic" and base["type"] != ADJUSTED:
        allowed = st.text(TOPIC_CHARS, max_size=10)
        bad = st.sampled_from(["A", "-", " ", "é", "\x00", ".", "Z"])
        base["data"]["topic"] = draw(st.builds(lambda a, c, b: a + c + b, allowed, bad, allowed))
    elif base["type"] == ADJUSTED:
        base["data"]["reason"] = draw(st.sampled_from(("", "r" * 257, "é" * 300)))
    else:
        base["data"]["conversation_id"] = draw(st.sampled_from(("", "c" * 129)))
    return Sample(_dumps(base), False, "bad text")


@st.composite
def _bad_enum(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    kind = base["type"]
    choices = ["type"] + {
        TURN_RECORDED: ["speaker", "sentiment"],
        COMPLETED: ["rating"],
        ADJUSTED: [],
    }[kind]
    name = draw(st.sampled_from(choices))
    allowed = {
        "type": EVENT_TYPES,
        "speaker": SPEAKERS,
        "sentiment": SENTIMENT_LABELS,
        "rating": RATING_LABELS,
    }[name]
    near_misses = [label.upper() for label in allowed] + [label + " " for label in allowed]
    value = draw(
        st.one_of(
            st.sampled_from([*near_misses, "", "unknown"]),
            st.text(max_size=12).filter(lambda text: text not in allowed),
        )
    )
    if name == "type":
        base["type"] = value
    else:
        base["data"][name] = value
    return Sample(_dumps(base), False, "unknown type or label")


@st.composite
def _type_swapped(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    """A known type whose required ``data`` fields are not there (data of another type)."""
    others = [kind for kind in EVENT_TYPES if kind != base["type"]]
    new_type = draw(st.sampled_from(others))
    missing = [name for name in DATA_FIELDS[new_type] if name not in base["data"]]
    assert missing  # every pair of types differs in a required field
    base["type"] = new_type
    return Sample(_dumps(base), False, "data of another type")


_BAD_TIMES: Final = (
    "2024-05-01T10:00:00",  # naive
    "2024-05-01T10:00:00.123456",  # naive with fraction
    "2024-05-01",  # a date
    "10:00:00Z",  # a time
    "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    "0001-01-01T00:30:00+01:00",  # year 0 in UTC
    "2024-02-30T10:00:00Z",
    "2023-02-29T10:00:00Z",
    "2024-13-01T10:00:00Z",
    "2024-05-01T25:00:00Z",
    "2024-05-01T10:60:00Z",
    "2024-05-01T10:00:61Z",
    "2024-05-01T10:00:00+24:00",
    "2024-05-01T10:00:00+0700x",
    "yesterday",
    "",
    "2024-05-01T10:00:00 UTC",
)


@st.composite
def _bad_time(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    base["occurred_at"] = draw(
        st.one_of(
            st.sampled_from(_BAD_TIMES),
            st.datetimes().map(lambda moment: moment.isoformat()),  # naive
            st.integers(0, 2**40),
        )
    )
    return Sample(_dumps(base), False, "bad timestamp")


def _nest(depth: int, leaf: bytes, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + leaf + closer * depth


@st.composite
def _deep_nesting(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    depth = draw(st.integers(DEEP_NESTING, DEEP_NESTING + 5_000))
    where = draw(st.sampled_from(("unknown field", "data field", "body")))
    if where == "body":
        return Sample(_nest(depth, b"{}", b'{"a":', b"}"), False, "deep nesting")
    base["x_deep"] = 0
    if where == "data field":
        base["data"]["x_deep"] = 0
    body = _dumps(base).replace(b'"x_deep": 0', b'"x_deep": ' + _nest(depth, b"1"))
    return Sample(body, False, "deep nesting")


@st.composite
def _corrupted_json(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    text = _dumps(base)
    how = draw(
        st.sampled_from(
            (
                "truncated",
                "trailing garbage",
                "bom",
                "nan",
                "single quotes",
                "invalid utf-8",
                "control char",
                "lone surrogate",
                "comment",
            )
        )
    )
    if how == "truncated":
        body = text[: draw(st.integers(0, len(text) - 1))]
    elif how == "trailing garbage":
        body = text + draw(st.sampled_from((b"x", b"}", b",", b"{}", b"\x00", b"[")))
    elif how == "bom":
        body = b"\xef\xbb\xbf" + text
    elif how == "nan":
        base["x_nan"] = 0
        token = draw(st.sampled_from((b"NaN", b"Infinity", b"-Infinity", b"undefined")))
        body = _dumps(base).replace(b'"x_nan": 0', b'"x_nan": ' + token)
    elif how == "single quotes":
        body = text.replace(b'"', b"'")
    elif how == "invalid utf-8":
        base["x_bytes"] = "@@"
        bad = draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe9")))
        body = _dumps(base).replace(b"@@", bad)
    elif how == "control char":
        base["x_ctrl"] = "@@"
        body = _dumps(base).replace(b"@@", bytes([draw(st.integers(0, 31))]))
    elif how == "lone surrogate":
        base["x_surrogate"] = "@@"
        body = _dumps(base).replace(b"@@", b"\\ud800")
    else:
        body = b"/* note */" + text
    return Sample(body, False, f"corrupted JSON ({how})")


_JSON_LEAVES: Final = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_JSON: Final = st.recursive(
    _JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _not_an_event() -> st.SearchStrategy[Sample]:
    return st.one_of(
        st.binary(max_size=300).map(lambda raw: Sample(raw, False, "random bytes")),
        st.text(max_size=200).map(
            lambda text: Sample(text.encode("utf-8", "surrogatepass"), False, "random text")
        ),
        _JSON.map(lambda value: Sample(_dumps(value), False, "random JSON")),
        st.sampled_from((b"", b" ", b"null", b"{}", b"[]", b"\n")).map(
            lambda raw: Sample(raw, False, "empty or trivial")
        ),
    )


_INVALID_MUTATIONS: Final[Sequence[Callable[[dict[str, Any]], st.SearchStrategy[Sample]]]] = (
    _missing_field,
    _wrong_type,
    _out_of_range,
    _bad_text,
    _bad_enum,
    _type_swapped,
    _bad_time,
    _deep_nesting,
    _corrupted_json,
)


# -- valid by construction, but adversarial ----------------------------------------------------

_FREE_TEXT: Final = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=64
)
_EXTREME_TIMES: Final = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-01:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999+01:00",
    "2024-02-29T23:59:59.5+14:00",
    "2024-01-01T00:00:00-12:00",
    "1969-12-31T23:59:59.000001Z",
)


@st.composite
def _stretched(draw: st.DrawFn, base: dict[str, Any]) -> Sample:
    """Valid: free text with NUL and any character, maximal sizes, range ends, odd instants,
    big or nested unknown fields."""
    kind = base["type"]
    data = base["data"]
    stretch = draw(
        st.sampled_from(("free text", "limits", "instant", "unknown fields", "uppercase id"))
    )
    if stretch == "free text":
        if kind == ADJUSTED:
            data["reason"] = draw(_FREE_TEXT) + "\x00" + draw(_FREE_TEXT)
        else:
            data["conversation_id"] = "\x00" + draw(_FREE_TEXT)
    elif stretch == "limits":
        if kind == ADJUSTED:
            data["delta"] = draw(st.sampled_from((-100, 100, 0)))
            data["reason"] = draw(st.sampled_from(("é" * 256, "😀" * 256, "r")))
        elif kind == COMPLETED:
            data["turns"] = draw(st.sampled_from((0, 10_000)))
            data["duration_s"] = draw(st.sampled_from((0, 86_400, 86_400.0, 5e-324, 0.0)))
            data["topic"] = "t" * 64
        else:
            data["topic"] = draw(st.text(TOPIC_CHARS, min_size=64, max_size=64))
            data["conversation_id"] = "c" * 128
    elif stretch == "instant":
        base["occurred_at"] = draw(st.sampled_from(_EXTREME_TIMES))
    elif stretch == "unknown fields":
        base[draw(st.sampled_from(("x", "", "\x00", "événement", "data2")))] = draw(_JSON)
        data["x_nested"] = _nest_value(draw(st.integers(1, 40)), 1)
        if draw(st.booleans()):
            base["x_big"] = "z" * draw(st.integers(1_000, 60_000))
    else:
        base["event_id"] = base["event_id"].upper()
    return Sample(_dumps(base), True, f"valid: {stretch}")


def _nest_value(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _event_bases(user_ids: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    # A deep copy per draw, so mutations never leak between samples.
    return valid_event_dicts(user_ids=user_ids).map(lambda event: json.loads(json.dumps(event)))


def invalid_samples(user_ids: Sequence[str] = ("alice", "bob")) -> st.SearchStrategy[Sample]:
    """Bodies that break a rule of the contract, every kind of rule, plus non-events."""
    mutated = st.one_of(
        [_event_bases(user_ids).flatmap(mutation) for mutation in _INVALID_MUTATIONS]
    )
    return st.one_of(mutated, _not_an_event())


def valid_samples(user_ids: Sequence[str] = ("alice", "bob")) -> st.SearchStrategy[Sample]:
    """Bodies that stretch the rules without breaking one."""
    return _event_bases(user_ids).flatmap(_stretched)


def samples(user_ids: Sequence[str] = ("alice", "bob")) -> st.SearchStrategy[Sample]:
    """Invalid and adversarial valid bodies, about two invalid for each valid one."""
    invalid, valid = invalid_samples(user_ids), valid_samples(user_ids)
    return st.integers(0, 2).flatmap(lambda pick: valid if pick == 0 else invalid)


def with_fresh_event_id(sample: Sample, new_id: uuid.UUID) -> Sample:
    """A valid sample with its ``event_id`` replaced (same letter case), so that ids never repeat
    across samples (Hypothesis draws the same few UUIDs often)."""
    event = json.loads(sample.body)
    text = str(new_id)
    event["event_id"] = text.upper() if event["event_id"].isupper() else text
    return Sample(_dumps(event), sample.valid, sample.category)


def draw_corpus(strategy: st.SearchStrategy[Sample], count: int, seed_value: int) -> list[Sample]:
    """``count`` samples (at most) drawn by Hypothesis's generator, reproducibly from a seed.

    Hypothesis drives the generation (its heuristics favour boundaries and odd values); nothing
    is shrunk because nothing fails here.
    """
    drawn: list[Sample] = []

    @seed(seed_value)
    @hypothesis_settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(sample: Sample) -> None:
        drawn.append(sample)

    collect()
    return drawn[:count]
