"""A partition's feed: records read from its stream, waiting for a worker to apply them.

The reader's loop thread offers records; worker threads take batches. The feed checks the
offsets it is given. An offset below the next expected one is a re-delivery (ignored). Offsets
may have holes: RabbitMQ gives an offset to the chunk that opens each stream segment, and
consumers never see it. A hole at the very start of a (re)subscription can also mean that
retention deleted the records the partition needs; the feed then asks the broker for the
stream's first offset, and when that is beyond the expected offset it stops the partition loudly
(``LogTruncated``) instead of skipping records.

Records come in a chunk at a time (``offer``): one lock, one deque extend and one
back-pressure check per chunk, not per record.

When a batch is handed over (``on_ready``, which schedules the partition's worker) adapts to the
load:

- *full*: as soon as ``batch_size`` records wait;
- *idle*: when the reader has nothing more buffered for the partition (``reader_idle``, the end
  of what one socket read brought) and no batch was handed over since the worker last took one,
  the records waiting are handed over at once, however few: at light load a record waits for
  no timer;
- *timer*: otherwise a record waits at most ``batch_wait_s`` (a reader that never says it is
  idle still has its batches handed over).

While the worker applies a batch, records accumulate; its next ``take`` gets up to
``batch_size`` of them at once (the owner runs again as long as records wait), so batches grow
when the worker is behind and shrink to a record or two when it keeps up.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

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
        batch_wait_s: how long, in seconds, a record may wait for a batch to fill when the
            reader does not say it is idle (see the module doc for the rule).
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
        #: A batch was handed over (``on_ready``) and no worker took records since.
        self._handed = False
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

    def offer(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        """Append a chunk's records (offsets increasing); records below the next expected
        offset are re-deliveries and dropped. Returns an awaitable when the reader must wait
        (back-pressure, or checking the log start after a hole at the start of a
        subscription); the records are taken either way."""
        with self._lock:
            if self.error is not None or not records:
                return None
            if records[0].offset < self._next_offset:
                records = [r for r in records if r.offset >= self._next_offset]
                if not records:
                    return None
            start, self._subscription_start = self._subscription_start, None
        if start is not None and records[0].offset > start:
            return self._check_log_start(start, records)
        return self._append(records)

    async def _check_log_start(self, expected: int, records: Sequence[LogRecord]) -> None:
        # Never raise from here: the reader would drop the rest of the chunk.
        try:
            await check_log_start(self._probe, self.partition, expected)
        except ReadError as exc:
            self.fail(exc)
            return
        waiting = self._append(records)
        if waiting is not None:
            await waiting

    def _append(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        with self._lock:
            if self.error is not None:
                return None
            if records[0].offset < self._next_offset:
                records = [r for r in records if r.offset >= self._next_offset]
                if not records:
                    return None
            self._records.extend(records)
            last = records[-1].last_offset
            self._next_offset = last + 1
            self.highest_seen = last
            waiting = len(self._records)
            handed = self._handed
            ready_now = waiting >= self._batch_size and not handed
            if ready_now:
                self._handed = True
            if waiting >= self._capacity:
                self._space.clear()
        if ready_now:
            self._cancel_timer()
            self._on_ready()
        elif not handed and self._timer is None:
            # A handed-over batch needs no timer: the worker takes these next.
            self._timer = self._loop.call_later(self._batch_wait_s, self._timer_fired)
        if not self._space.is_set():
            return self._wait_for_space()
        return None

    def reader_idle(self) -> None:
        """The reader has nothing more buffered for this partition (the end of a socket read's
        chunks): hand the records waiting over now unless a batch is already handed over and
        not taken yet (the worker is queued or busy; its next take gets them all)."""
        with self._lock:
            hand = bool(self._records) and not self._handed and self.error is None
            if hand:
                self._handed = True
        if hand:
            self._cancel_timer()
            self._on_ready()

    async def _wait_for_space(self) -> None:
        await self._space.wait()

    def fail(self, error: Exception) -> None:
        """Stop the partition with ``error`` (called by the reader)."""
        with self._lock:
            self.error = error
        self._on_ready()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        with self._lock:
            self._handed = True
        self._on_ready()

    # -- worker side ----------------------------------------------------------------------------

    def take(self, limit: int) -> list[LogRecord]:
        """Remove and return up to ``limit`` records in offset order (thread-safe)."""
        with self._lock:
            self._handed = False
            records = self._records
            if len(records) <= limit:
                batch = list(records)
                records.clear()
            else:
                batch = [records.popleft() for _ in range(limit)]
            has_space = len(records) < self._capacity
        if has_space:
            self._loop.call_soon_threadsafe(self._space.set)
        return batch

    def has_records(self) -> bool:
        """True when records are waiting."""
        with self._lock:
            return bool(self._records)
