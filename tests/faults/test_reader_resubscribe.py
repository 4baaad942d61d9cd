"""A partition given up and taken again at once must be read by its new feed.

A worker releases a partition (``StreamReader.unsubscribe``) while the main thread takes it again
(``StreamReader.subscribe`` with a new feed): the two calls must take effect in the order they
were made, even when the reader's loop is busy, or the new owner never receives a record and its
partition stalls with a lease held.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Sequence

import pytest

from processor.reading.log_record import LogRecord
from processor.reading.probes import read_tail_offsets
from processor.reading.reader import StreamReader
from processor.settings import Settings
from tests.integration.support import outgoing, publish, synthetic_events

pytestmark = [pytest.mark.integration, pytest.mark.faults]


class Sink:
    """Collects offsets from ``start`` on."""

    def __init__(self, start: int = 0) -> None:
        self.next_offset = start
        self.offsets: list[int] = []
        self.arrived = threading.Event()

    def subscribed(self, start: int) -> None:
        pass

    def offer(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        self.offsets.extend(record.offset for record in records)
        self.next_offset = records[-1].last_offset + 1
        self.arrived.set()
        return None

    def reader_idle(self) -> None:
        pass

    def fail(self, error: Exception) -> None:
        raise AssertionError(f"unexpected failure: {error}")


def test_unsubscribe_then_subscribe_while_the_loop_is_busy_keeps_the_new_subscription(
    settings: Settings,
) -> None:
    one_user = synthetic_events(20, users=1, seed=9)
    publish(settings, outgoing(one_user))
    reader = StreamReader(settings, name="friendship-stream resubscribe-test")
    reader.start()
    try:
        partition = next(p for p, tail in _tails(settings).items() if tail >= 0)
        first = Sink()
        reader.subscribe(partition, first)
        assert first.arrived.wait(30), "the first subscription receives the partition"
        # Keep the loop busy while the worker-side release and the retake are queued.
        reader.loop.call_soon_threadsafe(time.sleep, 0.5)
        time.sleep(0.1)
        reader.unsubscribe(partition)
        second = Sink()
        reader.subscribe(partition, second)
        assert second.arrived.wait(30), "the new feed never received its partition's records"
        assert second.offsets[0] == 0
    finally:
        reader.stop()


def _tails(settings: Settings) -> dict[int, int]:
    return asyncio.run(read_tail_offsets(settings))
