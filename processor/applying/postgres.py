"""The PostgreSQL store of a batch: one transaction on the owner's connection.

Implements ``processor.applying.store.BatchTransaction`` with set-based statements whose arrays
go in binary, a column packed at a time (``processor.applying.arrays``): event ids ``INSERT ...
ON CONFLICT DO NOTHING`` (only new ids are applied), projection rows created when missing and
then locked in key order (one statement for both tables), then the upserts and dead letters,
sent as data-modifying CTEs of the checkpoint's advance: a one-event batch waits for the server
eight times (BEGIN, lock, erasures, event ids, missing rows, row locks, advance, COMMIT). The
checkpoint's SQL is in ``processor.applying.checkpoint``, the one module that reads or writes
checkpoint rows; this module hands it the batch's writes.
Tables carry no schema: a replay points ``search_path`` at its shadow schema and the same
statements write there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from typing import Final, get_args

import psycopg

from processor.applying import checkpoint
from processor.applying.arrays import (
    bigint_array,
    bool_array,
    bytea_array,
    float8_array,
    integer_array,
    smallint_array,
    text_array,
    timestamptz_array,
)
from processor.applying.decode import DeadLetter
from processor.applying.errors import EventIdFormMismatch
from processor.applying.store import BatchTransaction, CheckpointAdvance, TopicKey, WrappedKey
from projections.event_ids import ERASED_USER, FirstUse
from projections.fold import Friendship, TopicMetrics
from projections.names import SENTIMENT_COLUMNS
from schemas.events import Event

#: The ``type`` of each event Struct (its msgspec tag).
_TYPE_TAGS: Final[dict[type, str]] = {
    kind: str(kind.__struct_config__.tag) for kind in get_args(Event)
}

# An id an erased child used (erased_event_ids, a global table) is first used by ERASED_USER.
_EARLIER_USES: Final = """
SELECT event_id::text, user_id, partition, log_offset FROM applied_events
WHERE event_id = ANY(%b::text[]::uuid[])
UNION ALL
SELECT event_id::text, %b::text, partition, log_offset FROM erased_event_ids
WHERE event_id = ANY(%b::text[]::uuid[])
"""
# Answers the ids it did NOT record (already recorded, or an erased child's): in a backlog
# nearly every id is new, so the answer is usually empty instead of one row per event.
_RECORD_EVENT_IDS: Final = """
WITH candidate AS (
  SELECT * FROM unnest(%b::text[]::uuid[], %b::bigint[], %b::text[], %b::text[],
                       %b::timestamptz[], %b::bool[])
         AS c (event_id, log_offset, user_id, type, occurred_at, encrypted)
), recorded AS (
  INSERT INTO applied_events (event_id, partition, log_offset, user_id, type, occurred_at,
                              encrypted)
  SELECT candidate.event_id, %b::int, candidate.log_offset, candidate.user_id, candidate.type,
         candidate.occurred_at, candidate.encrypted
  FROM candidate
  WHERE NOT EXISTS (SELECT 1 FROM erased_event_ids e WHERE e.event_id = candidate.event_id)
  ON CONFLICT (event_id) DO NOTHING
  RETURNING event_id
)
SELECT candidate.event_id::text FROM candidate
WHERE NOT EXISTS (SELECT 1 FROM recorded WHERE recorded.event_id = candidate.event_id)
"""
_ERASED: Final = "SELECT user_digest FROM erasures WHERE user_digest = ANY(%b::bytea[])"
_DATA_KEYS: Final = (
    "SELECT user_id, wrapped_key, kek_id FROM data_keys WHERE user_id = ANY(%b::text[])"
)
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
# Both kinds of missing rows in one statement (one round trip) when the batch touches topics.
# The order of a WITH's inserts is unspecified; no other transaction can interleave on these
# rows: every batch locks its partition's checkpoint row first, and a child's rows belong to
# one partition.
_CREATE_MISSING_BOTH: Final = (
    "WITH missing_friendships AS (" + _CREATE_MISSING_FRIENDSHIPS + ")" + _CREATE_MISSING_TOPICS
)
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
# A branch's missing columns are NULL, typed by the other branch (UNION type resolution).
_FRIENDSHIP_NULLS: Final = ", ".join("NULL" for _ in range(len(SENTIMENT_COLUMNS) + 4))
# Both kinds of rows locked in one statement (one round trip): the friendships first, then the
# topics, each in key order as the two statements did. Each CTE is materialized (a CTE that
# locks rows is never inlined; MATERIALIZED says so), and the plan's Append runs its branches
# in the order written (a statement that locks rows never gets a parallel plan); a test pins
# the plan. A friendship row has no topic; a topic row's topic is never NULL (primary key).
_LOCK_BOTH: Final = f"""
WITH locked_friendships AS MATERIALIZED ({_LOCK_FRIENDSHIPS}),
locked_topics AS MATERIALIZED ({_LOCK_TOPICS})
SELECT user_id, NULL, score, events_applied, last_event_at, {_FRIENDSHIP_NULLS}
FROM locked_friendships
UNION ALL
SELECT user_id, topic, NULL, NULL, NULL, conversations, turns,
       duration_s, {_SENTIMENT_LIST}, last_discussed_at
