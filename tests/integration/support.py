"""Helpers of the integration tests: synthetic events, publishing, processor processes, reading
the stored projections in the reference fold's shape."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rstream import Consumer, ConsumerOffsetSpecification, MessageContext, OffsetType, Producer

from processor.amqp_body import message_body
from processor.publisher import OutgoingEvent, publish_events
from processor.settings import Settings, stream_name
from processor.status import PartitionStatus, read_partition_status, wait_for_zero_lag
from processor.streams import read_tail_offsets
from projections.database import connect
from projections.tables import SENTIMENT_COLUMNS
from tests.reference import SENTIMENTS, reference_level
from tests.services import settings_env

TOPICS = ("music", "sports", "books", "movies", "science", "fashion")
RATINGS = ("excellent", "good", "passable", "not_good", "poor")
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def synthetic_events(count: int, users: int, seed: int) -> list[bytes]:
    """``count`` valid event bodies over ``users`` users, skewed (a few users get most events),
    all three types, negative and positive deltas, random offsets in occurred_at (not sorted)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(users)]
    user_ids = [f"user-{n:05d}" for n in range(users)]
    chosen = rng.choices(user_ids, weights=weights, k=count)
    bodies = []
    for index, user in enumerate(chosen):
        kind = rng.random()
        if kind < 0.6:
            event_type = "conversation.turn_recorded"
            data: dict[str, Any] = {
                "conversation_id": f"c-{index // 10}",
                "topic": rng.choice(TOPICS),
                "speaker": rng.choice(("child", "robot")),
                "sentiment": rng.choice(SENTIMENTS),
            }
        elif kind < 0.8:
            event_type = "conversation.completed"
            data = {
                "conversation_id": f"c-{index // 10}",
                "topic": rng.choice(TOPICS),
                "turns": rng.randint(0, 40),
                "duration_s": round(rng.uniform(0, 900), 3),
                "rating": rng.choice(RATINGS),
            }
        else:
            event_type = "friendship.adjusted"
            data = {"delta": rng.randint(-60, 60), "reason": "synthetic"}
        offset_h = rng.choice((0, 2, -7))
        moment = EPOCH + timedelta(seconds=rng.randint(0, 86_400 * 30))
        occurred_at = moment.astimezone(timezone(timedelta(hours=offset_h))).isoformat()
        bodies.append(
            json.dumps(
                {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "type": event_type,
                    "user_id": user,
                    "occurred_at": occurred_at,
                    "data": data,
                }
            ).encode()
        )
    return bodies


def outgoing(bodies: Sequence[bytes]) -> list[OutgoingEvent]:
    """Valid bodies as publishable events (routing key = user_id)."""
    result = []
    for body in bodies:
        event = json.loads(body)
        result.append(OutgoingEvent(event["event_id"], event["user_id"], body))
    return result


def publish(settings: Settings, events: Sequence[OutgoingEvent]) -> None:
    """Publish with confirms, in order."""
    asyncio.run(publish_events(settings, list(events)))


@contextmanager
def processor_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``python -m processor run`` process; SIGTERMed (then killed) on exit."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "processor", "run"],
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def drain(settings: Settings, timeout_s: float = 180.0) -> None:
    """Wait until every partition's checkpoint reached its log tail."""
    with connect(settings.database_url) as conn:
        wait_for_zero_lag(settings, conn, timeout_s=timeout_s)


def drain_except(
    settings: Settings, stuck: int, timeout_s: float = 120.0
) -> dict[int, PartitionStatus]:
    """Wait until every partition but ``stuck`` is at zero lag; returns all statuses."""
    deadline = time.monotonic() + timeout_s
    with connect(settings.database_url) as conn:
        while True:
            statuses = {s.partition: s for s in asyncio.run(read_partition_status(settings, conn))}
            if all(s.lag == 0 for p, s in statuses.items() if p != stuck):
                return statuses
            assert time.monotonic() < deadline, f"lag stayed above zero: {statuses}"
            time.sleep(0.2)


async def read_bodies(
    settings: Settings,
    partition: int,
    *,
    count: int | None = None,
    until_offset: int | None = None,
    timeout_s: float = 60.0,
) -> list[bytes]:
    """Bodies of a partition stream from its first available offset, read with rstream (a
    client independent of the product's reader): the first ``count`` of them, or all up to
    ``until_offset``. Raises ``TimeoutError`` when they do not arrive within ``timeout_s``."""
    amqp = settings.amqp
    consumer = Consumer(
        amqp.host,
        settings.stream_port,
        username=amqp.username,
        password=amqp.password,
        vhost=amqp.vhost,
    )
    bodies: list[bytes] = []
    done = asyncio.Event()

    def on_message(entry: bytes, context: MessageContext) -> None:
        bodies.append(message_body(entry))
        if (count is not None and len(bodies) >= count) or (
            until_offset is not None and context.offset >= until_offset
        ):
            done.set()

    try:
        await consumer.subscribe(
            stream_name(partition),
            on_message,
            offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
        )
        await asyncio.wait_for(done.wait(), timeout=timeout_s)
    finally:
        await consumer.close()
    return bodies[:count] if count is not None else bodies


def read_stream_bodies(settings: Settings, partition: int) -> list[bytes]:
    """Every body still in a partition stream, from its first available offset to its tail."""

    async def read() -> list[bytes]:
        tail = (await read_tail_offsets(settings, [partition]))[partition]
        if tail < 0:
            return []
        return await read_bodies(settings, partition, until_offset=tail)

    return asyncio.run(read())


def stored_projections(settings: Settings) -> dict[str, dict[str, Any]]:
    """The stored projections in ``tests.reference.reference_fold``'s shape."""
    users: dict[str, dict[str, Any]] = {}
    with connect(settings.database_url) as conn:
        for user_id, score, applied, last_at in conn.execute(
            "SELECT user_id, score, events_applied, last_event_at FROM friendships"
        ):
            users[user_id] = {
                "score": score,
                "level": reference_level(score),
                "events_applied": applied,
                "last_event_at": last_at,
                "topics": {},
            }
        columns = ", ".join(SENTIMENT_COLUMNS)
        for row in conn.execute(
            "SELECT user_id, topic, conversations, turns, duration_s, "
            f"{columns}, last_discussed_at FROM topic_metrics"
        ):
            users[row[0]]["topics"][row[1]] = {
                "conversations": row[2],
                "turns": row[3],
                "duration_s": row[4],
                "sentiment": dict(zip(SENTIMENTS, row[5:13], strict=True)),
                "last_discussed_at": row[13],
            }
    return users


def count(settings: Settings, sql: str) -> int:
    """A single integer answered by ``sql``."""
    with connect(settings.database_url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def assert_projections_equal(
    stored: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> None:
    """Every user and topic equal; the first differences are named in the failure message."""
    differing = [u for u in sorted(set(stored) | set(expected)) if stored.get(u) != expected.get(u)]
    detail = "; ".join(
        f"{u}: stored {stored.get(u)} expected {expected.get(u)}" for u in differing[:3]
    )
    assert not differing, f"{len(differing)} users differ from the fold: {detail}"


def stream_producer(settings: Settings) -> Producer:
    """An rstream producer on the stream port of ``settings`` (writes straight to streams)."""
    amqp = settings.amqp
    return Producer(
        amqp.host,
        settings.stream_port,
        username=amqp.username,
        password=amqp.password,
        vhost=amqp.vhost,
    )


def run_command(
    args: Sequence[str], env: dict[str, str], *, cwd: Path | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m processor ARGS`` with ``env``; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "processor", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
