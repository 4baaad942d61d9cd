"""The event-id rule of a partition (``projections.event_ids``): first occurrence in log order
wins, whatever the batching. Pure: no database."""

from __future__ import annotations

import itertools
import uuid

from hypothesis import given
from hypothesis import strategies as st

from projections.event_ids import ERASED_USER, FirstUse, judge_event_ids
from schemas.events import Event
from schemas.validation import decode_event
from tests.strategies import make_event

IDS = [str(uuid.UUID(int=n)) for n in range(1, 5)]
USERS = ["kid-a", "kid-b", "kid-c"]


def adjusted(user: str, event_id: str) -> Event:
    body = make_event(
        "friendship.adjusted", user, "2024-01-01T00:00:00Z", {"delta": 1, "reason": "t"}, event_id
    )
    return decode_event(body)


def judge_in_batches(
    log: list[tuple[Event, int]], cuts: list[int]
) -> tuple[list[int], int, list[tuple[int, str]]]:
    """Run the rule batch by batch as ``apply_batch`` does, with what earlier batches recorded.

    Returns the applied offsets, the duplicate count and ``(offset, first user)`` of reuses.
    """
    recorded: dict[str, FirstUse] = {}
    applied: list[int] = []
    duplicates = 0
    reused: list[tuple[int, str]] = []
    bounds = [0, *sorted(set(cuts)), len(log)]
    for start, end in itertools.pairwise(bounds):
        batch = log[start:end]
        if not batch:
            continue
        earlier = {k: v for k, v in recorded.items() if k in {e.event_id for e, _ in batch}}
        verdict = judge_event_ids(0, batch, earlier)
        for event, offset in verdict.to_apply:
            recorded[event.event_id] = FirstUse(event.user_id, 0, offset)
            applied.append(offset)
        duplicates += verdict.duplicates
        reused.extend((r.offset, r.first.user_id) for r in verdict.reused)
    return applied, duplicates, reused


@given(
    st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(IDS)), min_size=1, max_size=30),
    st.lists(st.integers(min_value=0, max_value=30), max_size=10),
)
def test_the_verdict_does_not_depend_on_batch_boundaries(
    occurrences: list[tuple[str, str]], cuts: list[int]
) -> None:
    log = [(adjusted(user, key), offset) for offset, (user, key) in enumerate(occurrences)]
    assert judge_in_batches(log, cuts) == judge_in_batches(log, [])
    assert judge_in_batches(log, cuts) == judge_in_batches(log, list(range(len(log))))


def test_a_reused_id_in_the_same_batch_is_dead_lettered_naming_the_first_use() -> None:
    # Regression: in one batch the second copy (another user) was counted as a duplicate,
    # while in a later batch it was dead-lettered.
    log = [(adjusted("kid-a", IDS[0]), 0), (adjusted("kid-b", IDS[0]), 1)]
    verdict = judge_event_ids(5, log, {})
    assert [offset for _, offset in verdict.to_apply] == [0]
    assert verdict.duplicates == 0
    assert len(verdict.reused) == 1
    assert verdict.reused[0].offset == 1
    assert "(partition 5, offset 0)" in verdict.reused[0].reason
    assert "kid-a" not in verdict.reused[0].reason


def test_a_repeat_for_the_same_user_is_a_duplicate_in_or_across_batches() -> None:
    log = [(adjusted("kid-a", IDS[0]), 0), (adjusted("kid-a", IDS[0]), 1)]
    verdict = judge_event_ids(0, log, {})
    assert (len(verdict.to_apply), verdict.duplicates, verdict.reused) == (1, 1, [])
    later = judge_event_ids(0, log[1:], {IDS[0]: FirstUse("kid-a", 0, 0)})
    assert (later.to_apply, later.duplicates, later.reused) == ([], 1, [])


def test_an_id_first_used_in_another_partition_wins_there() -> None:
    earlier = {IDS[0]: FirstUse("kid-a", 3, 4)}
    verdict = judge_event_ids(1, [(adjusted("kid-b", IDS[0]), 9)], earlier)
    assert verdict.to_apply == []
    assert "(partition 3, offset 4)" in verdict.reused[0].reason


def test_an_id_an_erased_child_used_is_another_users_for_everyone() -> None:
    event = adjusted("kid-b", IDS[0])
    earlier = {IDS[0]: FirstUse(ERASED_USER, 2, 7)}
    verdict = judge_event_ids(2, [(event, 9)], earlier)
    assert not verdict.to_apply and not verdict.repeated
    assert [r.offset for r in verdict.reused] == [9]
    assert "(partition 2, offset 7)" in verdict.reused[0].reason
