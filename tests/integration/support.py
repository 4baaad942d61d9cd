"""Helpers of the integration tests: synthetic events, publishing, processor processes, reading
the stored projections in the reference fold's shape."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rstream import Consumer, ConsumerOffsetSpecification, MessageContext, OffsetType, Producer

from processor.publishing.publisher import OutgoingEvent, publish_events
from processor.reading.amqp_body import message_body
from processor.reading.probes import read_tail_offsets
from processor.settings import Settings, stream_name
from processor.status import PartitionStatus, read_partition_status, wait_for_zero_lag
from projections.database import connect
from testkit.events import EPOCH, RATINGS, TOPICS, outgoing, synthetic_events
from testkit.privacy import record_output
from testkit.processes import processor_process, stored_projections
from testkit.services import settings_env


def publish(settings: Settings, events: Sequence[OutgoingEvent]) -> None:
    """Publish with confirms, in order."""
    asyncio.run(publish_events(settings, list(events)))


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
    """``python -m processor ARGS`` with ``env``; stdout and stderr captured as text.

    Its stderr (the log) joins the running test's check for personal data
    (``testkit.privacy.record_output``); stdout is the command's answer to its caller.
    """
    result = subprocess.run(
        [sys.executable, "-m", "processor", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    record_output(f"python -m processor {args[0] if args else ''} (stderr)", result.stderr)
    return result


__all__ = [
    "EPOCH",
    "RATINGS",
    "TOPICS",
    "assert_projections_equal",
    "count",
    "drain",
    "drain_except",
    "outgoing",
    "processor_process",
    "publish",
    "read_stream_bodies",
    "run_command",
    "settings_env",
    "stored_projections",
    "stream_producer",
    "synthetic_events",
]


def reject_rows_of(user_id: str, events: str) -> str:
    """SQL for a trigger that makes PostgreSQL reject ``user_id``'s friendship row, as a value
    out of a column's range (a ``DataError``, SQLSTATE 22003), on ``events`` (``"INSERT OR
    UPDATE"``, ``"UPDATE"``). ``user_id`` and ``events`` are a test's constants."""
    return f"""
CREATE FUNCTION reject_rows_of_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.user_id = '{user_id}' THEN
    RAISE EXCEPTION 'value out of range' USING ERRCODE = '22003';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER reject_rows_of_user BEFORE {events} ON friendships
  FOR EACH ROW EXECUTE FUNCTION reject_rows_of_user();
"""
