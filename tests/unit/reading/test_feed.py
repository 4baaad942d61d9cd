"""The partition feed between the stream reader and the workers (no broker needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from processor.reading.errors import LogStartUnknown, LogTruncated, MissingRange
from processor.reading.feed import PartitionFeed
from processor.reading.log_record import LogRecord
from processor.tuning import FEED_BUFFERED_BATCHES as BUFFERED_BATCHES


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def make_feed(
    loop: asyncio.AbstractEventLoop,
    next_offset: int = 0,
    batch_size: int = 3,
    first_available: int | None = 0,
) -> tuple[PartitionFeed, list[int]]:
    calls: list[int] = []

    async def probe(_partition: int) -> int | None:
        return first_available

    feed = PartitionFeed(
        7,
        next_offset=next_offset,
        batch_size=batch_size,
        batch_wait_s=0.005,
        loop=loop,
        on_ready=lambda: calls.append(1),
        first_offset_probe=probe,
    )
    return feed, calls


def test_records_come_out_in_offset_order_in_batches(loop: asyncio.AbstractEventLoop) -> None:
    feed, _ = make_feed(loop, next_offset=10)
    for offset in range(10, 15):
        assert feed.offer([LogRecord(offset, b"%d" % offset)]) is None
    assert [r.offset for r in feed.take(3)] == [10, 11, 12]
    assert [r.body for r in feed.take(3)] == [b"13", b"14"]
    assert feed.take(3) == []
    assert feed.next_offset == 15


def test_a_full_batch_is_ready_at_once(loop: asyncio.AbstractEventLoop) -> None:
    feed, calls = make_feed(loop, batch_size=3)
    feed.offer([LogRecord(0, b"a")])
    feed.offer([LogRecord(1, b"b")])
    assert calls == []
    feed.offer([LogRecord(2, b"c")])
    assert calls == [1]


def test_a_lone_record_is_ready_after_the_batch_wait(loop: asyncio.AbstractEventLoop) -> None:
    feed, calls = make_feed(loop, batch_size=100)
    feed.offer([LogRecord(0, b"a")])
    assert calls == []
    loop.run_until_complete(asyncio.sleep(0.02))
    assert calls == [1]


def test_redelivered_offsets_are_ignored(loop: asyncio.AbstractEventLoop) -> None:
    feed, _ = make_feed(loop, next_offset=5)
    feed.offer([LogRecord(3, b"old")])
    feed.offer([LogRecord(4, b"old")])
    feed.offer([LogRecord(5, b"new")])
    feed.offer([LogRecord(5, b"again")])
    assert [(r.offset, r.body) for r in feed.take(10)] == [(5, b"new")]


def offer_all(
    loop: asyncio.AbstractEventLoop, feed: PartitionFeed, records: list[tuple[int, bytes]]
) -> None:
    for offset, body in records:
        waiting = feed.offer([LogRecord(offset, body)])
        if waiting is not None:
            loop.run_until_complete(_await(waiting))


def test_holes_inside_the_stream_are_segment_headers_and_are_skipped(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # RabbitMQ gives the chunk opening each segment an offset that consumers never see.
    feed, _ = make_feed(loop, next_offset=0, batch_size=100)
    offer_all(loop, feed, [(0, b"a"), (1, b"b"), (3, b"c"), (4, b"d")])
    assert feed.error is None
    assert [r.offset for r in feed.take(10)] == [0, 1, 3, 4]


def test_a_hole_at_subscription_start_within_the_log_is_accepted(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, _ = make_feed(loop, next_offset=33, batch_size=100, first_available=0)
    offer_all(loop, feed, [(34, b"after the segment header")])
    assert feed.error is None
    assert [r.offset for r in feed.take(10)] == [34]


def test_a_log_truncated_past_the_checkpoint_stops_the_partition(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, calls = make_feed(loop, next_offset=0, first_available=120)
    offer_all(loop, feed, [(121, b"first available")])
    assert isinstance(feed.error, LogTruncated)
    assert feed.error.missing == (MissingRange(7, 0, 119),)
    assert "partition 7 (events.p007): offsets 0..119" in str(feed.error)
    assert calls == [1]
    # Nothing after the gap is accepted: the partition does not silently move on.
    offer_all(loop, feed, [(122, b"later")])
    assert feed.take(10) == []


def test_each_resubscription_checks_its_first_record_again(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, _ = make_feed(loop, next_offset=0, batch_size=100, first_available=50)
    offer_all(loop, feed, [(0, b"a"), (1, b"b")])
    assert feed.error is None
    feed.subscribed(feed.next_offset)
    offer_all(loop, feed, [(60, b"after a reconnect, retention removed 2..49")])
    assert isinstance(feed.error, LogTruncated)


def test_a_full_feed_pushes_back_until_a_worker_takes_a_batch(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, _ = make_feed(loop, batch_size=2)
    capacity = 2 * BUFFERED_BATCHES
    waits = [feed.offer([LogRecord(offset, b"x")]) for offset in range(capacity)]
    assert waits[:-1] == [None] * (capacity - 1)
    pending = waits[-1]
    assert pending is not None
    task = loop.create_task(_await(pending))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not task.done()
    feed.take(2)
    loop.run_until_complete(asyncio.wait_for(task, timeout=1))
    assert task.done()


async def _await(awaitable: object) -> None:
    await awaitable  # type: ignore[misc]


def test_a_failing_log_start_check_stops_the_partition_instead_of_skipping(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def broken_probe(_partition: int) -> int | None:
        raise ConnectionError("broker went away")

    feed = PartitionFeed(
        3,
        next_offset=10,
        batch_size=10,
        batch_wait_s=0.005,
        loop=loop,
        on_ready=lambda: None,
        first_offset_probe=broken_probe,
    )
    offer_all(loop, feed, [(12, b"after a hole")])
    assert isinstance(feed.error, LogStartUnknown)
    assert feed.take(10) == []
    assert feed.next_offset == 10  # nothing was skipped: a new owner resumes at 10


def test_no_answer_about_the_log_start_is_not_taken_as_not_truncated(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, _ = make_feed(loop, next_offset=10, first_available=None)
    offer_all(loop, feed, [(12, b"after a hole")])
    assert isinstance(feed.error, LogStartUnknown)


def test_an_unreadable_entry_is_kept_with_its_reason_for_the_dead_letters(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, _ = make_feed(loop, next_offset=0, batch_size=10)
    offer_all(loop, feed, [(0, b"ok")])
    waiting = feed.offer([LogRecord(1, b"\x01raw", "stream entry is not an AMQP 1.0 message")])
    assert waiting is None
    records = feed.take(10)
    assert [(r.offset, r.error) for r in records] == [
        (0, None),
        (1, "stream entry is not an AMQP 1.0 message"),
    ]
    assert records[1].body == b"\x01raw"


def test_a_chunk_that_fills_the_feed_is_taken_whole_and_then_pushes_back(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, calls = make_feed(loop, next_offset=0, batch_size=1)  # capacity: BUFFERED_BATCHES
    waiting = feed.offer([LogRecord(offset, b"x") for offset in range(6)])
    assert waiting is not None  # the chunk went past the capacity: the reader waits
    assert calls == [1]  # one hand-over for the chunk, not one per record
    task = loop.create_task(_await(waiting))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not task.done()
    taken = [r.offset for r in feed.take(1)]
    taken += [r.offset for r in feed.take(10)]
    loop.run_until_complete(asyncio.wait_for(task, timeout=1))
    assert taken == [0, 1, 2, 3, 4, 5]
    assert feed.next_offset == 6


def test_a_chunk_overlapping_what_the_feed_has_keeps_only_the_new_offsets(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, _ = make_feed(loop, next_offset=0, batch_size=100)
    offer_all(loop, feed, [(0, b"a"), (1, b"b")])
    assert feed.offer([LogRecord(o, b"again") for o in (0, 1)] + [LogRecord(2, b"c")]) is None
    assert [(r.offset, r.body) for r in feed.take(10)] == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_when_the_reader_is_idle_a_lone_record_is_handed_over_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, calls = make_feed(loop, batch_size=100)
    feed.offer([LogRecord(0, b"a")])
    assert calls == []  # the reader may have more in this burst
    feed.reader_idle()
    assert calls == [1]  # no timer waited for
    loop.run_until_complete(asyncio.sleep(0.02))
    assert calls == [1]  # and the timer was cancelled


def test_while_a_batch_is_handed_over_records_accumulate_for_the_next_take(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, calls = make_feed(loop, batch_size=100)
    feed.offer([LogRecord(0, b"a")])
    feed.reader_idle()
    assert calls == [1]
    # The worker has not taken it yet (queued or busy): more records, more idle moments,
    # no more hand-overs and no timer; the next take gets them all.
    for offset in range(1, 5):
        feed.offer([LogRecord(offset, b"x")])
        feed.reader_idle()
    loop.run_until_complete(asyncio.sleep(0.02))
    assert calls == [1]
    assert [r.offset for r in feed.take(100)] == [0, 1, 2, 3, 4]
    # Taken: the next idle moment with records hands over again.
    feed.offer([LogRecord(5, b"y")])
    feed.reader_idle()
    assert calls == [1, 1]


def test_an_idle_reader_with_nothing_waiting_hands_nothing_over(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, calls = make_feed(loop, batch_size=100)
    feed.reader_idle()
    feed.offer([LogRecord(0, b"a")])
    feed.take(10)
    feed.reader_idle()
    assert calls == []
