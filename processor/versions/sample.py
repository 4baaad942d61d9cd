"""The check of a rebuilt shadow before it is swapped in: the pure fold of the log agrees.

The shadow was written by batches (``processor.applying.batch``) folding with the new rule.
Before it replaces live, a second computation must agree with it: the same log records, decided
as batches decide them (``replay.log_judge``), folded per child with the pure fold
(``projections.fold.fold``) and the same rule. Every child is checked when there are at most
``tuning.BUILD_CHECK_USERS`` of them, else that many chosen by a hash of the id (the same
sample for the same children). A child erased meanwhile is left out (its rows go at the swap).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from processor import tuning
from processor.applying.postgres import PostgresStore
from processor.privacy.data_keys import erased_users
from processor.privacy.keys import Keys, load_keys
from processor.privacy.opening import open_batch
from processor.reading.log_record import LogRecord
from processor.reading.ranges import LogRange, read_log_ranges
from processor.replay.history import erased_ids
from processor.replay.log_judge import PartitionJudge
from processor.settings import Settings
from processor.versions.errors import BuildCheckFailed
from projections.database import connect
from projections.fold import FoldRules, Friendship, TopicMetrics, UserProjection, fold
from projections.tables import SENTIMENT_COLUMNS
from schemas.events import Event

#: Children named by ``user_ref`` in the failure's message.
_SHOWN: int = 5


def check_against_pure_fold(
    settings: Settings, shadow: str, checkpoints: Mapping[int, int], rules: FoldRules
) -> None:
    """Refuse ``shadow`` unless its rows equal the pure fold of the log up to ``checkpoints``
    with ``rules``, for the sample of children (see the module doc). A ``replay.run.ShadowCheck``.

    Raises:
        BuildCheckFailed: a child's friendship or topics differ (named by ``user_ref``).
    """
    keys = load_keys(settings)
    with connect(settings.database_url) as conn:
        users = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("SELECT user_id FROM {}").format(sql.Identifier(shadow, "friendships"))
            )
        ]
        chosen = _sample(users)
        sample = set(chosen) - erased_users(conn, chosen, keys)
        expected = _fold_log(settings, conn, keys, checkpoints, sample, rules=rules)
        stored = _stored(conn, shadow, sample)
    differing = sorted(keys.user_ref(u) for u in sample if stored.get(u) != expected.get(u))
    if differing:
        raise BuildCheckFailed(
            f"{len(differing)} of {len(sample)} children checked differ from the pure fold of "
            f"fold version {rules.version} (user refs {', '.join(differing[:_SHOWN])}): the "
            "rebuild is not swapped in"
        )


def _sample(users: list[str]) -> list[str]:
    if len(users) <= tuning.BUILD_CHECK_USERS:
        return users
    ranked = sorted(users, key=lambda user: hashlib.sha256(user.encode()).digest())
    return ranked[: tuning.BUILD_CHECK_USERS]


def _fold_log(
    settings: Settings,
    conn: psycopg.Connection,
    keys: Keys,
    checkpoints: Mapping[int, int],
    sample: set[str],
    *,
    rules: FoldRules,
) -> dict[str, UserProjection]:
    """The pure fold, per child of ``sample``, of the log's records up to ``checkpoints``."""
    store = PostgresStore(conn)
    partitions = sorted(checkpoints)
    judge = PartitionJudge(
        lambda records: open_batch(store, records, keys),
        erased_ids(conn, partitions),
        lambda users: erased_users(conn, users, keys),
    )
    events: dict[str, list[Event]] = {user: [] for user in sample}

    def take(partition: int, records: list[LogRecord]) -> None:
        for event, _ in judge.judge(partition, records).verdict.to_apply:
            if event.user_id in events:
                events[event.user_id].append(event)

    ranges = [LogRange(p, 0, last) for p, last in sorted(checkpoints.items()) if last >= 0]
    read_log_ranges(settings, ranges, take, batch_size=tuning.HISTORY_BATCH_SIZE)
    return {user: fold(found, rules=rules) for user, found in events.items() if found}


def _stored(conn: psycopg.Connection, shadow: str, sample: set[str]) -> dict[str, UserProjection]:
    """The shadow's rows of ``sample``, as projections."""
    users = sorted(sample)
    friendships = {
        str(user): Friendship(int(score), int(applied), last)
        for user, score, applied, last in conn.execute(
            sql.SQL(
                "SELECT user_id, score, events_applied, last_event_at FROM {} "
                "WHERE user_id = ANY(%s)"
            ).format(sql.Identifier(shadow, "friendships")),
            (users,),
        )
    }
    topics: dict[str, dict[str, TopicMetrics]] = {}
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in SENTIMENT_COLUMNS)
    rows: list[Any] = conn.execute(
        sql.SQL(
            "SELECT user_id, topic, conversations, turns, duration_s, {c}, last_discussed_at "
            "FROM {t} WHERE user_id = ANY(%s)"
        ).format(c=columns, t=sql.Identifier(shadow, "topic_metrics")),
        (users,),
    ).fetchall()
    for row in rows:
        sentiment = tuple(int(n) for n in row[5 : 5 + len(SENTIMENT_COLUMNS)])
        topics.setdefault(str(row[0]), {})[str(row[1])] = TopicMetrics(
            int(row[2]), int(row[3]), float(row[4]), sentiment, row[-1]
        )
    return {
        user: UserProjection(friendship, topics.get(user, {}))
        for user, friendship in friendships.items()
    }
