"""The pure fold on the contract's examples (docs/contract.md section 2); properties are
elsewhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from projections.fold import (
    Friendship,
    TopicMetrics,
    UserProjection,
    clamp_score,
    evolve,
    evolve_friendship,
    evolve_topic,
    fold,
    fold_by_user,
    level_of,
)
from schemas import ConversationCompleted, Event, decode_event
from tests.strategies import ADJUSTED, COMPLETED, SENTIMENT_LABELS, TURN_RECORDED, make_event

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
ZEROS = dict.fromkeys(SENTIMENT_LABELS, 0)

CHILD_TURN_DELTA = [
    ("happy", 1),
    ("curious", 1),
    ("surprised", 0),
    ("neutral", 0),
    ("sad", -1),
    ("fearful", -1),
    ("angry", -2),
    ("disgusted", -2),
]
RATING_DELTA = [("excellent", 2), ("good", 1), ("passable", 0), ("not_good", -2), ("poor", -3)]


def _event(type_: str, when: datetime | str, data: dict[str, Any], user: str) -> Event:
    return decode_event(make_event(type_, user, when, data))


def turn(
    sentiment: str = "neutral",
    speaker: str = "child",
    topic: str = "space",
    when: datetime | str = T0,
    user: str = "alice",
) -> Event:
    data = {"conversation_id": "c1", "topic": topic, "speaker": speaker, "sentiment": sentiment}
    return _event(TURN_RECORDED, when, data, user)


def completed(
    rating: str = "passable",
    topic: str = "space",
    duration: float = 0,
    turns: int = 0,
    when: datetime | str = T0,
    user: str = "alice",
) -> Event:
    data = {
        "conversation_id": "c1",
        "topic": topic,
        "turns": turns,
        "duration_s": duration,
        "rating": rating,
    }
    return _event(COMPLETED, when, data, user)


def adjusted(delta: int, when: datetime | str = T0, user: str = "alice") -> Event:
    return _event(ADJUSTED, when, {"delta": delta, "reason": "test"}, user)


def score_of(*events: Event) -> int:
    return fold(events).friendship.score


# --- score changes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "delta"), CHILD_TURN_DELTA)
def test_child_turn_changes_score_by_sentiment(label: str, delta: int) -> None:
    assert score_of(adjusted(50), turn(label, "child")) == 50 + delta


@pytest.mark.parametrize("label", SENTIMENT_LABELS)
def test_robot_turn_never_changes_score_but_counts(label: str) -> None:
    state = fold([adjusted(50), turn(label, "robot")])
    assert state.friendship.score == 50
    assert state.friendship.events_applied == 2
    assert state.topics["space"].turns == 1
    assert state.topics["space"].sentiment_counts() == ZEROS


@pytest.mark.parametrize(("rating", "delta"), RATING_DELTA)
def test_completed_changes_score_by_rating(rating: str, delta: int) -> None:
    assert score_of(adjusted(50), completed(rating)) == 50 + delta


@pytest.mark.parametrize(
    ("start", "delta", "expected"),
    [(50, -7, 43), (50, 7, 57), (50, 0, 50), (50, 100, 100), (50, -100, 0), (0, 100, 100)],
)
def test_friendship_adjusted_changes_score_by_delta(start: int, delta: int, expected: int) -> None:
    assert score_of(adjusted(start), adjusted(delta)) == expected


def test_contract_example_minus5_then_plus10_ends_at_10() -> None:
    assert score_of(adjusted(-5), adjusted(+10)) == 10


def test_contract_example_plus10_then_minus5_ends_at_5() -> None:
    assert score_of(adjusted(+10), adjusted(-5)) == 5


def test_clamped_at_100_after_each_change() -> None:
    assert score_of(adjusted(60), adjusted(60)) == 100
    assert score_of(adjusted(60), adjusted(60), adjusted(-1)) == 99


def test_clamped_at_0_after_each_turn_and_conversation() -> None:
    assert score_of(turn("angry"), turn("happy")) == 1
    assert score_of(completed("poor"), completed("excellent")) == 2


@pytest.mark.parametrize(
    ("score", "clamped"), [(-1000, 0), (-1, 0), (0, 0), (57, 57), (100, 100), (101, 100)]
)
def test_clamp_score(score: int, clamped: int) -> None:
    assert clamp_score(score) == clamped


@pytest.mark.parametrize(
    ("score", "level"),
    [
        (0, "stranger"),
        (19, "stranger"),
        (20, "acquaintance"),
        (39, "acquaintance"),
        (40, "buddy"),
        (59, "buddy"),
        (60, "friend"),
        (79, "friend"),
        (80, "best_friend"),
        (100, "best_friend"),
    ],
)
def test_level_boundaries(score: int, level: str) -> None:
    assert level_of(score) == level
    assert Friendship(score=score).level == level
    assert fold([adjusted(score)]).friendship.level == level


# --- events_applied and last_event_at -----------------------------------------------------------


def test_empty_fold_is_the_initial_projection() -> None:
    state = fold([])
    assert state == UserProjection()
    assert (state.friendship.score, state.friendship.level) == (0, "stranger")
    assert (state.friendship.events_applied, state.friendship.last_event_at) == (0, None)
    assert dict(state.topics) == {}


def test_events_applied_counts_events_that_change_nothing() -> None:
    events = [turn("surprised"), turn("neutral"), turn("happy", "robot")]
    events += [completed("passable"), adjusted(0), adjusted(-3)]
    state = fold(events)
    assert state.friendship.score == 0
    assert state.friendship.events_applied == 6


def test_last_event_at_is_greatest_occurred_at_not_the_last_applied() -> None:
    times = [T0 + timedelta(hours=h) for h in (1, 3, 2)]
    state = fold([adjusted(1, when) for when in times])
    assert state.friendship.last_event_at == T0 + timedelta(hours=3)


def test_occurred_at_never_reorders_events() -> None:
    """Log order is what matters: the +10 happened "earlier" but is applied second."""
    late, early = T0 + timedelta(hours=1), T0
    assert score_of(adjusted(-5, late), adjusted(+10, early)) == 10
    assert score_of(adjusted(+10, late), adjusted(-5, early)) == 5


@pytest.mark.parametrize(
    ("first", "second", "greatest"),
    [
        pytest.param(
            "2024-01-01T12:00:00+07:00",
            "2024-01-01T06:00:00Z",
            datetime(2024, 1, 1, 6, tzinfo=UTC),
            id="later-local-hour-is-earlier",
        ),
        pytest.param(
            "2024-01-01T23:00:00-05:00",
            "2024-01-02T03:00:00Z",
            datetime(2024, 1, 2, 4, tzinfo=UTC),
            id="earlier-date-is-later",
        ),
    ],
)
def test_timestamps_with_different_offsets_compared_as_instants(
    first: str, second: str, greatest: datetime
) -> None:
    for events in ([turn(when=first), turn(when=second)], [turn(when=second), turn(when=first)]):
        state = fold(events)
        assert state.friendship.last_event_at == greatest
        assert state.topics["space"].last_discussed_at == greatest


def test_offset_of_last_event_at_is_kept() -> None:
    when = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=7)))
    last = fold([adjusted(1, when)]).friendship.last_event_at
    assert last == when
    assert last is not None and last.utcoffset() == timedelta(hours=7)


# --- topic metrics ------------------------------------------------------------------------------


def test_topic_metrics_of_turns_and_conversations() -> None:
    events = [
        turn("happy", "child"),
        turn("happy", "robot"),
        turn("sad", "child"),
        turn("happy", "child"),
        completed("good", duration=12.5, turns=40),
        completed("poor", duration=60, turns=7),
    ]
    metrics = fold(events).topics["space"]
    assert metrics.conversations == 2
    assert metrics.turns == 4  # turn events only; the `turns` field of completed is not added
    assert metrics.duration_s == 72.5
    assert isinstance(metrics.duration_s, float)
    assert metrics.sentiment_counts() == {**ZEROS, "happy": 2, "sad": 1}


def test_sentiment_counts_have_all_8_labels_in_contract_order() -> None:
    counts = fold([completed()]).topics["space"].sentiment_counts()
    assert list(counts) == list(SENTIMENT_LABELS)
    assert counts == ZEROS
    assert TopicMetrics().sentiment_counts() == ZEROS


@pytest.mark.parametrize("label", SENTIMENT_LABELS)
def test_each_child_sentiment_counted_under_its_label(label: str) -> None:
    counts = fold([turn(label, "child"), turn(label, "robot")]).topics["space"].sentiment_counts()
    assert counts == {**ZEROS, label: 1}


def test_topics_are_separate_and_last_discussed_at_is_per_topic() -> None:
    events = [
        turn(topic="space", when=T0 + timedelta(hours=5)),
        turn(topic="dinosaurs", when=T0 + timedelta(hours=1)),
        completed(topic="space", when=T0 + timedelta(hours=2), duration=3),
        adjusted(1, when=T0 + timedelta(hours=9)),
    ]
    state = fold(events)
    assert set(state.topics) == {"space", "dinosaurs"}
    space, dinos = state.topics["space"], state.topics["dinosaurs"]
    assert (space.turns, space.conversations, space.duration_s) == (1, 1, 3.0)
    assert (dinos.turns, dinos.conversations, dinos.duration_s) == (1, 0, 0.0)
    assert space.last_discussed_at == T0 + timedelta(hours=5)
    assert dinos.last_discussed_at == T0 + timedelta(hours=1)
    assert state.friendship.last_event_at == T0 + timedelta(hours=9)


def test_friendship_adjusted_touches_no_topic() -> None:
    assert dict(fold([adjusted(30), adjusted(-10)]).topics) == {}
    before = fold([turn("happy"), completed("good", duration=4)])
    after = evolve(before, adjusted(20, when=T0 + timedelta(days=1)))
    assert after.topics == before.topics
    assert after.friendship.score == before.friendship.score + 20


# --- evolve, fold and fold_by_user --------------------------------------------------------------


def test_evolve_returns_a_new_state_and_keeps_the_old_one() -> None:
    before = fold([turn("happy")])
    after = evolve(before, turn("curious", topic="music"))
    assert before.friendship.events_applied == 1
    assert set(before.topics) == {"space"}
    assert after.friendship.events_applied == 2
    assert set(after.topics) == {"space", "music"}


def test_evolve_friendship_and_evolve_topic_are_the_halves_of_evolve() -> None:
    event = completed("excellent", duration=9.5, when=T0)
    assert isinstance(event, ConversationCompleted)
    assert evolve_friendship(Friendship(score=99), event) == Friendship(100, 1, T0)
    metrics = evolve_topic(TopicMetrics(), event)
    assert (metrics.conversations, metrics.turns, metrics.duration_s) == (1, 0, 9.5)
    assert metrics.last_discussed_at == T0
    assert evolve(UserProjection(), event).topics == {"space": metrics}


def test_fold_continues_from_a_given_state() -> None:
    start = fold([adjusted(70)])
    assert fold([adjusted(-5)], start).friendship == Friendship(65, 2, T0)


def test_fold_by_user_keeps_users_apart() -> None:
    events = [adjusted(10, user="alice"), adjusted(30, user="bob"), turn("angry", user="alice")]
    projections = fold_by_user(events)
    assert set(projections) == {"alice", "bob"}
    assert projections["alice"].friendship.score == 8
    assert projections["alice"].friendship.events_applied == 2
    assert projections["bob"].friendship.score == 30
    assert projections["bob"].friendship.events_applied == 1
    assert dict(projections["bob"].topics) == {}
