"""The previous design, reimplemented faithfully for the comparison (the product never uses it).

What the team ran before the partitioned log, as it was built:

- ONE classic durable queue, fed by its own ``events`` exchange (fanout) in its own vhost;
- a pika ``BlockingConnection`` consumer with ``basic_qos(prefetch_count=threads)``;
- a ``ThreadPoolExecutor(threads)``: each delivered message is handed to a worker;
- the worker opens a SQLAlchemy ORM ``Session``, ``SELECT ... FOR UPDATE`` the user's friendship
  row (and topic row), creating them when missing, changes them in Python (score clamped to
  0..100), commits, and then acks through ``connection.add_callback_threadsafe`` (pika's
  connection belongs to the consumer thread).

Its tables live in their own schema, ``previous_design``, so it cannot touch the product's. Row
locks make each read-modify-write atomic, but nothing orders two events of the same user that
sit in different workers: with more than one thread they commit in whichever order the threads
reach the lock, and clamping makes order matter. The benchmark counts the users whose final score
differs from the sequential fold of the same events.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Final, TypeVar

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exchange_type import ExchangeType
from pika.spec import Basic, BasicProperties
from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    Engine,
    MetaData,
    SmallInteger,
    Text,
    create_engine,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench.harness import publish_timed
from bench.results import PreviousDesignResult
from bench.workload import Workload
from processor.settings import EXCHANGE, Settings
from projections.database import sqlalchemy_url
from projections.fold import RATING_DELTA, SENTIMENT_DELTA, clamp_score
from testkit.reference import reference_fold
from testkit.services import Services, isolated_settings

log = logging.getLogger(__name__)

SCHEMA: Final = "previous_design"
QUEUE: Final = "previous-design.events"


class Base(DeclarativeBase):
    """The previous design's ORM models, in their own schema."""

    metadata = MetaData(schema=SCHEMA)


class FriendshipRow(Base):
    """One user's friendship, as the previous design stored it."""

    __tablename__ = "friendships"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    score: Mapped[int] = mapped_column(SmallInteger)
    events_applied: Mapped[int] = mapped_column(BigInteger)
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TopicRow(Base):
    """One (user, topic)'s metrics, as the previous design stored them."""

    __tablename__ = "topic_metrics"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    conversations: Mapped[int] = mapped_column(BigInteger)
    turns: Mapped[int] = mapped_column(BigInteger)
    duration_s: Mapped[float] = mapped_column(Double)
    sentiment_happy: Mapped[int] = mapped_column(BigInteger)
    sentiment_curious: Mapped[int] = mapped_column(BigInteger)
    sentiment_surprised: Mapped[int] = mapped_column(BigInteger)
    sentiment_neutral: Mapped[int] = mapped_column(BigInteger)
    sentiment_sad: Mapped[int] = mapped_column(BigInteger)
    sentiment_fearful: Mapped[int] = mapped_column(BigInteger)
    sentiment_angry: Mapped[int] = mapped_column(BigInteger)
    sentiment_disgusted: Mapped[int] = mapped_column(BigInteger)
    last_discussed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


_NEW_FRIENDSHIP: Final = {"score": 0, "events_applied": 0}
_NEW_TOPIC: Final = {
    "conversations": 0,
    "turns": 0,
    "duration_s": 0.0,
    **{f"sentiment_{label}": 0 for label in SENTIMENT_DELTA},
}

Row = TypeVar("Row", FriendshipRow, TopicRow)


def _locked_row(
    session: Session, model: type[Row], key: dict[str, str], new: dict[str, Any]
) -> Row:
    """The row with primary key ``key``, locked FOR UPDATE; created with ``new`` when missing."""
    query = select(model).filter_by(**key).with_for_update()
    row = session.scalars(query).one_or_none()
    if row is None:
        session.execute(pg_insert(model).values(**key, **new).on_conflict_do_nothing())
        row = session.scalars(query).one()
    return row


