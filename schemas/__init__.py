"""Event envelope and event types (docs/contract.md sections 1-2), decoded and validated by
msgspec."""

from schemas.events import (
    RATINGS,
    SENTIMENTS,
    ConversationCompleted,
    ConversationCompletedData,
    Event,
    FriendshipAdjusted,
    FriendshipAdjustedData,
    TurnRecorded,
    TurnRecordedData,
)
from schemas.validation import EventValidationError, decode_event, decode_event_batch, encode_event

__all__ = [
    "RATINGS",
    "SENTIMENTS",
    "ConversationCompleted",
    "ConversationCompletedData",
    "Event",
    "EventValidationError",
    "FriendshipAdjusted",
    "FriendshipAdjustedData",
    "TurnRecorded",
    "TurnRecordedData",
    "decode_event",
    "decode_event_batch",
    "encode_event",
]
