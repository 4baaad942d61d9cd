"""The pure fold: ``evolve(state, event) -> state`` (docs/contract.md section 2). No I/O here.

A user's projection is the left fold of that user's events in log order. It has two parts that
the storage layer keeps in two tables: the friendship (one per user) and the topic metrics (one per
user and topic). ``evolve_friendship`` and ``evolve_topic`` are the two halves of ``evolve`` and
are what the batch applier calls, so live processing, replay and tests share one rule set.

The scoring rule is data: a ``FoldRules`` with a version number that changes with any rule
change (``projections.rules`` keeps the versions a deployment knows). Every function here takes
the rules to fold with; ``CONTRACT_RULES`` (version 1, docs/contract.md section 2) by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

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


@dataclass(frozen=True)
class FoldRules:
    """One version of the scoring rule.

    Attributes:
        version: the fold version, a whole number that grows with every rule change; the live
            tables record the version that built them (``processor.applying.checkpoint``).
        sentiment_delta: score change of a child turn, by sentiment label (points).
        rating_delta: score change of a completed conversation, by rating (points).
        description: what changed, in words (shown by ``just status``).
    """

    version: int
    sentiment_delta: Mapping[Sentiment, int]
    rating_delta: Mapping[Rating, int]
    description: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"a fold version is a whole number from 1, not {self.version}")
        if set(self.sentiment_delta) != set(SENTIMENTS):
            raise ValueError(f"fold version {self.version}: a delta for every sentiment label")
        if set(self.rating_delta) != set(RATING_DELTA):
            raise ValueError(f"fold version {self.version}: a delta for every rating")


#: The rule of docs/contract.md section 2: fold version 1.
CONTRACT_RULES: Final = FoldRules(
    1, SENTIMENT_DELTA, RATING_DELTA, "docs/contract.md section 2 (the first rule)"
)


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


class Friendship(msgspec.Struct, frozen=True, gc=False):
    """Friendship of one user: score 0..100, applied event count, greatest occurred_at."""

    score: int = 0
    events_applied: int = 0
    last_event_at: datetime | None = None

    @property
    def level(self) -> str:
        """The level name of ``score``."""
        return level_of(self.score)


class TopicMetrics(msgspec.Struct, frozen=True, gc=False):
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


def score_delta(event: Event, rules: FoldRules = CONTRACT_RULES) -> int:
    """The score change an event asks for under ``rules``, before clamping (may be 0)."""
    if isinstance(event, TurnRecorded):
        if event.data.speaker != "child":
            return 0
        return rules.sentiment_delta[event.data.sentiment.label]
    if isinstance(event, ConversationCompleted):
        return rules.rating_delta[event.data.rating]
    return event.data.delta


def event_topic(event: Event) -> str | None:
    """The topic an event touches, ``None`` for ``friendship.adjusted``."""
    if isinstance(event, FriendshipAdjusted):
        return None
    return event.data.topic


def evolve_friendship(
    state: Friendship, event: Event, rules: FoldRules = CONTRACT_RULES
) -> Friendship:
    """Apply one event to a user's friendship: clamp after the change, count it, keep max time."""
    return Friendship(
        score=clamp_score(state.score + score_delta(event, rules)),
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


def _start_friendship(
    users: dict[str, list[Any]], friendships: Mapping[str, Friendship], user: str
) -> list[Any]:
    """A user's state as ``[score, events applied, last event at]``, kept in ``users``."""
    start = friendships.get(user) or Friendship()
    state = users[user] = [start.score, start.events_applied, start.last_event_at]
    return state


def _start_topic(
    rows: dict[tuple[str, str], list[Any]],
    topics: Mapping[tuple[str, str], TopicMetrics],
    key: tuple[str, str],
) -> list[Any]:
    """A topic row's state as ``[conversations, turns, duration_s, sentiment counts, last
    discussed at]``, kept in ``rows``."""
    begin = topics.get(key) or TopicMetrics()
    row = rows[key] = [
        begin.conversations,
        begin.turns,
        begin.duration_s,
        list(begin.sentiment),
        begin.last_discussed_at,
    ]
    return row


def fold_rows(
    events: Iterable[Event],
    friendships: dict[str, Friendship],
    topics: dict[tuple[str, str], TopicMetrics],
    rules: FoldRules = CONTRACT_RULES,
) -> None:
    """Fold a batch's events (log order) into its rows' states, in place: the same result as
    ``evolve_friendship`` and ``evolve_topic`` event by event, with each touched row taken
    once, changed as plain numbers, and written back once as a new ``Friendship`` or
    ``TopicMetrics`` (a missing row starts empty).

    Args:
        events: the batch's events to apply, in log order.
        friendships: each user's state by user id; updated.
        topics: each ``(user, topic)``'s state; updated.
        rules: the scoring rule to fold with.
    """
    sentiment_delta, rating_delta = rules.sentiment_delta, rules.rating_delta
    users: dict[str, list[Any]] = {}
    rows: dict[tuple[str, str], list[Any]] = {}
    for event in events:
        user = event.user_id
        at = event.occurred_at
        state = users.get(user) or _start_friendship(users, friendships, user)
        if isinstance(event, FriendshipAdjusted):
            delta = event.data.delta
        else:
            key = (user, event.data.topic)
            row = rows.get(key) or _start_topic(rows, topics, key)
            if isinstance(event, TurnRecorded):
                turn = event.data
                row[1] += 1
                if turn.speaker == "child":
                    label = turn.sentiment.label
                    row[3][_SENTIMENT_INDEX[label]] += 1
                    delta = sentiment_delta[label]
                else:
                    delta = 0
            else:
                completed = event.data
                row[0] += 1
                row[2] = row[2] + completed.duration_s
                delta = rating_delta[completed.rating]
            if row[4] is None or at > row[4]:
                row[4] = at
        state[0] = max(SCORE_MIN, min(SCORE_MAX, state[0] + delta))
        state[1] += 1
        if state[2] is None or at > state[2]:
            state[2] = at
    for user, (score, applied, last_at) in users.items():
        friendships[user] = Friendship(score, applied, last_at)
    for key, (conversations, turns, duration_s, sentiment, last) in rows.items():
        topics[key] = TopicMetrics(conversations, turns, duration_s, tuple(sentiment), last)


def evolve(
    state: UserProjection, event: Event, rules: FoldRules = CONTRACT_RULES
) -> UserProjection:
    """Apply one event of a user to that user's projection and return the new projection.

    Args:
        state: the user's projection before the event (``UserProjection()`` for a new user).
        event: the next event of the same user in log order.
        rules: the scoring rule to fold with.

    Returns:
        A new ``UserProjection``; ``state`` is not changed.
    """
    friendship = evolve_friendship(state.friendship, event, rules)
    if isinstance(event, FriendshipAdjusted):
        return UserProjection(friendship=friendship, topics=state.topics)
    topic = event.data.topic
    topics = dict(state.topics)
    topics[topic] = evolve_topic(topics.get(topic, TopicMetrics()), event)
    return UserProjection(friendship=friendship, topics=topics)


def fold(
    events: Iterable[Event],
    state: UserProjection | None = None,
    rules: FoldRules = CONTRACT_RULES,
) -> UserProjection:
    """Left fold of one user's events (in log order) from ``state`` or from the empty projection."""
    current = UserProjection() if state is None else state
    for event in events:
        current = evolve(current, event, rules)
    return current


def fold_by_user(
    events: Iterable[Event], rules: FoldRules = CONTRACT_RULES
) -> dict[str, UserProjection]:
    """Fold a mixed sequence of events (log order per user) into one projection per user id."""
    projections: dict[str, UserProjection] = {}
    for event in events:
        user = event.user_id
        projections[user] = evolve(projections.get(user, UserProjection()), event, rules)
    return projections
