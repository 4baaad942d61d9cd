"""One user's history from the log: every record of the user, in log order, with the score after.

The consistent-hash ring belongs to the broker, so the partition of a user is found from what
live recorded (``applied_events.partition``); a user live never applied is searched in every
partition. The records are folded with ``projections.fold`` exactly as a batch does: an event id
seen before in the partition is a duplicate and changes nothing (a dead letter when another
user's event had it first), an invalid record is a dead letter (marked when its body names the
user), and the score is clamped after every change. Ids reused across partitions are not seen
here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import msgspec
import psycopg

from processor import tuning
from processor.applying.postgres import PostgresStore
from processor.privacy.data_keys import erased_users
from processor.privacy.key_ids import check_key_ids
from processor.privacy.keys import Keys
from processor.privacy.opening import open_batch
from processor.reading.log_record import LogRecord
from processor.reading.log_start import ensure_log_complete
from processor.reading.probes import read_tail_offsets
from processor.reading.ranges import LogRange, read_log_ranges
from processor.replay.log_judge import PartitionJudge
from processor.settings import Settings
from projections.database import connect
from projections.event_ids import ERASED_USER, FirstUse
from projections.fold import (
    CONTRACT_RULES,
    FoldRules,
    Friendship,
    clamp_score,
    evolve_friendship,
    level_of,
    score_delta,
)
from schemas.events import ConversationCompleted, Event, FriendshipAdjusted, TurnRecorded

_PROBE: Final = msgspec.json.Decoder(dict[str, object])


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """One record of the user.

    ``delta`` is the score change the event made (before clamping) and ``score`` the score
    after it; both are None for a record that changed nothing (a duplicate or a dead letter).
    """

    partition: int
    offset: int
    occurred_at: datetime | None
    type: str
    detail: str
    delta: int | None
    score: int | None
    note: str = ""


@dataclass
class History:
    """The user's lines in log order and the friendship they fold to."""

    user_id: str
    lines: list[HistoryLine] = field(default_factory=list)
    friendship: Friendship = field(default_factory=Friendship)
    records_scanned: int = 0
    partitions_scanned: tuple[int, ...] = ()

    @property
    def level(self) -> str:
        """The level of the folded score."""
        return level_of(self.friendship.score)


def _detail(event: Event) -> str:
    if isinstance(event, TurnRecorded):
        data = event.data
        return f"{data.topic}: {data.speaker} {data.sentiment.label}"
    if isinstance(event, ConversationCompleted):
        return f"{event.data.topic}: {event.data.rating}, {event.data.turns} turns"
    assert isinstance(event, FriendshipAdjusted)
    return event.data.reason


def _names_user(body: bytes, user_id: str) -> bool:
    try:
        decoded = _PROBE.decode(body)
    except msgspec.DecodeError:
        return False
    return decoded.get("user_id") == user_id


