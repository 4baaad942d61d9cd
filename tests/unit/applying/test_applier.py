"""``processor.applying.applier.apply_isolating_rejects``: one batch the database rejects is
applied one record at a time and the culprit dead-lettered, for live owners and replay alike.
The applier here is in memory: it rejects records by offset as PostgreSQL would with a
``DataError``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg
import pytest

from processor.applying.applier import apply_isolating_rejects
from processor.applying.batch import BatchResult
from processor.applying.decode import rejected_reason
from processor.reading.log_record import LogRecord


class InMemoryApplier:
    """Applies records unless one of them is in ``rejects`` (then the whole call fails)."""

    def __init__(self, rejects: set[int]) -> None:
        self.rejects = rejects
        self.checkpoint = -1
        self.calls: list[tuple[list[int], dict[int, str]]] = []

    def __call__(
        self, records: Sequence[LogRecord], poisoned: Mapping[int, str] | None
    ) -> BatchResult:
        offsets = [r.offset for r in records]
        self.calls.append((offsets, dict(poisoned or {})))
        dead = set(poisoned or {})
        if any(o in self.rejects and o not in dead for o in offsets):
            raise psycopg.errors.NumericValueOutOfRange("value out of range for type smallint")
        self.checkpoint = records[-1].last_offset
        result = BatchResult(0, offsets[0], records[-1].last_offset)
        result.applied = len(offsets) - len(dead)
        result.dead_lettered = len(dead)
        return result


def records(count: int) -> list[LogRecord]:
    return [LogRecord(offset, b"{}") for offset in range(count)]


def test_a_batch_the_database_accepts_is_one_call() -> None:
    applier = InMemoryApplier(rejects=set())
    result = apply_isolating_rejects(applier, 0, records(5))
    assert (result.applied, result.dead_lettered) == (5, 0)
    assert len(applier.calls) == 1


@pytest.mark.parametrize("rejects", [{0}, {2}, {4}, {1, 3}])
def test_only_the_records_the_database_rejects_are_dead_lettered(rejects: set[int]) -> None:
    applier = InMemoryApplier(rejects)
    told: list[tuple[int, str]] = []
    whole: list[Exception] = []
    result = apply_isolating_rejects(
        applier,
        0,
        records(5),
        on_rejected_batch=whole.append,
        on_rejected_record=lambda record, reason: told.append((record.offset, reason)),
    )
    assert (result.applied, result.dead_lettered) == (5 - len(rejects), len(rejects))
    assert (result.first_offset, result.last_offset) == (0, 4)
    assert applier.checkpoint == 4
    assert len(whole) == 1
    assert [offset for offset, _ in told] == sorted(rejects)
    assert all(
        reason.startswith("the database rejected this event: value out of range")
        for _, reason in told
    )
    poisoned_calls = [p for _, p in applier.calls if p]
    assert [next(iter(p)) for p in poisoned_calls] == sorted(rejects)


def test_other_errors_are_not_swallowed() -> None:
    def broken(_records: Sequence[LogRecord], _poisoned: Mapping[int, str] | None) -> BatchResult:
        raise psycopg.errors.SerializationFailure("try again")

    with pytest.raises(psycopg.errors.SerializationFailure):
        apply_isolating_rejects(broken, 0, records(2))


def test_the_reason_names_the_database_error() -> None:
    error = psycopg.errors.NumericValueOutOfRange("smallint out of range")
    assert rejected_reason(error) == "the database rejected this event: smallint out of range"
