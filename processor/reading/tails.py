"""The partition streams' tails, read in the background on one long-lived stream connection.

``GET /v1/stats`` and ``GET /metrics`` of the API, and a processor's lag gauges, need the last
offset of each stream. Asking the broker per request costs a connection and a wait for the last
chunks (``probes.read_tail_offsets``: 0.25 s at least, more for an empty stream). A
``TailCache`` instead keeps its stream connections open in a daemon thread (``client.Nodes``:
the first-contact one, plus one per other node hosting a wanted stream on a cluster) and, every
``tuning.TAILS_REFRESH_S`` seconds, asks the streams' metadata, subscribes each wanted stream
from ``LAST`` on a node that hosts it, takes the last offset of the chunks it gets, and
unsubscribes. Readers take the last result and its age
(``Tails``) without waiting; nothing opens a connection per request.

A stream that sends nothing in a round is empty or slow: it keeps the offset of the previous
round (-1 until one was seen). The first round waits four times as long for silent streams, as
``read_tail_offsets`` does, so a slow answer is not mistaken for an empty log. When the broker
cannot be reached the last tails stay, their age grows, and the cache reconnects with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from processor import tuning
from processor.errors import loggable
from processor.reading.chunks import records_span
from processor.reading.client import MAX_SUBSCRIPTIONS, Nodes, OffsetSpec, StreamConnection
from processor.reading.log_record import LogRecord
from processor.settings import Settings, stream_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tails:
    """The tails as last read.

    Attributes:
        offsets: ``{partition: last offset}`` (-1 = empty stream) of the partitions read.
        read_at: when the last round that succeeded ended (UTC); None before the first.
        read_monotonic: the same instant on ``time.monotonic()``; None before the first.
        error: why the last round failed; None when it succeeded.
    """

    offsets: dict[int, int] = field(default_factory=dict)
    read_at: datetime | None = None
    read_monotonic: float | None = None
    error: str | None = None

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the last successful round (None before the first)."""
        if self.read_monotonic is None:
            return None
        return max(0.0, (time.monotonic() if now is None else now) - self.read_monotonic)


class TailCache:
    """Reads the tails of some partition streams every ``refresh_s`` seconds, in a daemon
    thread with its own event loop and one stream connection.

    Args:
        settings: broker addresses, credentials, TLS, deadlines and back-off, and the
            partition count.
        partitions: which partitions to read, asked before every round (default: all); a
            processor passes the partitions it owns.
        refresh_s: seconds between the end of one round and the start of the next.
        name: the connection name shown in the broker's management UI.
    """

    def __init__(
        self,
        settings: Settings,
        partitions: Callable[[], Iterable[int]] | None = None,
        *,
        refresh_s: float = tuning.TAILS_REFRESH_S,
        name: str = "friendship-stream tails",
    ) -> None:
        self._settings = settings
        self._partitions = partitions or (lambda: range(settings.partitions))
        self._refresh_s = refresh_s
        self._name = name
        self._lock = threading.Lock()
        self._tails = Tails()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._started_at: float | None = None
        self.connections_opened = 0
        self.rounds = 0

    # -- any thread ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (returns at once; the first round follows)."""
        if self._thread is not None:
            return
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="stream-tails", daemon=True)
        self._thread.start()
        self._started.wait(tuning.READER_START_TIMEOUT_S)

    def stop(self, timeout_s: float = tuning.TAILS_STOP_TIMEOUT_S) -> None:
        """Close the connection and end the thread (waits at most ``timeout_s`` seconds; the
        thread is a daemon, so it never keeps the process alive)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout_s)

    def snapshot(self) -> Tails:
        """The tails as last read, with their time (never waits for the broker)."""
        with self._lock:
            return self._tails

    def tail(self, partition: int) -> int | None:
        """The last offset read for ``partition`` (-1 = empty), None when never read."""
        return self.snapshot().offsets.get(partition)

    def wait_first(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the first successful round; True once done."""
        return self._first.wait(timeout_s)

    def running_for_s(self) -> float:
        """Seconds since ``start`` (0 before it)."""
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at

    # -- the cache's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        nodes: Nodes | None = None
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    if nodes is None:
                        nodes = Nodes(self._settings, self._name)
                        self.connections_opened += 1
                    await self._round(nodes)
                    if failures:
                        log.info("reading the stream tails works again")
                    failures = 0
                    delay = self._refresh_s
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure: reconnect and try again
                    failures += 1
                    self._failed(exc, first_failure=failures == 1)
                    if nodes is not None:
                        await nodes.close()
                    nodes = None
                    low = self._settings.reconnect_backoff_s
                    ceiling = min(self._settings.reconnect_backoff_max_s, low * 2**failures)
                    delay = max(self._refresh_s, random.uniform(low, ceiling))  # noqa: S311
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            if nodes is not None:
                await nodes.close()

    def _failed(self, exc: Exception, *, first_failure: bool) -> None:
        reason = loggable(exc)
        with self._lock:
            previous = self._tails
            self._tails = Tails(
                previous.offsets, previous.read_at, previous.read_monotonic, error=reason
            )
        level = logging.WARNING if first_failure else logging.DEBUG
        log.log(level, "reading the stream tails failed (%s); keeping the last ones", reason)

    async def _round(self, nodes: Nodes) -> None:
        """Read the last offset of every wanted stream once and publish the result."""
        wanted = sorted(set(self._partitions()))
        previous = self.snapshot().offsets
        seen: dict[int, int] = {}
        first_round = not self._first.is_set()
        wait_s = tuning.TAIL_PROBE_WAIT_S * (4 if first_round else 1)
        if wanted and self._settings.stream_follow_advertised:
            await nodes.locate([stream_name(p) for p in wanted])  # leaders and replicas move
        for start in range(0, len(wanted), MAX_SUBSCRIPTIONS):
            group = wanted[start : start + MAX_SUBSCRIPTIONS]
            await self._read_group(nodes, group, seen, wait_s)
        for connection in nodes.connections:
            if connection.failed is not None and connection.failed.done():
                raise ConnectionError(f"stream connection lost: {connection.failed.exception()}")
        offsets = {p: seen.get(p, previous.get(p, -1)) for p in wanted}
        with self._lock:
            self._tails = Tails(offsets, datetime.now(UTC), time.monotonic())
        self.rounds += 1
        self._first.set()

    async def _read_group(
        self, nodes: Nodes, group: list[int], seen: dict[int, int], wait_s: float
    ) -> None:
        arrived = asyncio.Event()
        answered: set[int] = set()
        made: list[tuple[StreamConnection, int]] = []
        ids: dict[int, int] = {}  # per connection (by id()): subscriptions made

        try:
            for partition in group:

                def on_chunk(first: int, records: list[LogRecord], p: int = partition) -> None:
                    last = first + records_span(first, records) - 1
                    seen[p] = max(seen.get(p, -1), last)
                    answered.add(p)
                    if len(answered) == len(group):
                        arrived.set()

                connection = await nodes.for_stream(stream_name(partition))
                index = ids.get(id(connection), 0)
                ids[id(connection)] = index + 1
                await connection.subscribe(
                    index,
                    stream_name(partition),
                    0,
                    tuning.PROBE_CREDIT,
                    on_chunk,
                    start=OffsetSpec.LAST,
                )
                made.append((connection, index))
            # Every stream that is not empty answers at once; an empty one sends nothing.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), wait_s)
        finally:
            for connection, index in made:
                await connection.unsubscribe(index)
