"""Apply one batch of log records to the stored projections in ONE transaction.

This is the single code path for live processing and replay (DESIGN.md "Data flow"):

1. lock the partition's checkpoint row (``SELECT ... FOR UPDATE``) and check it still holds the
   offset the caller resumed from (fencing);
2. record the batch's event ids (``ON CONFLICT DO NOTHING``): only ids new to the table are applied,
   so a redelivered, replayed or re-published event changes nothing the second time; a reused
   id follows ``projections.event_ids`` (first occurrence in log order wins);
3. create the touched projection rows that do not exist yet, lock them all in key order
   (``SELECT ... FOR UPDATE``), fold the events in memory with ``projections.fold``, and write
   each touched row once (set-based upserts);
4. write invalid records as dead letters (reason, partition, offset, raw bytes);
5. advance the checkpoint by compare-and-set on the old value; then COMMIT.

A crash anywhere before COMMIT leaves nothing behind; the batch is read again and applied once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import msgspec
import psycopg

from projections import checkpoints
from projections.checkpoints import (  # re-exported: the batch's errors and set-up
    CheckpointConflict,
    PartitionCountMismatch,
    ensure_checkpoints,
    read_checkpoint,
)
from projections.event_ids import FirstUse, first_occurrences, judge_event_ids
from projections.fold import Friendship, TopicMetrics, evolve_friendship, evolve_topic
from projections.tables import SENTIMENT_COLUMNS
from schemas.events import Event, FriendshipAdjusted
from schemas.validation import EventValidationError, decode_event


class OffsetGap(RuntimeError):
    """A batch's offsets are not strictly increasing after the checkpoint: refusing to apply it.

    Offsets may have holes (RabbitMQ gives an offset to the chunk that opens each stream segment,
    which consumers never see); they can never go backwards or repeat.
    """


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One message of a partition stream: its offset (0-based, per stream) and raw body bytes.

    Attributes:
        offset: the record's (first) offset.
        body: the message body, or the raw entry when ``error`` is set.
        error: set when the stream entry could not be read as a message; it is then
            dead-lettered with that reason.
        routing_key: the routing key it was published with (AMQP), None for an entry written
            straight to the stream; an event whose routing key is not its ``user_id`` is
            dead-lettered (CONTRACT.md section 8, "Routing").
        records: how many offsets the record covers: 1, or more for an unreadable sub-entry
            batch (one dead letter for all of them).
    """

    offset: int
    body: bytes
    error: str | None = None
    routing_key: str | None = None
    records: int = 1

    @property
    def last_offset(self) -> int:
        """The last offset the record covers."""
        return self.offset + self.records - 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An invalid record: where it is in the log, why it is invalid and its raw bytes."""

    partition: int
    offset: int
    event_id: str | None
    field: str
    reason: str
    raw: bytes


@dataclass(slots=True)
class BatchResult:
    """What one committed batch did (counts are events, offsets are stream offsets)."""

    partition: int
    first_offset: int
    last_offset: int
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    users: int = 0
    applied_events: list[tuple[Event, int]] = field(default_factory=list)


_EVENT_ID_PROBE: Final = msgspec.json.Decoder(dict[str, object])


def _storable(text: str) -> str:
    """Text PostgreSQL accepts: NUL characters (which a producer may send) escaped."""
    return text.replace("\x00", "\\u0000")


def _readable_event_id(body: bytes) -> str | None:
    """The ``event_id`` of an invalid body when it is a readable string, else None."""
    try:
        decoded = _EVENT_ID_PROBE.decode(body)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deeply
        return None
    value = decoded.get("event_id")
    return _storable(value[:64]) if isinstance(value, str) else None


def decode_records(
    partition: int,
    records: Sequence[LogRecord],
    poisoned: Mapping[int, str] | None = None,
) -> tuple[list[tuple[Event, int]], list[DeadLetter]]:
    """Decode a batch: ``(valid (event, offset) in log order, dead letters)``. Pure, no I/O.

    Records with an ``error``, and those whose offset is in ``poisoned`` (offset -> reason), are
    dead letters whatever their body holds; so is a valid event whose routing key is not its
    ``user_id``.
    """
    valid: list[tuple[Event, int]] = []
    dead: list[DeadLetter] = []
    for record in records:
        reason = record.error or (poisoned or {}).get(record.offset)
        if reason is not None:
            dead.append(
                DeadLetter(
                    partition=partition,
                    offset=record.offset,
                    event_id=_readable_event_id(record.body),
                    field="",
                    reason=_storable(reason),
                    raw=record.body,
                )
            )
            continue
        try:
            event = decode_event(record.body)
        except EventValidationError as error:
            dead.append(
                DeadLetter(
                    partition=partition,
                    offset=record.offset,
                    event_id=_readable_event_id(record.body),
                    field=_storable(error.field),
                    reason=_storable(error.reason),
                    raw=record.body,
                )
            )
            continue
        if record.routing_key is not None and record.routing_key != event.user_id:
            dead.append(
                DeadLetter(
                    partition=partition,
                    offset=record.offset,
                    event_id=_storable(event.event_id),
                    field="user_id",
                    reason=_storable(misrouted_reason(record.routing_key, event.user_id)),
                    raw=record.body,
                )
            )
            continue
        valid.append((event, record.offset))
    return valid, dead


#: Longest routing key quoted in a dead letter's reason (AMQP allows 255 bytes).
_QUOTED_KEY_CHARS: Final = 128


def misrouted_reason(routing_key: str, user_id: str) -> str:
    """Why an event published under another routing key than its ``user_id`` is dead."""
    shown = routing_key[:_QUOTED_KEY_CHARS]
    if len(routing_key) > _QUOTED_KEY_CHARS:
        shown += "..."
    return (
        f"routing key {shown!r} is not the user_id {user_id!r}: the key chose the partition, so "
        "this user's events could sit in two partitions and lose their order; publish with "
        "routing key = user_id"
    )


_EARLIER_USES: Final = """
SELECT event_id::text, user_id, partition, log_offset FROM applied_events
WHERE event_id = ANY(%b::uuid[])
"""
_RECORD_EVENT_IDS: Final = """
INSERT INTO applied_events (event_id, partition, log_offset, user_id, type, occurred_at)
SELECT * FROM unnest(%b::uuid[], %b::int[], %b::bigint[], %b::text[], %b::text[],
                     %b::timestamptz[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id::text
"""
# Rows a batch will write are created first when missing, then locked: FOR UPDATE locks only
# rows that exist, so two transactions touching a new user would both fold from the empty
# state and the later upsert would overwrite the earlier (a lost update). An insert that meets
# another transaction's uncommitted row waits for it, and the lock then reads its result.
_CREATE_MISSING_FRIENDSHIPS: Final = """
INSERT INTO friendships (user_id, score, events_applied, last_event_at)
SELECT user_id, 0, 0, NULL FROM unnest(%b::text[]) AS k(user_id) ORDER BY user_id
ON CONFLICT (user_id) DO NOTHING
"""
_ZERO_SENTIMENTS: Final = ", ".join("0" for _ in SENTIMENT_COLUMNS)
_CREATE_MISSING_TOPICS: Final = f"""
INSERT INTO topic_metrics (user_id, topic, conversations, turns, duration_s,
                           {", ".join(SENTIMENT_COLUMNS)}, last_discussed_at)
SELECT user_id, topic, 0, 0, 0, {_ZERO_SENTIMENTS}, NULL
FROM unnest(%b::text[], %b::text[]) AS k(user_id, topic) ORDER BY user_id, topic
ON CONFLICT (user_id, topic) DO NOTHING
"""
_LOCK_FRIENDSHIPS: Final = """
SELECT user_id, score, events_applied, last_event_at FROM friendships
WHERE user_id = ANY(%b::text[]) ORDER BY user_id FOR UPDATE
"""
_SENTIMENT_LIST: Final = ", ".join(SENTIMENT_COLUMNS)
_LOCK_TOPICS: Final = f"""
SELECT t.user_id, t.topic, t.conversations, t.turns, t.duration_s, {_SENTIMENT_LIST},
       t.last_discussed_at
FROM topic_metrics t
JOIN unnest(%b::text[], %b::text[]) AS k(user_id, topic)
  ON t.user_id = k.user_id AND t.topic = k.topic
ORDER BY t.user_id, t.topic FOR UPDATE OF t
"""
_UPSERT_FRIENDSHIPS: Final = """
INSERT INTO friendships (user_id, score, events_applied, last_event_at)
SELECT * FROM unnest(%b::text[], %b::smallint[], %b::bigint[], %b::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
  score = excluded.score,
  events_applied = excluded.events_applied,
  last_event_at = excluded.last_event_at
"""
_SENTIMENT_ARRAYS: Final = ", ".join("%b::bigint[]" for _ in SENTIMENT_COLUMNS)
_SENTIMENT_SET: Final = ",\n  ".join(f"{c} = excluded.{c}" for c in SENTIMENT_COLUMNS)
_UPSERT_TOPICS: Final = f"""
INSERT INTO topic_metrics (user_id, topic, conversations, turns, duration_s, {_SENTIMENT_LIST},
                           last_discussed_at)
SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::float8[],
                     {_SENTIMENT_ARRAYS}, %b::timestamptz[])
ON CONFLICT (user_id, topic) DO UPDATE SET
  conversations = excluded.conversations,
  turns = excluded.turns,
  duration_s = excluded.duration_s,
  {_SENTIMENT_SET},
  last_discussed_at = excluded.last_discussed_at
"""
_INSERT_DEAD_LETTERS: Final = """
INSERT INTO dead_letters (partition, log_offset, event_id, field, reason, raw)
SELECT * FROM unnest(%b::int[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::bytea[])
ON CONFLICT (partition, log_offset) DO NOTHING
"""


def _fold_into(
    events: Sequence[Event],
    friendships: dict[str, Friendship],
    topics: dict[tuple[str, str], TopicMetrics],
) -> None:
    for event in events:
        user = event.user_id
        friendships[user] = evolve_friendship(friendships.get(user, Friendship()), event)
        if not isinstance(event, FriendshipAdjusted):
            key = (user, event.data.topic)
            topics[key] = evolve_topic(topics.get(key, TopicMetrics()), event)


def apply_batch(
    conn: psycopg.Connection,
    partition: int,
    records: Sequence[LogRecord],
    expected_checkpoint: int,
    owner: str,
    *,
    lease_epoch: int | None = None,
    poisoned: Mapping[int, str] | None = None,
) -> BatchResult:
    """Apply ``records`` (one partition, in log order) in one transaction.

    Args:
        conn: an autocommit psycopg connection (the transaction is opened here).
        partition: partition number.
        records: log records of the partition in log order, every offset above
            ``expected_checkpoint`` (holes allowed, see ``OffsetGap``).
        expected_checkpoint: the committed offset this owner resumed from (-1 = nothing yet).
        owner: who commits (written on the checkpoint row, e.g. ``"host:pid"``).
        lease_epoch: the fencing token the owner got with its lease; the batch commits only
            while the checkpoint row still carries it, and is written to ``checkpoint_log``.
            None (replay into a shadow schema) checks no epoch and logs nothing.
        poisoned: offsets to dead-letter with the given reason instead of applying them (the
            owner found that the database rejects them, e.g. a value out of its range).

    Returns:
        The counts of the committed batch.

    Raises:
        OffsetGap: an offset is not above the previous one (or the checkpoint).
        CheckpointConflict: another owner moved the checkpoint or took the lease; nothing was
            applied.
        psycopg.Error: a database failure; the transaction was rolled back as a whole.
    """
    if not records:
        raise ValueError("apply_batch needs at least one record")
    previous = expected_checkpoint
    for record in records:
        if record.offset <= previous:
            raise OffsetGap(
                f"partition {partition}: record at offset {record.offset} does not follow "
                f"offset {previous}"
            )
        previous = record.last_offset
    valid, dead = decode_records(partition, records, poisoned)
    last_offset = records[-1].last_offset
    result = BatchResult(partition, records[0].offset, last_offset)

    first_seen = first_occurrences(valid)

    with conn.transaction(), conn.cursor() as cur:
        checkpoints.lock(cur, partition, expected_checkpoint, lease_epoch)

        new_ids: set[str] = set()
        if first_seen:
            candidates = list(first_seen.values())
            cur.execute(
                _RECORD_EVENT_IDS,
                (
                    [event.event_id for event, _ in candidates],
                    [partition] * len(candidates),
                    [offset for _, offset in candidates],
                    [event.user_id for event, _ in candidates],
                    [type(event).__struct_config__.tag for event, _ in candidates],
                    [event.occurred_at for event, _ in candidates],
                ),
            )
            new_ids = {r[0] for r in cur.fetchall()}
        earlier = _earlier_uses(cur, partition, first_seen, new_ids)
        verdict = judge_event_ids(partition, valid, earlier)
        to_apply = verdict.to_apply
        bodies = {record.offset: record.body for record in records}
        dead.extend(
            DeadLetter(
                partition=partition,
                offset=reused.offset,
                event_id=reused.event.event_id,
                field="event_id",
                reason=_storable(reused.reason),
                raw=bodies[reused.offset],
            )
            for reused in verdict.reused
        )
        result.applied = len(to_apply)
        result.duplicates = verdict.duplicates
        result.dead_lettered = len(dead)
        result.applied_events = to_apply

        if to_apply:
            _write_projections(cur, [event for event, _ in to_apply], result)
        if dead:
            cur.execute(
                _INSERT_DEAD_LETTERS,
                (
                    [d.partition for d in dead],
                    [d.offset for d in dead],
                    [d.event_id for d in dead],
                    [d.field for d in dead],
                    [d.reason for d in dead],
                    [d.raw for d in dead],
                ),
            )
        checkpoints.advance(
            cur,
            partition,
            expected=expected_checkpoint,
            first_offset=result.first_offset,
            last_offset=last_offset,
            owner=owner,
            applied=result.applied,
            dead_lettered=result.dead_lettered,
            lease_epoch=lease_epoch,
        )
    return result


def _earlier_uses(
    cur: psycopg.Cursor,
    partition: int,
    first_seen: Mapping[str, tuple[Event, int]],
    new_ids: set[str],
) -> dict[str, FirstUse]:
    """The recorded first use of each id of the batch that was not new to ``applied_events``.

    An id whose row vanished in between (not new, yet not found) counts as first used by the
    batch's first occurrence, so it is neither applied nor recorded twice.
    """
    repeated = [key for key in first_seen if key not in new_ids]
    if not repeated:
        return {}
    earlier = {
        event_id: FirstUse(user_id, int(earlier_partition), int(earlier_offset))
        for event_id, user_id, earlier_partition, earlier_offset in cur.execute(
            _EARLIER_USES, (repeated,)
        )
    }
    for key in repeated:
        if key not in earlier:
            event, offset = first_seen[key]
            earlier[key] = FirstUse(event.user_id, partition, offset)
    return earlier


def _write_projections(cur: psycopg.Cursor, events: Sequence[Event], result: BatchResult) -> None:
    users = sorted({event.user_id for event in events})
    topic_keys = sorted(
        {(e.user_id, e.data.topic) for e in events if not isinstance(e, FriendshipAdjusted)}
    )
    result.users = len(users)

    cur.execute(_CREATE_MISSING_FRIENDSHIPS, (users,))
    if topic_keys:
        cur.execute(
            _CREATE_MISSING_TOPICS, ([k[0] for k in topic_keys], [k[1] for k in topic_keys])
        )
    friendships: dict[str, Friendship] = {}
    for user_id, score, applied, last_at in cur.execute(_LOCK_FRIENDSHIPS, (users,)):
        friendships[user_id] = Friendship(score, applied, last_at)
    topics: dict[tuple[str, str], TopicMetrics] = {}
    if topic_keys:
        rows = cur.execute(
            _LOCK_TOPICS, ([k[0] for k in topic_keys], [k[1] for k in topic_keys])
        ).fetchall()
        for row in rows:
            topics[(row[0], row[1])] = TopicMetrics(
                conversations=row[2],
                turns=row[3],
                duration_s=row[4],
                sentiment=tuple(row[5 : 5 + len(SENTIMENT_COLUMNS)]),
                last_discussed_at=row[5 + len(SENTIMENT_COLUMNS)],
            )

    _fold_into(events, friendships, topics)

    touched_users = [friendships[u] for u in users]
    cur.execute(
        _UPSERT_FRIENDSHIPS,
        (
            users,
            [f.score for f in touched_users],
            [f.events_applied for f in touched_users],
            [f.last_event_at for f in touched_users],
        ),
    )
    if topic_keys:
        metrics = [topics[k] for k in topic_keys]
        sentiment_columns = [
            [m.sentiment[i] for m in metrics] for i in range(len(SENTIMENT_COLUMNS))
        ]
        last_discussed: list[datetime | None] = [m.last_discussed_at for m in metrics]
        cur.execute(
            _UPSERT_TOPICS,
            (
                [k[0] for k in topic_keys],
                [k[1] for k in topic_keys],
                [m.conversations for m in metrics],
                [m.turns for m in metrics],
                [m.duration_s for m in metrics],
                *sentiment_columns,
                last_discussed,
            ),
        )


#: Applies records as one transaction, with offsets to dead-letter (``poisoned``) or None, and
#: advances the caller's checkpoint: ``apply_batch`` bound to a connection and an owner.
ApplyRecords = Callable[[Sequence[LogRecord], Mapping[int, str] | None], BatchResult]


def rejected_reason(exc: psycopg.errors.DataError) -> str:
    """The dead-letter reason of a record the database rejected (a value outside a column's
    range, say), the same for live processing and replay."""
    return f"the database rejected this event: {exc}".strip()


def apply_isolating_rejects(
    apply: ApplyRecords,
    partition: int,
    records: Sequence[LogRecord],
    *,
    on_rejected_batch: Callable[[psycopg.errors.DataError], None] | None = None,
    on_rejected_record: Callable[[LogRecord, str], None] | None = None,
) -> BatchResult:
    """Apply ``records`` as one batch; when the database rejects it, isolate the culprit.

    A ``DataError`` (the database refuses a value) fails the whole batch, and applying it again
    would fail the same way, forever. The records are then applied one per transaction, and a
    record the database rejects on its own is dead-lettered with ``rejected_reason``. Live
    owners and replay both go through here, so they dead-letter the same records.

    Args:
        apply: applies records and advances the caller's checkpoint (see ``ApplyRecords``).
        partition: the records' partition.
        records: in log order.
        on_rejected_batch: told when the whole batch was rejected (before the one-by-one pass).
        on_rejected_record: told each record that is dead-lettered, with the reason.

    Returns:
        The counts of everything committed.

    Raises:
        Whatever ``apply`` raises other than ``psycopg.errors.DataError``.
    """
    try:
        return apply(records, None)
    except psycopg.errors.DataError as exc:
        if on_rejected_batch is not None:
            on_rejected_batch(exc)
    total = BatchResult(partition, records[0].offset, records[-1].last_offset)
    for record in records:
        try:
            result = apply([record], None)
        except psycopg.errors.DataError as exc:
            reason = rejected_reason(exc)
            if on_rejected_record is not None:
                on_rejected_record(record, reason)
            result = apply([record], {record.offset: reason})
        total.applied += result.applied
        total.duplicates += result.duplicates
        total.dead_lettered += result.dead_lettered
        total.applied_events.extend(result.applied_events)
    return total


__all__ = [
    "BatchResult",
    "CheckpointConflict",
    "DeadLetter",
    "LogRecord",
    "OffsetGap",
    "PartitionCountMismatch",
    "apply_batch",
    "apply_isolating_rejects",
    "decode_records",
    "ensure_checkpoints",
    "read_checkpoint",
    "rejected_reason",
]