class HistoryBuilder:
    """Folds one user's records out of whole partitions (feed each partition in log order).

    Args:
        user_id: the user whose lines are kept.
        judge: decides the records as batches do (``replay.log_judge``).
        rules: the fold version the lines are folded with (live's).
    """

    def __init__(
        self,
        user_id: str,
        judge: PartitionJudge | None = None,
        rules: FoldRules = CONTRACT_RULES,
    ) -> None:
        self.history = History(user_id)
        self._judge = judge or PartitionJudge()
        self._rules = rules

    def take(self, partition: int, records: Sequence[LogRecord]) -> None:
        """Take the next records of ``partition`` (every user's; the user's are kept).

        Event ids follow the batch's rule (``projections.event_ids``), fed with the first uses
        seen earlier in the partition.
        """
        history = self.history
        history.records_scanned += len(records)
        judged = self._judge.judge(partition, records)
        verdict = judged.verdict
        by_offset: dict[int, tuple[Event | None, str]] = {}
        for event, offset in verdict.to_apply:
            if event.user_id == history.user_id:
                by_offset[offset] = (event, "")
        for repeat in verdict.repeated:
            if repeat.event.user_id == history.user_id:
                note = f"duplicate of offset {repeat.first.offset}: no effect"
                by_offset[repeat.offset] = (repeat.event, note)
        for reuse in verdict.reused:
            if reuse.event.user_id == history.user_id:
                first = reuse.first
                note = (
                    "dead letter: event_id already applied for another user "
                    f"at offset {first.offset}"
                )
                by_offset[reuse.offset] = (reuse.event, note)
        for letter in judged.decoded.dead:
            if _names_user(letter.raw, history.user_id):
                by_offset[letter.offset] = (None, f"dead letter: {letter.field}: {letter.reason}")
        for offset in sorted(by_offset):
            found, note = by_offset[offset]
            history.lines.append(self._line(partition, offset, found, note))

    def _line(self, partition: int, offset: int, event: Event | None, note: str) -> HistoryLine:
        if event is None:
            return HistoryLine(partition, offset, None, "-", "", None, None, note)
        kind = type(event).__struct_config__.tag
        if note:
            return HistoryLine(
                partition, offset, event.occurred_at, str(kind), _detail(event), None, None, note
            )
        delta = score_delta(event, self._rules)
        before = self.history.friendship.score
        self.history.friendship = evolve_friendship(self.history.friendship, event, self._rules)
        if clamp_score(before + delta) != before + delta:
            note = f"clamped from {before + delta}"
        return HistoryLine(
            partition,
            offset,
            event.occurred_at,
            str(kind),
            _detail(event),
            delta,
            self.history.friendship.score,
            note,
        )


def user_partitions(conn: psycopg.Connection, user_id: str) -> list[int]:
    """The partitions where live applied events of ``user_id`` (empty when none)."""
    rows = conn.execute(
        "SELECT DISTINCT partition FROM applied_events WHERE user_id = %s ORDER BY 1", (user_id,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def erased_ids(conn: psycopg.Connection, partitions: Sequence[int]) -> dict[str, FirstUse]:
    """The ids erased children used in ``partitions`` (``erased_event_ids``), by lower-cased id."""
    rows = conn.execute(
        "SELECT event_id::text, partition, log_offset FROM erased_event_ids "
        "WHERE partition = ANY(%s::int[])",
        (list(partitions),),
    ).fetchall()
    return {str(e).lower(): FirstUse(ERASED_USER, int(p), int(o)) for e, p, o in rows}


def read_user_history(
    settings: Settings,
    user_id: str,
    partitions: Iterable[int],
    keys: Keys,
    *,
    credit: int = tuning.REPLAY_CREDIT,
    rules: FoldRules = CONTRACT_RULES,
) -> History:
    """Read ``partitions`` from offset 0 to their tails and fold ``user_id``'s records with
    ``rules`` (live's fold version).

    Encrypted events are opened with their children's data keys, and erased children's
    events dropped, as a batch does.

    Raises:
        LogTruncated: a partition's log is truncated (the history would be partial).
        KeyMissing: this process's keys are not the deployment's.
    """
    chosen = sorted(set(partitions))
    tails: Mapping[int, int] = asyncio.run(read_tail_offsets(settings, chosen))
    ensure_log_complete(settings, {}, tails)
    ranges = [LogRange(p, 0, tail) for p, tail in sorted(tails.items()) if tail >= 0]
    size = tuning.HISTORY_BATCH_SIZE
    with connect(settings.database_url) as conn:
        check_key_ids(conn, keys)  # another hash key would miss the erasures
        store = PostgresStore(conn)
        judge = PartitionJudge(
            lambda records: open_batch(store, records, keys),
            erased_ids(conn, chosen),
            lambda users: erased_users(conn, users, keys),
        )
        builder = HistoryBuilder(user_id, judge, rules)
        read_log_ranges(settings, ranges, builder.take, batch_size=size, credit=credit)
    builder.history.lines.sort(key=lambda line: (line.partition, line.offset))
    builder.history.partitions_scanned = tuple(chosen)
    return builder.history