def handle_event(engine: Engine, body: bytes) -> None:
    """Apply one event in one ORM transaction (row locks, read-modify-write, commit)."""
    event = json.loads(body)
    user, kind, data = event["user_id"], event["type"], event["data"]
    at = datetime.fromisoformat(event["occurred_at"])
    with Session(engine) as session, session.begin():
        friendship = _locked_row(session, FriendshipRow, {"user_id": user}, _NEW_FRIENDSHIP)
        delta = 0
        if kind == "friendship.adjusted":
            delta = int(data["delta"])
        else:
            topic = _locked_row(
                session, TopicRow, {"user_id": user, "topic": data["topic"]}, _NEW_TOPIC
            )
            if kind == "conversation.turn_recorded":
                topic.turns += 1
                if data["speaker"] == "child":
                    column = f"sentiment_{data['sentiment']}"
                    setattr(topic, column, getattr(topic, column) + 1)
                    delta = SENTIMENT_DELTA[data["sentiment"]]
            else:
                topic.conversations += 1
                topic.duration_s += float(data["duration_s"])
                delta = RATING_DELTA[data["rating"]]
            if topic.last_discussed_at is None or at > topic.last_discussed_at:
                topic.last_discussed_at = at
        friendship.score = clamp_score(friendship.score + delta)
        friendship.events_applied += 1
        if friendship.last_event_at is None or at > friendship.last_event_at:
            friendship.last_event_at = at


@dataclass
class _Progress:
    acked: int = 0
    errors: int = 0
    last_ack_at: float = 0.0


def _declare_queue(settings: Settings) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, exchange_type=ExchangeType("fanout"), durable=True)
        channel.queue_declare(QUEUE, durable=True)
        channel.queue_bind(QUEUE, EXCHANGE)
    finally:
        connection.close()


def _create_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    Base.metadata.create_all(engine)


def consume(
    settings: Settings, engine: Engine, threads: int, expected: int, timeout_s: float
) -> tuple[float, _Progress]:
    """Consume the queue with the thread pool until ``expected`` acks or ``timeout_s`` seconds.

    Returns:
        Seconds from the consumer's start to the last ack, and the counts.
    """
    connection: BlockingConnection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel: BlockingChannel = connection.channel()
    channel.basic_qos(prefetch_count=threads)
    progress = _Progress()
    lock = threading.Lock()

    def ack(tag: int) -> None:
        channel.basic_ack(tag)
        with lock:
            progress.acked += 1
            progress.last_ack_at = time.monotonic()

    def nack(tag: int) -> None:
        channel.basic_nack(tag, requeue=True)
        with lock:
            progress.errors += 1

    def work(tag: int, body: bytes) -> None:
        try:
            handle_event(engine, body)
        except (SQLAlchemyError, KeyError, ValueError) as exc:
            log.warning("previous design: event failed, requeued: %s", exc)
            connection.add_callback_threadsafe(partial(nack, tag))
            return
        connection.add_callback_threadsafe(partial(ack, tag))

    with ThreadPoolExecutor(threads, thread_name_prefix="previous-design") as executor:

        def on_message(
            _channel: BlockingChannel,
            method: Basic.Deliver,
            _properties: BasicProperties,
            body: bytes,
        ) -> None:
            assert method.delivery_tag is not None
            executor.submit(work, method.delivery_tag, body)

        consumer_tag = channel.basic_consume(QUEUE, on_message)
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            while progress.acked < expected and time.monotonic() < deadline:
                connection.process_data_events(time_limit=1)
            channel.basic_cancel(consumer_tag)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            connection.close()
    end = progress.last_ack_at if progress.acked else time.monotonic()
    return end - started, progress


def stored_scores(engine: Engine) -> dict[str, int]:
    """Every user's final score in the previous design's table."""
    with engine.connect() as conn:
        rows = conn.execute(select(FriendshipRow.user_id, FriendshipRow.score)).all()
    return {user_id: int(score) for user_id, score in rows}


def measure_previous_design(
    services: Services, workload: Workload, threads: int, timeout_s: float = 300.0
) -> PreviousDesignResult:
    """Publish ``workload`` into the previous design's queue, then consume it with ``threads``
    workers; events per second, and users whose final score differs from the sequential fold."""
    with isolated_settings(services) as settings:
        _declare_queue(settings)
        engine = create_engine(
            sqlalchemy_url(settings.database_url), pool_size=threads, max_overflow=0
        )
        try:
            _create_tables(engine)
            publish_timed(settings, workload.events)
            seconds, progress = consume(settings, engine, threads, len(workload.events), timeout_s)
            scores = stored_scores(engine)
        finally:
            engine.dispose()
    expected = {user: p["score"] for user, p in reference_fold(workload.bodies).items()}
    mismatched = sum(1 for u in set(scores) | set(expected) if scores.get(u) != expected.get(u))
    return PreviousDesignResult(
        threads=threads,
        events=progress.acked,
        users=workload.distinct_users(),
        seconds=seconds,
        events_per_s=progress.acked / seconds if seconds > 0 else 0.0,
        mismatched_users=mismatched,
        completed=progress.acked >= len(workload.events),
        errors=progress.errors,
    )
