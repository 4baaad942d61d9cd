"""The pure fold: ``evolve(state, event) -> state`` (docs/contract.md section 2). No I/O here.

A user's projection is the left fold of that user's events in log order. It has two parts that
the storage layer keeps in two tables: the friendship (one per user) and the topic metrics (one per
user and topic). ``evolve_friendship`` and ``evolve_topic`` are the two halves of ``evolve`` and
are what the batch applier calls, so live processing, replay and tests share one rule set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final

import msgspec

from schemas.events import (
    SENTIMENTS,
    ConversationCompleted,
    Event,
    FriendshipAdjusted,
    Rating,
    Sentiment,
    TurnRecorded,
)

SCORE_MIN: Final = 0
SCORE_MAX: Final = 100

#: Score change of a child turn, by sentiment label.
SENTIMENT_DELTA: Final[Mapping[Sentiment, int]] = {
    "happy": 1,
    "curious": 1,
    "surprised": 0,
    "neutral": 0,
    "sad": -1,
    "fearful": -1,
    "angry": -2,
    "disgusted": -2,
}
#: Score change of a completed conversation, by rating.
RATING_DELTA: Final[Mapping[Rating, int]] = {
    "excellent": 2,
    "good": 1,
    "passable": 0,
    "not_good": -2,
    "poor": -3,
}
#: (lowest score, level), highest first.
LEVELS: Final[tuple[tuple[int, str], ...]] = (
    (80, "best_friend"),
    (60, "friend"),
    (40, "buddy"),
    (20, "acquaintance"),
    (0, "stranger"),
)
_SENTIMENT_INDEX: Final = {label: i for i, label in enumerate(SENTIMENTS)}


def level_of(score: int) -> str:
    """The friendship level of a score in 0..100 (``stranger`` .. ``best_friend``)."""
    for lowest, level in LEVELS:
        if score >= lowest:
            return level
    return LEVELS[-1][1]


def clamp_score(score: int) -> int:
    """Clamp a score to [0, 100]; applied after every change."""
    return max(SCORE_MIN, min(SCORE_MAX, score))


def _later(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate > current else current


class Friendship(msgspec.Struct, frozen=True):
    """Friendship of one user: score 0..100, applied event count, greatest occurred_at."""

    score: int = 0
    events_applied: int = 0
    last_event_at: datetime | None = None

    @property
    def level(self) -> str:
        """The level name of ``score``."""
        return level_of(self.score)


class TopicMetrics(msgspec.Struct, frozen=True):
    """Metrics of one (user, topic).

    ``duration_s`` is in seconds; ``sentiment`` holds the child-turn count per label in the order
    of ``schemas.SENTIMENTS`` (8 integers).
    """

    conversations: int = 0
    turns: int = 0
    duration_s: float = 0.0
    sentiment: tuple[int, ...] = (0,) * len(SENTIMENTS)
    last_discussed_at: datetime | None = None

    def sentiment_counts(self) -> dict[str, int]:
        """The sentiment counts as ``{label: count}`` with all 8 labels."""
        return dict(zip(SENTIMENTS, self.sentiment, strict=True))


class UserProjection(msgspec.Struct, frozen=True):
    """Everything derived for one user: friendship and topic metrics keyed by topic."""

    friendship: Friendship = Friendship()
    topics: Mapping[str, TopicMetrics] = msgspec.field(default_factory=dict)


def score_delta(event: Event) -> int:
    """The score change an event asks for, before clamping (may be 0)."""
    if isinstance(event, TurnRecorded):
        return SENTIMENT_DELTA[event.data.sentiment.label] if event.data.speaker == "child" else 0
    if isinstance(event, ConversationCompleted):
        return RATING_DELTA[event.data.rating]
    return event.data.delta


def event_topic(event: Event) -> str | None:
    """The topic an event touches, ``None`` for ``friendship.adjusted``."""
    if isinstance(event, FriendshipAdjusted):
        return None
    return event.data.topic


def evolve_friendship(state: Friendship, event: Event) -> Friendship:
    """Apply one event to a user's friendship: clamp after the change, count it, keep max time."""
    return Friendship(
        score=clamp_score(state.score + score_delta(event)),
        events_applied=state.events_applied + 1,
        last_event_at=_later(state.last_event_at, event.occurred_at),
    )


def evolve_topic(state: TopicMetrics, event: TurnRecorded | ConversationCompleted) -> TopicMetrics:
    """Apply one conversation event to the metrics of its (user, topic)."""
    last = _later(state.last_discussed_at, event.occurred_at)
    if isinstance(event, TurnRecorded):
        sentiment = state.sentiment
        if event.data.speaker == "child":
            index = _SENTIMENT_INDEX[event.data.sentiment.label]
            sentiment = (*sentiment[:index], sentiment[index] + 1, *sentiment[index + 1 :])
        return TopicMetrics(
            conversations=state.conversations,
            turns=state.turns + 1,
            duration_s=state.duration_s,
            sentiment=sentiment,
            last_discussed_at=last,
        )
    return TopicMetrics(
        conversations=state.conversations + 1,
        turns=state.turns,
        duration_s=state.duration_s + event.data.duration_s,
        sentiment=state.sentiment,
        last_discussed_at=last,
    )


def evolve(state: UserProjection, event: Event) -> UserProjection:
    """Apply one event of a user to that user's projection and return the new projection.

    Args:
        state: the user's projection before the event (``UserProjection()`` for a new user).
        event: the next event of the same user in log order.

    Returns:
        A new ``UserProjection``; ``state`` is not changed.
    """
    friendship = evolve_friendship(state.friendship, event)
    if isinstance(event, FriendshipAdjusted):
        return UserProjection(friendship=friendship, topics=state.topics)
    topic = event.data.topic
    topics = dict(state.topics)
    topics[topic] = evolve_topic(topics.get(topic, TopicMetrics()), event)
    return UserProjection(friendship=friendship, topics=topics)


def fold(events: Iterable[Event], state: UserProjection | None = None) -> UserProjection:
    """Left fold of one user's events (in log order) from ``state`` or from the empty projection."""
    current = UserProjection() if state is None else state
    for event in events:
        current = evolve(current, event)
    return current


def fold_by_user(events: Iterable[Event]) -> dict[str, UserProjection]:
    """Fold a mixed sequence of events (log order per user) into one projection per user id."""
    projections: dict[str, UserProjection] = {}
    for event in events:
        projections[event.user_id] = evolve(projections.get(event.user_id, UserProjection()), event)
    return projections
