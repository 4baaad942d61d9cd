"""Bulk reading of the log: offset ranges of partition streams, in large batches (replay).

Every partition is read concurrently with the stream protocol (``processor.reading.client``,
up to ``tuning.RANGE_READ_MAX_CONNECTIONS`` connections per node, a large credit per
subscription), each from a member of its stream (``Metadata``; partitions spread over every
member, so replay reads a cluster's nodes in parallel);
hands each partition's records over in
batches of up to ``batch_size`` records, in log order. The event loop is never blocked: a
consumer that needs time returns an awaitable from ``deliver`` and reading pauses until it is
done (back-pressure towards the broker).

A range is ``first..last`` inclusive, where ``last`` is the offset of a record that exists (a
checkpoint or a stream tail). Offsets may have holes (RabbitMQ gives each segment's header chunk
an offset consumers never see), so "up to ``last``" means "every record with an offset <=
``last``", and a range holds at most ``last - first + 1`` records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from processor import tuning
from processor.reading.chunks import records_span
from processor.reading.client import (
    MAX_SUBSCRIPTIONS,
    Nodes,
    StreamConnection,
    candidates,
    open_connection,
)
from processor.reading.errors import ReadError, ReadStalled
from processor.reading.log_record import LogRecord
from processor.reading.log_start import FirstOffsetProbe, check_log_start
from processor.reading.probes import read_first_offset
from processor.settings import Address, Settings, stream_name

#: Takes one batch of a partition (called on the event loop); may return an awaitable that
#: reading waits for before it goes on (back-pressure).
Deliver = Callable[[int, list[LogRecord]], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class LogRange:
    """Offsets ``first..last`` (inclusive) of one partition; ``last`` is a record's offset."""

    partition: int
    first: int
    last: int

    @property
    def span(self) -> int:
        """Offsets in the range: an upper bound of its records (holes are not records)."""
        return max(0, self.last - self.first + 1)


def ranges_between(start: Mapping[int, int], end: Mapping[int, int]) -> list[LogRange]:
    """The ranges after ``start[p]`` up to ``end[p]`` (both committed offsets, -1 = none). Pure.

    Partitions where ``end[p] <= start[p]`` need nothing and are left out.
    """
    return [
        LogRange(partition, start.get(partition, -1) + 1, last)
        for partition, last in sorted(end.items())
        if last > start.get(partition, -1)
    ]


