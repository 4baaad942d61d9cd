"""A partition's feed: records read from its stream, waiting for a worker to apply them.

The reader's loop thread offers records; worker threads take batches. The feed checks the
offsets it is given. An offset below the next expected one is a re-delivery (ignored). Offsets
may have holes: RabbitMQ gives an offset to the chunk that opens each stream segment, and
consumers never see it. A hole at the very start of a (re)subscription can also mean that
retention deleted the records the partition needs; the feed then asks the broker for the
stream's first offset, and when that is beyond the expected offset it stops the partition loudly
(``LogTruncated``) instead of skipping records.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable

from processor import tuning
from processor.reading.errors import ReadError
from processor.reading.log_record import LogRecord
from processor.reading.log_start import FirstOffsetProbe, check_log_start


class PartitionFeed:
    """Records of one partition between the stream reader and the worker that applies them.

    Args:
        partition: the partition number.
        next_offset: the first offset wanted (checkpoint + 1).
        batch_size: most records per batch.
        batch_wait_s: how long, in seconds, a lone record may wait for a batch to fill.
        loop: the reader's event loop (timers and back-pressure live there).
        on_ready: called (on the loop thread) when a batch is ready; the owner schedules a worker.
        first_offset_probe: coroutine function giving a partition's first available offset (None
            for an empty stream), used to tell a truncated log from a segment hole.
    """

    def __init__(
        self,
        partition: int,
        *,
        next_offset: int,
        batch_size: int,
        batch_wait_s: float,
        loop: asyncio.AbstractEventLoop,
        on_ready: Callable[[], None],
        first_offset_probe: FirstOffsetProbe,
    ) -> None:
        self.partition = partition
        self._next_offset = next_offset
        self._batch_size = batch_size
        self._batch_wait_s = batch_wait_s
        self._capacity = batch_size * tuning.FEED_BUFFERED_BATCHES
        self._loop = loop
        self._on_ready = on_ready
        self._probe = first_offset_probe
        self._subscription_start: int | None = next_offset
        self._lock = threading.Lock()
        self._records: deque[LogRecord] = deque()
        self._oldest_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._space = asyncio.Event()
        self._space.set()
        self.error: Exception | None = None
        self.highest_seen = next_offset - 1

    @property
    def next_offset(self) -> int:
        """The offset a (re)subscription must start from."""
        with self._lock:
            return self._next_offset

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    # -- reader side (loop thread) ----------------------------------------------------------------

    def subscribed(self, start: int) -> None:
        """A (re)subscription from ``start`` begins: check the first record it delivers."""
        with self._lock:
            self._subscription_start = start

    def offer(self, record: LogRecord) -> Awaitable[None] | None:
        """Append a record; returns an awaitable when the reader must wait (back-pressure, or
        checking the log start after a hole at the start of a subscription)."""
        with self._lock:
            if self.error is not None or record.offset < self._next_offset:
                return None
            start, self._subscription_start = self._subscription_start, None
        if start is not None and record.offset > start:
            return self._check_log_start(start, record)
        return self._append(record)

    async def _check_log_start(self, expected: int, record: LogRecord) -> None:
        # Never raise from here: the reader would drop the rest of the chunk.
        try:
            await check_log_start(self._probe, self.partition, expected)
        except ReadError as exc:
            self.fail(exc)
            return
        waiting = self._append(record)
        if waiting is not None:
            await waiting

    def _append(self, record: LogRecord) -> Awaitable[None] | None:
        with self._lock:
            if self.error is not None or record.offset < self._next_offset:
                return None
            if not self._records:
                self._oldest_at = time.monotonic()
            self._records.append(record)
            self._next_offset = record.last_offset + 1
            self.highest_seen = record.last_offset
            ready_now = len(self._records) >= self._batch_size
            if len(self._records) >= self._capacity:
                self._space.clear()
        if ready_now:
            self._on_ready()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._batch_wait_s, self._timer_fired)
        if not self._space.is_set():
            return self._wait_for_space()
        return None

    async def _wait_for_space(self) -> None:
        await self._space.wait()

    def fail(self, error: Exception) -> None:
        """Stop the partition with ``error`` (called by the reader)."""
        with self._lock:
            self.error = error
        self._on_ready()

    def _timer_fired(self) -> None:
        self._timer = None
        self._on_ready()

    # -- worker side ----------------------------------------------------------------------------

    def take(self, limit: int) -> list[LogRecord]:
        """Remove and return up to ``limit`` records in offset order (thread-safe)."""
        with self._lock:
            count = min(limit, len(self._records))
            batch = [self._records.popleft() for _ in range(count)]
            if self._records:
                self._oldest_at = time.monotonic()
            has_space = len(self._records) < self._capacity
        if has_space:
            self._loop.call_soon_threadsafe(self._space.set)
        return batch

    def has_records(self) -> bool:
        """True when records are waiting."""
        with self._lock:
            return bool(self._records)
