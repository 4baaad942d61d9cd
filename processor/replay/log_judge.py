"""What a batch would decide about a partition's records, read from offset 0 without a store.

``replay --user`` and the check of a new fold version (``processor.versions``) fold users out of
the log themselves, beside the batches, to compare with what the batches wrote. They must decide
every record as a batch does (``processor.applying.batch``): encrypted events opened, erased
children's events dropped, then the event-id rule over the partition in log order, where an id
an erased child used stays used. ``PartitionJudge`` holds those steps and the partition's first
uses; a caller feeds it each partition's records in log order.

Known limit: the event-id rule is followed within a partition; a batch also sees an id first
used in another partition (README "Replay", "Known limit").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from processor.applying.decode import DecodedBatch, decode_records
from processor.privacy.opening import OpenedBatch, batch_users, drop_erased
from processor.reading.log_record import LogRecord
from projections.event_ids import EventIdVerdict, FirstUse, first_occurrences, judge_event_ids

#: Opens a batch's encrypted records (``privacy.opening.open_batch`` on a store).
Opener = Callable[[Sequence[LogRecord]], OpenedBatch]
#: The erased children among the ones a batch names.
ErasedUsers = Callable[[set[str]], set[str]]


@dataclass(frozen=True)
class Judged:
    """A batch of records as a batch decides them: its decoded records (erased children's
    dropped) and the event-id verdict over its valid events."""

    decoded: DecodedBatch
    verdict: EventIdVerdict


class PartitionJudge:
    """Decides the records of whole partitions as batches do (feed each partition in order).

    Args:
        opener: opens a batch's encrypted records (None: they stay closed, dead letters).
        erased_ids: the ids erased children used (``erased_event_ids``), by lower-cased id:
            they stay used (``projections.event_ids.ERASED_USER``).
        erased: the erased children among the ones a batch names (None: none is).
    """

    def __init__(
        self,
        opener: Opener | None = None,
        erased_ids: Mapping[str, FirstUse] | None = None,
        erased: ErasedUsers | None = None,
    ) -> None:
        self._opener = opener
        self._erased_ids = dict(erased_ids or {})
        self._erased = erased
        self._seen: dict[int, dict[str, FirstUse]] = {}

    def judge(self, partition: int, records: Sequence[LogRecord]) -> Judged:
        """The next records of ``partition`` (after the ones fed before), decided."""
        if partition not in self._seen:
            self._seen[partition] = {
                key: first
                for key, first in self._erased_ids.items()
                if first.partition == partition
            }
        seen = self._seen[partition]
        opened = self._opener(records) if self._opener is not None else OpenedBatch()
        decoded = decode_records(partition, records, opened.unopened, opened.plaintexts)
        if self._erased is not None:
            decoded = drop_erased(decoded, self._erased(batch_users(decoded))).decoded
        candidates = first_occurrences(decoded.valid)
        verdict = judge_event_ids(
            partition, decoded.valid, {key: seen[key] for key in candidates if key in seen}
        )
        for event, offset in verdict.to_apply:
            seen[event.event_id.lower()] = FirstUse(event.user_id, partition, offset)
        return Judged(decoded, verdict)