@dataclass(frozen=True, slots=True)
class ReadStats:
    """What a read delivered: records, body bytes and seconds (monotonic clock)."""

    records: int
    body_bytes: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        """Records per second (0 when nothing was read)."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


class _ReadState:
    """Counters and the outcome of one read, shared by its sinks (event loop only)."""

    def __init__(self, ranges: int) -> None:
        self._remaining = ranges
        self.finished = asyncio.Event()
        self.error: Exception | None = None
        self.records = 0
        self.body_bytes = 0
        self.last_activity = time.monotonic()
        self.waiting = 0

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def range_done(self) -> None:
        self._remaining -= 1
        if self._remaining == 0:
            self.finished.set()

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.finished.set()

    async def backpressure(self, waiting: list[Awaitable[None]]) -> None:
        self.waiting += 1
        try:
            for pending in waiting:
                await pending
        finally:
            self.waiting -= 1
            self.touch()


class RangeSink:
    """Turns one range's chunks into batches of records (runs on the event loop only).

    Args:
        log_range: the offsets wanted.
        batch_size: most records per delivered batch.
        deliver: where batches go.
        state: the read's shared counters and outcome.
        probe: coroutine function giving a partition's first offset (None: empty stream), asked
            when the first record delivered is above ``log_range.first``.
    """

    def __init__(
        self,
        log_range: LogRange,
        batch_size: int,
        deliver: Deliver,
        state: _ReadState,
        probe: FirstOffsetProbe,
    ) -> None:
        self.range = log_range
        self._batch_size = batch_size
        self._deliver = deliver
        self._state = state
        self._probe = probe
        self._next = log_range.first
        self._start_checked = False
        self._batch: list[LogRecord] = []
        self.done = False

    def on_chunk(self, first_offset: int, records: list[LogRecord]) -> Awaitable[None] | None:
        """Take one chunk (``client.OnChunk``): keep offsets ``next..last``, batch them."""
        if self.done:
            return None
        self._state.touch()
        if first_offset + records_span(first_offset, records) <= self._next:
            return None  # the chunk holding the start offset begins earlier
        if not self._start_checked:
            self._start_checked = True
            if max(first_offset, self._next) > self.range.first:
                return self._check_log_start(first_offset, records)
        return self._take(first_offset, records)

    async def _check_log_start(self, first_offset: int, records: list[LogRecord]) -> None:
        """The first record is above the first offset asked for: a segment hole, or retention
        truncated the log since the check at start (``log_start.check_log_start``)."""
        try:
            await check_log_start(self._probe, self.range.partition, self.range.first)
        except ReadError as exc:
            self.done = True
            self._state.fail(exc)
            return
        waiting = self._take(first_offset, records)
        if waiting is not None:
            await waiting

    def _take(self, first_offset: int, records: list[LogRecord]) -> Awaitable[None] | None:
        last = self.range.last
        waiting: list[Awaitable[None]] = []
        offset = first_offset - 1
        for record in records:
            offset = record.last_offset
            if record.offset < self._next:
                continue
            if record.offset > last:  # ``last`` was a hole: the range is complete
                break
            self._state.body_bytes += len(record.body)
            self._batch.append(record)
            self._next = record.last_offset + 1
            if len(self._batch) >= self._batch_size:
                self._flush(waiting)
        if offset >= last:
            self.done = True
            self._flush(waiting)
            self._state.range_done()
        return self._state.backpressure(waiting) if waiting else None

    def _flush(self, waiting: list[Awaitable[None]]) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._state.records += len(batch)
            pending = self._deliver(self.range.partition, batch)
            if pending is not None:
                waiting.append(pending)


async def _read(
    settings: Settings,
    ranges: Sequence[LogRange],
    deliver: Deliver,
    *,
    batch_size: int,
    credit: int,
    stall_timeout_s: float,
    check: Callable[[], None] | None,
) -> _ReadState:
    state = _ReadState(len(ranges))

    async def probe(partition: int) -> int | None:
        return await read_first_offset(settings, partition)

    connections: dict[tuple[Address, int], StreamConnection] = {}
    ids: dict[tuple[Address, int], int] = {}
    nodes = Nodes(settings, "friendship-stream range read")
    try:
        count = max(
            min(len(ranges), tuning.RANGE_READ_MAX_CONNECTIONS),
            -(-len(ranges) // MAX_SUBSCRIPTIONS),
        )
        first = await nodes.first()
        streams = [stream_name(r.partition) for r in ranges]
        located = await nodes.locate(streams) if settings.stream_follow_advertised else {}
        for index, log_range in enumerate(ranges):
            stream = stream_name(log_range.partition)
            address = first.address
            if stream in located:
                problem = located[stream].error()
                if problem is not None:
                    raise problem
                members = candidates(located[stream])
                address = members[index % len(members)]
            key = (address, index % count)
            connection = connections.get(key)
            if connection is None:
                connection = await open_connection(
                    settings, "friendship-stream range read", address
                )
                connections[key] = connection
            subscription_id = ids.get(key, 0)
            ids[key] = subscription_id + 1
            sink = RangeSink(log_range, batch_size, deliver, state, probe)
            await connection.subscribe(
                subscription_id, stream, log_range.first, credit, sink.on_chunk
            )
        while not state.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.finished.wait(), tuning.RANGE_READ_POLL_S)
            for connection in connections.values():
                if connection.failed is not None and connection.failed.done():
                    connection.failed.result()
            if check is not None:
                check()
            idle = time.monotonic() - state.last_activity
            if state.waiting == 0 and idle > stall_timeout_s:
                raise ReadStalled(
                    f"no record from the broker for {idle:.0f} s while reading "
                    f"{len(ranges)} partitions; is RabbitMQ reachable at "
                    f"{', '.join(f'{h}:{p}' for h, p in settings.stream_addresses)}?"
                )
        if state.error is not None:
            raise state.error
    finally:
        for connection in connections.values():
            await connection.close()
        await nodes.close()
    return state


def read_log_ranges(
    settings: Settings,
    ranges: Sequence[LogRange],
    deliver: Deliver,
    *,
    batch_size: int,
    credit: int = tuning.REPLAY_CREDIT,
    stall_timeout_s: float = tuning.RANGE_READ_STALL_S,
    check: Callable[[], None] | None = None,
) -> ReadStats:
    """Read every range concurrently and hand its records to ``deliver`` in batches.

    Runs an event loop in the calling thread until every range was delivered. Each partition's
    batches come in log order; the last batch of a range may be short.

    Args:
        settings: broker addresses, credentials, vhost, TLS, deadlines.
        ranges: at most one range per partition.
        deliver: takes ``(partition, records)`` on the event loop; must not block (it may return
            an awaitable for back-pressure).
        batch_size: most records per delivered batch.
        credit: chunks in flight per subscription.
        stall_timeout_s: seconds without a record (while no batch waits for back-pressure)
            after which the read fails.
        check: called about every 50 ms on the loop; raise from it to abort (for example when
            the consumer of the batches failed).

    Returns:
        Records and body bytes delivered, and the seconds it took (monotonic clock).

    Raises:
        LogTruncated: retention removed records of a range while it was read.
        LogStartUnknown: a range's start could not be checked with the broker.
        ReadStalled: the broker sent nothing for ``stall_timeout_s``.
        StreamProtocolError: the broker refused a subscription, closed
            the connection or sent a corrupt chunk.
        Exception: whatever ``check`` raises.
    """
    if len({r.partition for r in ranges}) != len(ranges):
        raise ValueError("read_log_ranges takes at most one range per partition")
    wanted = [r for r in ranges if r.span > 0]
    if not wanted:
        return ReadStats(0, 0, 0.0)
    started = time.monotonic()
    state = asyncio.run(
        _read(
            settings,
            wanted,
            deliver,
            batch_size=batch_size,
            credit=credit,
            stall_timeout_s=stall_timeout_s,
            check=check,
        )
    )
    return ReadStats(state.records, state.body_bytes, time.monotonic() - started)


def read_log_ranges_into_memory(
    settings: Settings, ranges: Sequence[LogRange], *, credit: int = tuning.REPLAY_CREDIT
) -> dict[int, list[LogRecord]]:
    """Every record of ``ranges``, by partition, in log order (for small ranges: a catch-up)."""
    records: dict[int, list[LogRecord]] = {r.partition: [] for r in ranges}

    def keep(partition: int, batch: list[LogRecord]) -> None:
        records[partition].extend(batch)

    read_log_ranges(settings, ranges, keep, batch_size=tuning.REPLAY_BATCH_SIZE, credit=credit)
    return records


def measure_raw_read(settings: Settings, ranges: Sequence[LogRange], *, credit: int) -> ReadStats:
    """Read ``ranges`` and drop the records: the raw stream read rate (no database)."""

    def drop(_partition: int, _batch: list[LogRecord]) -> None:
        return None

    return read_log_ranges(
        settings, ranges, drop, batch_size=tuning.REPLAY_BATCH_SIZE, credit=credit
    )