FROM locked_topics
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
INSERT INTO dead_letters (partition, log_offset, event_id, field, reason, raw, user_id,
                          routing_key)
SELECT * FROM unnest(%b::int[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::bytea[],
                     %b::text[], %b::text[])
ON CONFLICT (partition, log_offset) DO NOTHING
"""


def event_id_columns(
    partition: int, first_seen: Mapping[str, tuple[Event, int]], encrypted: Set[int]
) -> tuple[object, ...]:
    """The parameters of ``_RECORD_EVENT_IDS`` for a batch's first occurrences: the columns of
    event ids, offsets, users, types, times and whether the log holds them encrypted (binary
    arrays, ``processor.applying.arrays``), then the partition (one value for every row)."""
    candidates = list(first_seen.values())
    offsets = [offset for _, offset in candidates]
    return (
        text_array([event.event_id for event, _ in candidates]),
        bigint_array(offsets),
        text_array([event.user_id for event, _ in candidates]),
        text_array([_TYPE_TAGS[type(event)] for event, _ in candidates]),
        timestamptz_array([event.occurred_at for event, _ in candidates]),
        bool_array([offset in encrypted for offset in offsets]),
        partition,
    )


def friendship_columns(friendships: Mapping[str, Friendship]) -> tuple[bytes, ...]:
    """The columns of ``_UPSERT_FRIENDSHIPS`` (binary arrays): users, scores, counts, last
    event times."""
    states = list(friendships.values())
    return (
        text_array(list(friendships)),
        smallint_array([f.score for f in states]),
        bigint_array([f.events_applied for f in states]),
        timestamptz_array([f.last_event_at for f in states]),
    )


def topic_columns(topics: Mapping[TopicKey, TopicMetrics]) -> tuple[bytes, ...]:
    """The columns of ``_UPSERT_TOPICS`` (binary arrays): users, topics, conversations, turns,
    seconds, the eight sentiment counts and the last discussed times."""
    keys = list(topics)
    metrics = list(topics.values())
    # One column per sentiment label (a transpose in C); none when there are no rows.
    by_label = list(zip(*(m.sentiment for m in metrics), strict=True)) or [
        () for _ in SENTIMENT_COLUMNS
    ]
    return (
        text_array([k[0] for k in keys]),
        text_array([k[1] for k in keys]),
        bigint_array([m.conversations for m in metrics]),
        bigint_array([m.turns for m in metrics]),
        float8_array([m.duration_s for m in metrics]),
        *(bigint_array(column) for column in by_label),
        timestamptz_array([m.last_discussed_at for m in metrics]),
    )


class PostgresStore:
    """Batches applied to the database of ``conn`` (an autocommit connection).

    Args:
        conn: the connection; each batch is one transaction on it (a savepoint when the caller
            already opened one, as the final step of a replay does).
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def data_keys(self, users: Sequence[str]) -> dict[str, WrappedKey]:
        """The wrapped data keys of ``users`` (``BatchStore.data_keys``)."""
        if not users:
            return {}
        rows = self.conn.execute(_DATA_KEYS, (text_array(users),)).fetchall()
        return {str(user): (bytes(wrapped), str(kek_id)) for user, wrapped, kek_id in rows}

    @contextmanager
    def transaction(self) -> Iterator[BatchTransaction]:
        """One batch transaction (``BatchStore.transaction``)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            tx = _PostgresTransaction(cur)
            yield tx
            tx.flush()


class _PostgresTransaction:
    """``BatchTransaction`` on one cursor inside the batch's transaction.

    The batch's writes (rows, dead letters) go with the checkpoint's advance, as data-modifying
    CTEs of its statement (``checkpoint.advance``): a round trip fewer per batch, and round
    trips are much of what a small batch costs. Nothing reads them before the advance.
    """

    def __init__(self, cur: psycopg.Cursor) -> None:
        self._cur = cur
        self._along: list[checkpoint.AlongWrite] = []

    def lock_checkpoint(
        self,
        partition: int,
        expected: int,
        lease_epoch: int | None,
        fold_version: int | None = None,
    ) -> None:
        checkpoint.lock(self._cur, partition, expected, lease_epoch, fold_version)

    def erased(self, digests: Mapping[str, bytes]) -> set[str]:
        if not digests:
            return set()
        found = {
            bytes(row[0])
            for row in self._cur.execute(_ERASED, (bytea_array(list(digests.values())),))
        }
        return {user for user, digest in digests.items() if digest in found}

    def record_event_ids(
        self,
        partition: int,
        first_seen: Mapping[str, tuple[Event, int]],
        encrypted: Set[int] = frozenset(),
    ) -> dict[str, FirstUse]:
        if not first_seen:
            return {}
        self._cur.execute(_RECORD_EVENT_IDS, event_id_columns(partition, first_seen, encrypted))
        # uuid::text is lower-case 8-4-4-4-12, as the keys of ``first_seen`` (a valid event id).
        not_recorded = {row[0] for row in self._cur.fetchall()}
        if not not_recorded.issubset(first_seen.keys()):
            # A form mismatch would count a duplicate the insert skipped as new: refuse.
            raise EventIdFormMismatch(
                f"partition {partition}: {len(not_recorded - first_seen.keys())} event ids came "
                "back from the database in another form than the batch's (uuid::text)"
            )
        return self._earlier_uses(partition, first_seen, not_recorded)

    def _earlier_uses(
        self,
        partition: int,
        first_seen: Mapping[str, tuple[Event, int]],
        not_recorded: set[str],
    ) -> dict[str, FirstUse]:
        """The recorded first use of each id of the batch that was not new (``not_recorded``:
        the ids the insert left alone).

        An id whose row vanished in between (not new, yet not found) counts as first used by
        the batch's first occurrence, so it is neither applied nor recorded twice.
        """
        repeated = [key for key in first_seen if key in not_recorded]
        if not repeated:
            return {}
        earlier = {
            event_id: FirstUse(user_id, int(earlier_partition), int(earlier_offset))
            for event_id, user_id, earlier_partition, earlier_offset in self._cur.execute(
                _EARLIER_USES, (text_array(repeated), ERASED_USER, text_array(repeated))
            )
        }
        for key in repeated:
            if key not in earlier:
                event, offset = first_seen[key]
                earlier[key] = FirstUse(event.user_id, partition, offset)
        return earlier

    def lock_rows(
        self, users: Sequence[str], topics: Sequence[TopicKey]
    ) -> tuple[dict[str, Friendship], dict[TopicKey, TopicMetrics]]:
        cur = self._cur
        user_array = text_array(users)
        topic_users = text_array([k[0] for k in topics])
        topic_names = text_array([k[1] for k in topics])
        if topics:
            cur.execute(_CREATE_MISSING_BOTH, (user_array, topic_users, topic_names))
        else:
            cur.execute(_CREATE_MISSING_FRIENDSHIPS, (user_array,))
        if not topics:
            friendships = {
                user_id: Friendship(score, applied, last_at)
                for user_id, score, applied, last_at in cur.execute(
                    _LOCK_FRIENDSHIPS, (user_array,)
                )
            }
            return friendships, {}
        friendships = {}
        metrics: dict[TopicKey, TopicMetrics] = {}
        sentiment_end = 8 + len(SENTIMENT_COLUMNS)
        for row in cur.execute(_LOCK_BOTH, (user_array, topic_users, topic_names)).fetchall():
            if row[1] is None:
                friendships[row[0]] = Friendship(row[2], row[3], row[4])
            else:
                metrics[(row[0], row[1])] = TopicMetrics(
                    conversations=row[5],
                    turns=row[6],
                    duration_s=row[7],
                    sentiment=tuple(row[8:sentiment_end]),
                    last_discussed_at=row[sentiment_end],
                )
        return friendships, metrics

    def write_rows(
        self, friendships: Mapping[str, Friendship], topics: Mapping[TopicKey, TopicMetrics]
    ) -> None:
        self._along.append((_UPSERT_FRIENDSHIPS, friendship_columns(friendships)))
        if topics:
            self._along.append((_UPSERT_TOPICS, topic_columns(topics)))

    def write_dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        columns = (
            integer_array([d.partition for d in dead]),
            bigint_array([d.offset for d in dead]),
            text_array([d.event_id for d in dead]),
            text_array([d.field for d in dead]),
            text_array([d.reason for d in dead]),
            bytea_array([d.raw for d in dead]),
            text_array([d.user_id for d in dead]),
            text_array([d.routing_key for d in dead]),
        )
        self._along.append((_INSERT_DEAD_LETTERS, columns))

    def advance_checkpoint(self, advance: CheckpointAdvance) -> None:
        along, self._along = self._along, []
        checkpoint.advance(self._cur, advance, along)

    def flush(self) -> None:
        """Send the writes still waiting for an advance (a transaction that ends without one
        keeps them too)."""
        for statement, params in self._along:
            self._cur.execute(statement, params)
        self._along = []
