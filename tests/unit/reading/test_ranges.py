"""Replay's range reading without a broker: batching, offsets with holes, the log start."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from processor.reading.chunks import chunk_records, unreadable_reason
from processor.reading.errors import AmqpFormatError, LogTruncated, MissingRange
from processor.reading.log_record import LogRecord
from processor.reading.log_start import missing_ranges
from processor.reading.ranges import (
    LogRange,
    RangeSink,
    _ReadState,
    ranges_between,
)


def amqp(body: bytes) -> memoryview:
    """A stream entry as an AMQP 0.9.1 publish stores it: one ``data`` section (vbin8)."""
    return memoryview(b"\x00\x53\x75\xa0" + bytes([len(body)]) + body)


def chunk(first: int, count: int) -> tuple[int, list[memoryview]]:
    return first, [amqp(b"%d" % (first + i)) for i in range(count)]


def records(first: int, count: int) -> tuple[int, list[LogRecord]]:
    """A chunk's records as the client hands them on (``client.OnChunk``)."""
    return first, list(chunk_records(*chunk(first, count)))


class Collector:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int]]] = []

    def __call__(self, partition: int, records: list[LogRecord]) -> None:
        self.batches.append((partition, [r.offset for r in records]))


async def no_truncation(_partition: int) -> int | None:
    return 0


async def feed(sink: RangeSink, *chunks: tuple[int, list[memoryview]]) -> None:
    for first, entries in chunks:
        pending: Awaitable[None] | None = sink.on_chunk(first, list(chunk_records(first, entries)))
        if pending is not None:
            await pending


def test_ranges_between_checkpoints_skip_partitions_with_nothing_new() -> None:
    assert ranges_between({0: -1, 1: 5, 2: 9}, {0: 3, 1: 5, 2: 12}) == [
        LogRange(0, 0, 3),
        LogRange(2, 10, 12),
    ]


def test_records_are_batched_from_the_first_offset_to_the_last_inclusive() -> None:
    async def scenario() -> None:
        state = _ReadState(1)
        collect = Collector()
        sink = RangeSink(LogRange(4, 2, 8), 3, collect, state, no_truncation)
        # The broker starts with the chunk holding offset 2 and goes past the last offset.
        await feed(sink, chunk(0, 4), chunk(4, 2), chunk(6, 5))
        assert collect.batches == [(4, [2, 3, 4]), (4, [5, 6, 7]), (4, [8])]
        assert sink.done and state.finished.is_set() and state.records == 7
        assert sink.on_chunk(*records(11, 2)) is None  # later chunks are dropped

    asyncio.run(scenario())


def test_a_hole_at_the_last_offset_still_completes_the_range() -> None:
    async def scenario() -> None:
        state = _ReadState(1)
        collect = Collector()
        sink = RangeSink(LogRange(0, 0, 5), 100, collect, state, no_truncation)
        # Offset 5 is a segment header nobody sees: the next record is 6.
        await feed(sink, chunk(0, 5), chunk(6, 2))
        assert collect.batches == [(0, [0, 1, 2, 3, 4])]
        assert state.finished.is_set()

    asyncio.run(scenario())


def test_a_hole_at_the_first_offset_asks_the_broker_and_goes_on() -> None:
    asked: list[int] = []

    async def probe(partition: int) -> int | None:
        asked.append(partition)
        return 0  # the log starts at 0: the gap was a segment hole

    async def scenario() -> None:
        state = _ReadState(1)
        collect = Collector()
        sink = RangeSink(LogRange(9, 10, 12), 10, collect, state, probe)
        await feed(sink, chunk(11, 2))
        assert asked == [9]
        assert collect.batches == [(9, [11, 12])]
        assert state.error is None

    asyncio.run(scenario())


def test_records_gone_since_the_start_fail_the_read_with_the_missing_range() -> None:
    async def truncated(_partition: int) -> int | None:
        return 500

    async def scenario() -> None:
        state = _ReadState(1)
        sink = RangeSink(LogRange(2, 100, 900), 10, Collector(), state, truncated)
        await feed(sink, chunk(500, 3))
        assert isinstance(state.error, LogTruncated)
        assert state.error.missing == (MissingRange(2, 100, 499),)
        assert "partition 2 (events.p002): offsets 100..499" in str(state.error)

    asyncio.run(scenario())


def test_back_pressure_from_the_consumer_is_awaited() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[None] = loop.create_future()
        state = _ReadState(1)

        def slow(_partition: int, _records: list[LogRecord]) -> asyncio.Future[None]:
            return gate

        sink = RangeSink(LogRange(0, 0, 9), 2, slow, state, no_truncation)
        pending = sink.on_chunk(*records(0, 3))
        assert pending is not None
        waiting = asyncio.ensure_future(pending)
        await asyncio.sleep(0)
        assert state.waiting == 1 and not waiting.done()
        gate.set_result(None)
        await waiting
        assert state.waiting == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("firsts", "checkpoints", "tails", "missing"),
    [
        ({0: 0, 1: 0}, {0: 10, 1: 3}, {0: 12, 1: 3}, []),
        ({0: 0, 1: 250}, {0: 10, 1: -1}, {0: 10, 1: 900}, [MissingRange(1, 0, 249)]),
        ({}, {0: 10}, {0: -1}, [MissingRange(0, 0, 10)]),  # emptied although offsets were used
        ({}, {0: -1, 1: -1}, {0: -1, 1: -1}, []),  # nothing published, nothing needed
        ({0: None}, {0: 5}, {0: 9}, []),  # no answer is not a truncation (the caller asks again)
    ],
)
def test_missing_ranges_name_what_the_log_lost(
    firsts: dict[int, int | None],
    checkpoints: dict[int, int],
    tails: dict[int, int],
    missing: list[MissingRange],
) -> None:
    assert missing_ranges(firsts, checkpoints, tails) == missing


def test_an_unreadable_entry_becomes_a_record_with_the_live_readers_reason() -> None:
    captured: list[LogRecord] = []

    def keep(_partition: int, records: list[LogRecord]) -> None:
        captured.extend(records)

    async def scenario() -> None:
        state = _ReadState(1)
        sink = RangeSink(LogRange(0, 0, 1), 10, keep, state, no_truncation)
        await feed(sink, (0, [amqp(b"fine"), memoryview(b"\x01garbage")]))

    asyncio.run(scenario())
    assert [(r.offset, r.body, r.error is None) for r in captured] == [
        (0, b"fine", True),
        (1, b"\x01garbage", False),
    ]

    (live,) = chunk_records(1, [memoryview(b"\x01garbage")])  # what the live reader is given
    assert live.error is not None
    assert captured[1].error == live.error
    assert unreadable_reason(AmqpFormatError("x")) == "stream entry is not an AMQP 1.0 message: x"
