"""The event-id rule of a partition, as a pure function of the batch and what came before.

Within a partition the first occurrence of an event id in log order wins (docs/contract.md section
3,
"Event ids"): it is applied. A later occurrence with the same ``user_id`` is a duplicate (no
effect); one with another ``user_id`` is dead-lettered with a reason naming where the first use
is (never whose it is: the reason must not carry another child's id). The answer depends only on
log order, never on where batches begin and end, so live processing and replay (which batch
differently) decide alike. Across partitions the first to commit wins.

An id an erased child used stays used (``ERASED_USER``): the store gives its first use with that
user, so every later occurrence is another user's and a dead letter, live and in a replay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from schemas.events import Event

#: The ``FirstUse.user_id`` of an id an erased child used: no valid ``user_id`` is empty.
ERASED_USER: Final = ""


@dataclass(frozen=True, slots=True)
class FirstUse:
    """Where an event id was first seen: the user it belongs to (``ERASED_USER`` when that
    child was erased) and its log position."""

    user_id: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ReusedId:
    """A later occurrence of an id for another user than its first use: a dead letter."""

    event: Event
    offset: int
    first: FirstUse

    @property
    def reason(self) -> str:
        """The dead letter's reason: where the first use is (not whose: see the module doc)."""
        return (
            f"event_id already applied for another user (partition {self.first.partition}, "
            f"offset {self.first.offset}); not applied"
        )


@dataclass(frozen=True, slots=True)
class RepeatedId:
    """A later occurrence of an id for the same user as its first use: a duplicate."""

    event: Event
    offset: int
    first: FirstUse


@dataclass(slots=True)
class EventIdVerdict:
    """What a batch's valid events are under the rule: applied, duplicate or reused.

    Attributes:
        to_apply: ``(event, offset)`` to fold, in log order.
        repeated: occurrences with the first use's user (duplicates: no effect).
        reused: occurrences for another user than the first use (dead letters).
    """

    to_apply: list[tuple[Event, int]] = field(default_factory=list)
    repeated: list[RepeatedId] = field(default_factory=list)
    reused: list[ReusedId] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """How many occurrences are duplicates."""
        return len(self.repeated)


def first_occurrences(valid: Sequence[tuple[Event, int]]) -> dict[str, tuple[Event, int]]:
    """The first ``(event, offset)`` of each event id (lower-cased) in the batch, in log order."""
    first: dict[str, tuple[Event, int]] = {}
    for event, offset in valid:
        first.setdefault(event.event_id.lower(), (event, offset))
    return first


def judge_event_ids(
    partition: int,
    valid: Sequence[tuple[Event, int]],
    earlier: Mapping[str, FirstUse],
) -> EventIdVerdict:
    """Apply the rule to a batch. Pure.

    Args:
        partition: the batch's partition.
        valid: the batch's valid events with their offsets, in log order.
        earlier: the first use of each id of the batch that was recorded before the batch
            (any partition), keyed by lower-cased id; ids absent here are new.

    Returns:
        The verdict for every occurrence in ``valid``.
    """
    if not earlier and len({event.event_id.lower() for event, _ in valid}) == len(valid):
        # Every id is new and none repeats in the batch: every occurrence is a first use.
        return EventIdVerdict(to_apply=list(valid))
    verdict = EventIdVerdict()
    first_use: dict[str, FirstUse] = dict(earlier)
    for event, offset in valid:
        key = event.event_id.lower()
        first = first_use.get(key)
        if first is None:
            first_use[key] = FirstUse(event.user_id, partition, offset)
            verdict.to_apply.append((event, offset))
        elif first.user_id == event.user_id:
            verdict.repeated.append(RepeatedId(event, offset, first))
        else:
            verdict.reused.append(ReusedId(event, offset, first))
    return verdict
