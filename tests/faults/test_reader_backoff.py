"""The stream reader's reconnect back-off, against a broker port that refuses connections.

Each failed attempt logs one line with its attempt number and delay; the delay grows
exponentially (full jitter) up to ``RECONNECT_BACKOFF_MAX_S`` and never below
``RECONNECT_BACKOFF_S`` (settings), and
the attempts keep counting while the broker stays unreachable.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Sequence

import pytest

from processor.reading.log_record import LogRecord
from processor.reading.reader import StreamReader
from processor.settings import Settings
from tests.faults.support import RECONNECT_LINE


class NullSink:
    """A sink that wants partition 0 from offset 0 and never receives anything."""

    next_offset = 0

    def subscribed(self, start: int) -> None:
        pass

    def offer(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        raise AssertionError("nothing can arrive from a refused port")

    def reader_idle(self) -> None:
        pass

    def fail(self, error: Exception) -> None:
        raise AssertionError(f"unexpected failure: {error}")


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_reconnect_attempts_count_up_with_a_bounded_jittered_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        amqp_url="amqp://guest:guest@127.0.0.1:5672/%2F",
        stream_port=refused_port(),
        reconnect_backoff_s=0.1,
        reconnect_backoff_max_s=1.5,
    )
    low, high = settings.reconnect_backoff_s, settings.reconnect_backoff_max_s
    reader = StreamReader(settings, name="friendship-stream backoff-test")
    caplog.set_level(logging.WARNING, logger="processor.reading.reader")
    reader.start()
    try:
        reader.subscribe(0, NullSink())
        deadline = time.monotonic() + 60
        while len(RECONNECT_LINE.findall(caplog.text)) < 5:
            assert time.monotonic() < deadline, caplog.text[-2000:]
            time.sleep(0.05)
    finally:
        reader.stop()
    lines = list(RECONNECT_LINE.finditer(caplog.text))
    attempts = [int(m.group("attempt")) for m in lines]
    delays = [float(m.group("delay")) for m in lines]
    assert attempts[:5] == [1, 2, 3, 4, 5], "attempts must keep counting while the broker is down"
    for attempt, delay in zip(attempts, delays, strict=True):
        assert low <= delay <= min(high, low * 2**attempt), (
            attempt,
            delay,
        )
    assert len(set(delays)) > 1
