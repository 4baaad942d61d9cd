"""Apply one batch of log records in ONE transaction: the rules of a batch, in the design's steps.

This is the single code path for live processing and replay (README "How it works"):

1. open and decode (pure but for reading the data keys): refuse offsets out of order; decrypt
   encrypted events with their children's data keys (``processor.privacy.opening``); turn
   records into valid events and dead letters (``processor.applying.decode``);
2. inside one transaction of the store (``processor.applying.store``):
   a. lock the partition's checkpoint and fence a stale owner; drop what belongs to erased
      children (skipped and counted: an erasure locks every checkpoint, so it is seen here);
   b. record the batch's event ids: only ids new to the store are applied, so a redelivered,
      replayed or re-published event changes nothing the second time, and a reused id follows
      ``projections.event_ids`` (first occurrence in log order wins);
   c. write projections: create and lock the touched rows in key order, fold the events in
      memory with ``projections.fold``, write each touched row once;
   d. keep the dead letters (reason, partition, offset, raw bytes);
   e. advance the checkpoint by compare-and-set; COMMIT.

A crash anywhere before COMMIT leaves nothing behind; the batch is read again and applied once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from processor.applying.decode import check_offsets, decode_records, reused_id_letters
from processor.applying.store import BatchStore, BatchTransaction, CheckpointAdvance, TopicKey
from processor.privacy.keys import Keys
from processor.privacy.opening import batch_users, drop_erased, open_batch
from processor.reading.log_record import LogRecord
from projections.event_ids import first_occurrences, judge_event_ids
from projections.fold import (
    CONTRACT_RULES,
    FoldRules,
    Friendship,
    TopicMetrics,
    fold_rows,
)
from schemas.events import Event, FriendshipAdjusted


@dataclass(slots=True)
class BatchResult:
    """What one committed batch did (counts are events, offsets are stream offsets)."""

    partition: int
    first_offset: int
    last_offset: int
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    #: Events and dead letters of erased children, skipped (docs/contract.md, "Erasure").
    erased_skipped: int = 0

    def add(self, other: BatchResult) -> None:
        """Count ``other`` (a later batch of the same partition) into this result."""
        self.last_offset = max(self.last_offset, other.last_offset)
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.erased_skipped += other.erased_skipped


def apply_batch(
    store: BatchStore,
    partition: int,
    records: Sequence[LogRecord],
    expected_checkpoint: int,
    owner: str,
    *,
    keys: Keys,
    lease_epoch: int | None = None,
    poisoned: Mapping[int, str] | None = None,
    rules: FoldRules = CONTRACT_RULES,
) -> BatchResult:
    """Apply ``records`` (one partition, in log order) in one transaction of ``store``.

    Args:
        store: where to apply (``PostgresStore`` on a connection, or ``InMemoryStore``).
        partition: partition number.
        records: log records of the partition in log order, every offset above
            ``expected_checkpoint`` (holes allowed).
        expected_checkpoint: the committed offset this owner resumed from (-1 = nothing yet).
        owner: who commits (written on the checkpoint, e.g. ``"host:pid"``).
        keys: the key-encryption key (opens encrypted events) and the hash key (finds erased
            children).
        lease_epoch: the fencing token the owner got with its lease; the batch commits only
            while the checkpoint still carries it, and the commit is logged. None (replay into
            a shadow schema) checks no epoch and logs nothing.
        poisoned: offsets to dead-letter with the given reason instead of applying them (the
            database rejected them, see ``processor.applying.applier``).
        rules: the fold version to fold with; the batch commits only while the checkpoint
            carries that version (``FoldVersionChanged`` otherwise).

    Returns:
        The counts of the committed batch.

    Raises:
        ValueError: ``records`` is empty.
        OffsetsOutOfOrder: an offset is not above the previous one (or the checkpoint).
        CheckpointConflict: another owner moved the checkpoint or took the lease; nothing was
            applied.
        psycopg.Error: a database failure; the transaction was rolled back as a whole.
    """
    if not records:
        raise ValueError("apply_batch needs at least one record")
    check_offsets(partition, records, expected_checkpoint)
    opened = open_batch(store, records, keys)
    decoded = decode_records(
        partition, records, {**opened.unopened, **(poisoned or {})}, opened.plaintexts
    )
    digests = {user: keys.batch_user_digest(user) for user in batch_users(decoded)}
    result = BatchResult(partition, records[0].offset, records[-1].last_offset)
    with store.transaction() as tx:
        tx.lock_checkpoint(partition, expected_checkpoint, lease_epoch, rules.version)
        kept = drop_erased(decoded, tx.erased(digests))
        valid = kept.decoded.valid
        first_ids = tx.record_event_ids(partition, first_occurrences(valid), opened.encrypted)
        verdict = judge_event_ids(partition, valid, first_ids)
        dead = kept.decoded.dead + reused_id_letters(partition, verdict.reused, records)
        if verdict.to_apply:
            write_projections(tx, [event for event, _ in verdict.to_apply], rules)
        if dead:
            tx.write_dead_letters(dead)
        result.applied, result.duplicates = len(verdict.to_apply), verdict.duplicates
        result.dead_lettered, result.erased_skipped = len(dead), kept.skipped
        tx.advance_checkpoint(
            CheckpointAdvance(
                partition=partition,
                expected=expected_checkpoint,
                first_offset=result.first_offset,
                last_offset=result.last_offset,
                owner=owner,
                applied=result.applied,
                dead_lettered=result.dead_lettered,
                lease_epoch=lease_epoch,
            )
        )
    return result


def touched_rows(events: Sequence[Event]) -> tuple[list[str], list[TopicKey]]:
    """The sorted users and ``(user, topic)`` keys a batch's events change. Pure."""
    users = sorted({event.user_id for event in events})
    topics = sorted(
        {(e.user_id, e.data.topic) for e in events if not isinstance(e, FriendshipAdjusted)}
    )
    return users, topics


def fold_into(
    events: Sequence[Event],
    friendships: dict[str, Friendship],
    topics: dict[TopicKey, TopicMetrics],
    rules: FoldRules = CONTRACT_RULES,
) -> None:
    """Fold ``events`` (log order) into the row states, in place (``projections.fold.fold_rows``:
    each touched row once, not a new state per event). Pure but for the dicts."""
    fold_rows(events, friendships, topics, rules)


def write_projections(
    tx: BatchTransaction, events: Sequence[Event], rules: FoldRules = CONTRACT_RULES
) -> None:
    """Lock the rows ``events`` touch, fold the events into them with ``rules`` and write them
    back."""
    users, topic_keys = touched_rows(events)
    friendships, topics = tx.lock_rows(users, topic_keys)
    fold_into(events, friendships, topics, rules)
    tx.write_rows(
        {user: friendships[user] for user in users}, {key: topics[key] for key in topic_keys}
    )
