"""Older versions of the event types, and the upcasters that turn them into the current one.
Pure: no I/O.

An event's envelope may carry ``version`` (an integer; absent = 1; docs/contract.md,
"Versions"). Each type has a current version, the Struct in ``schemas.events``. An older one
keeps its own Struct here, and one upcaster per step (``v1 -> v2``, later ``v2 -> v3``) turns
it into the next, so an event of any known version is decoded at its own version (by msgspec,
with that version's rules) and then upcast step by step. The log is never rewritten: old events
stay as they were written and are upcast each time they are read, live and in a replay alike.

To change a type in a way that is not additive (a field renamed, retyped or split):

1. copy its current Struct here as ``<Type>V<n>`` with ``version: Literal[n] = n``;
2. change the Struct in ``schemas.events`` and give it ``version: Literal[n + 1] = n + 1``;
3. write the upcaster ``<Type>V<n> -> next`` and register it in ``_STEPS`` under ``(type, n)``;
4. list the new rules of the changed fields in ``schemas.problems`` (per version).

An event whose version is newer than this code knows is invalid (``NEWER_VERSION``): it is
dead-lettered with that reason, never guessed at.

Source of the pattern: Greg Young, "Versioning in an Event Sourced System" (2017), chapter
"Upcasting"; pyeventsourcing's ``upcast_v1_v2`` methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, cast

import msgspec

from schemas.events import (
    ConversationCompleted,
    ConversationId,
    Event,
    EventId,
    FriendshipAdjusted,
    OccurredAt,
    Sentiment,
    SentimentReading,
    Speaker,
    Topic,
    TurnRecorded,
    TurnRecordedData,
    UserId,
)

TURN_RECORDED: Final = "conversation.turn_recorded"
COMPLETED: Final = "conversation.completed"
ADJUSTED: Final = "friendship.adjusted"

#: The confidence a version-1 turn's label is upcast with: version 1 gave the label alone, and
#: the product took it as given.
V1_CONFIDENCE: Final = 1.0


class TurnRecordedDataV1(msgspec.Struct, frozen=True, gc=False):
    """``data`` of ``conversation.turn_recorded`` version 1: ``sentiment`` is the label."""

    conversation_id: ConversationId
    topic: Topic
    speaker: Speaker
    sentiment: Sentiment


class TurnRecordedV1(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag=TURN_RECORDED):
    """``conversation.turn_recorded`` version 1 (no ``version`` in its envelope)."""

    event_id: EventId
    user_id: UserId
    occurred_at: OccurredAt
    data: TurnRecordedDataV1
    version: Literal[1] = 1


def turn_recorded_v1_to_v2(event: TurnRecordedV1) -> TurnRecorded:
    """Version 1 -> 2: the sentiment label becomes ``{"label", "confidence"}``, with
    ``V1_CONFIDENCE``."""
    data = event.data
    return TurnRecorded(
        event_id=event.event_id,
        user_id=event.user_id,
        occurred_at=event.occurred_at,
        data=TurnRecordedData(
            conversation_id=data.conversation_id,
            topic=data.topic,
            speaker=data.speaker,
            sentiment=SentimentReading(label=data.sentiment, confidence=V1_CONFIDENCE),
        ),
    )


#: Any event as some version decodes it: a current Struct or an older one.
AnyVersion = Event | TurnRecordedV1

#: Each type's Struct per version; the highest is the current one (``schemas.events``).
_STRUCTS: Final[Mapping[str, Mapping[int, type[msgspec.Struct]]]] = {
    TURN_RECORDED: {1: TurnRecordedV1, 2: TurnRecorded},
    COMPLETED: {1: ConversationCompleted},
    ADJUSTED: {1: FriendshipAdjusted},
}
#: The upcaster from ``(type, version)`` to ``version + 1``.
_STEPS: Final[Mapping[tuple[str, int], Callable[[Any], AnyVersion]]] = {
    (TURN_RECORDED, 1): turn_recorded_v1_to_v2,
}

#: The type (its ``type`` tag) of each Struct, whatever its version.
_TYPE_OF: Final[Mapping[type[msgspec.Struct], str]] = {
    struct: kind for kind, versions in _STRUCTS.items() for struct in versions.values()
}
#: The current version of each type.
CURRENT_VERSIONS: Final[Mapping[str, int]] = {
    kind: max(versions) for kind, versions in _STRUCTS.items()
}
#: The newest version any type has (versions of one envelope run from 1 to this).
NEWEST_VERSION: Final = max(CURRENT_VERSIONS.values())


def structs_at(version: int) -> tuple[type[msgspec.Struct], ...]:
    """The Struct of each type that has ``version`` (a tagged union for one decoder)."""
    return tuple(versions[version] for versions in _STRUCTS.values() if version in versions)


def newer_version_reason(kind: str, version: int) -> str:
    """Why an event of a version newer than this code knows is invalid."""
    return (
        f"version {version} of {kind} is newer than this processor knows (it reads versions 1 "
        f"to {CURRENT_VERSIONS[kind]}): upgrade the processor, then replay its dead letters"
    )


def upcast(event: AnyVersion) -> Event:
    """``event`` at its type's current version, through every upcaster from its own.

    Raises:
        KeyError: a step has no upcaster (a bug in ``_STEPS``: each older version needs one).
    """
    kind = _TYPE_OF[type(event)]
    current = CURRENT_VERSIONS[kind]
    while event.version < current:
        event = _STEPS[(kind, event.version)](event)
    return cast("Event", event)
