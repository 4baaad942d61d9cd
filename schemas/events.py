"""The event envelope and the three event types as frozen msgspec Structs.

Source of every rule: docs/contract.md sections 1 and 2. The envelope fields (``event_id``,
``type``,
``user_id``, ``occurred_at``, ``data``) are repeated on each event type so that ``type`` is the tag
of a msgspec tagged union: one decoder picks the right Struct and validates ``data`` with it.

Schema evolution: new fields get defaults and go last; unknown fields are ignored (msgspec's
default), which is the contract's forward-compatibility rule. A change that is not additive gets
a new ``version`` of its type: the Structs here are each type's *current* version, and
``schemas.upcasting`` keeps the older ones with one upcaster per step (docs/contract.md,
"Versions").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec

# `(?!\n)$` instead of `$`: Python's `$` also matches before a trailing newline.
UUID_PATTERN: Final = (
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?!\n)$"
)
USER_ID_PATTERN: Final = r"^[A-Za-z0-9._:@-]{1,128}(?!\n)$"
TOPIC_PATTERN: Final = r"^[a-z0-9_]{1,64}(?!\n)$"

EventId = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN, description="UUID, 8-4-4-4-12 hex")]
UserId = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=128, pattern=USER_ID_PATTERN, description="partition key"
    ),
]
OccurredAt = Annotated[
    datetime, msgspec.Meta(tz=True, description="RFC 3339 timestamp with a UTC offset")
]
ConversationId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=TOPIC_PATTERN)]

Sentiment = Literal[
    "happy", "curious", "surprised", "neutral", "sad", "fearful", "angry", "disgusted"
]
Rating = Literal["excellent", "good", "passable", "not_good", "poor"]
Speaker = Literal["child", "robot"]

#: The eight sentiment labels in their contract order (also the order of stored counts).
SENTIMENTS: Final[tuple[Sentiment, ...]] = (
    "happy",
    "curious",
    "surprised",
    "neutral",
    "sad",
    "fearful",
    "angry",
    "disgusted",
)
#: The five conversation ratings, best first.
RATINGS: Final[tuple[Rating, ...]] = ("excellent", "good", "passable", "not_good", "poor")


#: How sure a sentiment classifier was of its label, 0 (a guess) to 1 (certain).
Confidence = Annotated[float, msgspec.Meta(ge=0, le=1)]


class SentimentReading(msgspec.Struct, frozen=True, gc=False):
    """``data.sentiment`` of a turn since version 2: the label and the classifier's confidence
    (0..1). Only the label changes the projections."""

    label: Sentiment
    confidence: Confidence


class TurnRecordedData(msgspec.Struct, frozen=True, gc=False):
    """`data` of ``conversation.turn_recorded`` (version 2): one turn of a conversation."""

    conversation_id: ConversationId
    topic: Topic
    speaker: Speaker
    sentiment: SentimentReading


class ConversationCompletedData(msgspec.Struct, frozen=True, gc=False):
    """`data` of ``conversation.completed``: turns (count), duration_s (seconds), rating."""

    conversation_id: ConversationId
    topic: Topic
    turns: Annotated[int, msgspec.Meta(ge=0, le=10_000)]
    duration_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)]
    rating: Rating


class FriendshipAdjustedData(msgspec.Struct, frozen=True, gc=False):
    """`data` of ``friendship.adjusted``: a direct score change in -100..100 points."""

    delta: Annotated[int, msgspec.Meta(ge=-100, le=100)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class TurnRecorded(
    msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="conversation.turn_recorded"
):
    """A conversation turn by the child or the robot (version 2; version 1 is upcast)."""

    event_id: EventId
    user_id: UserId
    occurred_at: OccurredAt
    data: TurnRecordedData
    version: Literal[2] = 2


class ConversationCompleted(
    msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="conversation.completed"
):
    """A finished conversation with its rating (version 1)."""

    event_id: EventId
    user_id: UserId
    occurred_at: OccurredAt
    data: ConversationCompletedData
    version: Literal[1] = 1


class FriendshipAdjusted(
    msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="friendship.adjusted"
):
    """An operator's or a rule's direct adjustment of the score (version 1)."""

    event_id: EventId
    user_id: UserId
    occurred_at: OccurredAt
    data: FriendshipAdjustedData
    version: Literal[1] = 1


#: Any valid event; ``type`` selects the member.
Event = TurnRecorded | ConversationCompleted | FriendshipAdjusted
