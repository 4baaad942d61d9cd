"""Properties of the pure fold over generated logs, and agreement with ``testkit.reference``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.fold import (
    Friendship,
    TopicMetrics,
    UserProjection,
    evolve_friendship,
    evolve_topic,
    fold,
    fold_by_user,
    fold_rows,
    level_of,
)
from schemas import Event, decode_event
from schemas.events import FriendshipAdjusted
from testkit.reference import reference_fold
from tests.strategies import ADJUSTED, make_event, valid_event_logs, valid_events

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)
LEVEL_RANGES = {
    "stranger": range(0, 20),
    "acquaintance": range(20, 40),
    "buddy": range(40, 60),
    "friend": range(60, 80),
    "best_friend": range(80, 101),
}

logs = valid_event_logs(max_size=30).map(lambda bodies: (bodies, [decode_event(b) for b in bodies]))


def by_user(events: list[Event]) -> dict[str, list[Event]]:
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event.user_id, []).append(event)
    return groups


def reference_shape(projection: UserProjection) -> dict[str, Any]:
    """A ``UserProjection`` in the shape ``reference_fold`` returns."""
    friendship = projection.friendship
    return {
        "score": friendship.score,
        "level": friendship.level,
        "events_applied": friendship.events_applied,
        "last_event_at": friendship.last_event_at,
        "topics": {
            topic: {
                "conversations": metrics.conversations,
                "turns": metrics.turns,
                "duration_s": metrics.duration_s,
                "sentiment": metrics.sentiment_counts(),
                "last_discussed_at": metrics.last_discussed_at,
            }
            for topic, metrics in projection.topics.items()
        },
    }


@PROPERTY_SETTINGS
@given(logs)
def test_folding_in_two_parts_equals_folding_whole(log: tuple[list[bytes], list[Event]]) -> None:
    for events in by_user(log[1]).values():
        whole = fold(events)
        for split in range(len(events) + 1):
            assert fold(events[split:], fold(events[:split])) == whole


@PROPERTY_SETTINGS
@given(logs)
def test_score_in_range_and_level_consistent_after_every_event(
    log: tuple[list[bytes], list[Event]],
) -> None:
    for events in by_user(log[1]).values():
        state = UserProjection()
        for event in events:
            state = fold([event], state)
            score = state.friendship.score
            assert 0 <= score <= 100
            assert score in LEVEL_RANGES[state.friendship.level]
            assert level_of(score) == state.friendship.level


@PROPERTY_SETTINGS
@given(logs)
def test_events_applied_counts_every_event_of_the_user(
    log: tuple[list[bytes], list[Event]],
) -> None:
    counts = Counter(event.user_id for event in log[1])
    projections = fold_by_user(log[1])
    assert {user: p.friendship.events_applied for user, p in projections.items()} == counts


@PROPERTY_SETTINGS
@given(logs)
def test_fold_by_user_equals_folding_each_user_alone(log: tuple[list[bytes], list[Event]]) -> None:
    expected = {user: fold(events) for user, events in by_user(log[1]).items()}
    assert fold_by_user(log[1]) == expected


@PROPERTY_SETTINGS
@given(logs)
def test_fold_by_user_equals_reference_fold(log: tuple[list[bytes], list[Event]]) -> None:
    bodies, events = log
    actual = {user: reference_shape(p) for user, p in fold_by_user(events).items()}
    assert actual == reference_fold(bodies)


@PROPERTY_SETTINGS
@given(valid_events())
def test_generated_events_are_valid_and_round_trip(body: bytes) -> None:
    event = decode_event(body)
    source = json.loads(body)
    assert (event.event_id, event.user_id) == (source["event_id"], source["user_id"])
    assert reference_fold([event]) == reference_fold([body])


@PROPERTY_SETTINGS
@given(st.lists(st.integers(min_value=-100, max_value=100), max_size=30))
def test_adjustments_alone_clamp_after_every_change(deltas: list[int]) -> None:
    expected = 0
    for delta in deltas:
        expected = min(100, max(0, expected + delta))
    bodies = [
        make_event(ADJUSTED, "alice", "2024-01-01T00:00:00Z", {"delta": d, "reason": "r"})
        for d in deltas
    ]
    assert fold(decode_event(b) for b in bodies).friendship.score == expected
    if deltas:
        assert reference_fold(bodies)["alice"]["score"] == expected


# --- the oracle itself on the contract's examples ----------------------------------------------


def _adjust(delta: int, event_id: str | None = None, at: str = "2024-01-01T00:00:00Z") -> bytes:
    return make_event(ADJUSTED, "alice", at, {"delta": delta, "reason": "r"}, event_id)


def test_reference_fold_contract_examples() -> None:
    assert reference_fold([_adjust(-5), _adjust(10)])["alice"]["score"] == 10
    assert reference_fold([_adjust(10), _adjust(-5)])["alice"]["score"] == 5
    user = reference_fold([_adjust(45), _adjust(40), _adjust(-10)])["alice"]
    assert (user["score"], user["level"], user["events_applied"]) == (75, "friend", 3)
    assert user["topics"] == {}


def test_reference_fold_ignores_a_repeated_event_id_in_any_case() -> None:
    first = "3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b"
    user = reference_fold([_adjust(10, first), _adjust(10, first.upper()), _adjust(1)])["alice"]
    assert (user["score"], user["events_applied"]) == (11, 2)


@PROPERTY_SETTINGS
@given(logs, logs)
def test_fold_rows_of_a_batch_equals_evolving_each_row_event_by_event(
    earlier: tuple[list[bytes], list[Event]], batch: tuple[list[bytes], list[Event]]
) -> None:
    # Rows that exist before the batch (folded from ``earlier``) and rows the batch creates.
    start_friendships: dict[str, Friendship] = {}
    start_topics: dict[tuple[str, str], TopicMetrics] = {}
    for event in earlier[1]:
        user = event.user_id
        start_friendships[user] = evolve_friendship(
            start_friendships.get(user, Friendship()), event
        )
        if not isinstance(event, FriendshipAdjusted):
            key = (user, event.data.topic)
            start_topics[key] = evolve_topic(start_topics.get(key, TopicMetrics()), event)
    expected_friendships, expected_topics = dict(start_friendships), dict(start_topics)
    for event in batch[1]:
        user = event.user_id
        expected_friendships[user] = evolve_friendship(
            expected_friendships.get(user, Friendship()), event
        )
        if not isinstance(event, FriendshipAdjusted):
            key = (user, event.data.topic)
            expected_topics[key] = evolve_topic(expected_topics.get(key, TopicMetrics()), event)

    friendships, topics = dict(start_friendships), dict(start_topics)
    fold_rows(batch[1], friendships, topics)

    assert friendships == expected_friendships
    assert topics == expected_topics
