"""The live reader: partition streams subscribed on behalf of their owners, with reconnection.

One ``StreamReader`` per process runs an asyncio loop in its own thread. Partition owners ask it
to subscribe their stream from an offset and hand it a ``RecordSink`` (their feed); it delivers
``LogRecord`` values in log order (``processor.reading.chunks``) over one connection of
``processor.reading.client``. It supervises that connection and, after any connection loss,
resubscribes every partition from the next offset its sink still needs, so nothing is skipped
and nothing is read twice into a sink.

Callbacks never raise into the connection's read loop: failures are handed to the sink
(``RecordSink.fail``) where the owner sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Protocol

from processor import tuning
from processor.errors import loggable
from processor.reading.chunks import ChunkEntry, chunk_records, chunk_span
from processor.reading.client import MAX_SUBSCRIPTIONS, StreamConnection, stream_connection
from processor.reading.log_record import LogRecord
from processor.reading.probes import read_first_offset
from processor.settings import Settings, stream_name

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Where a subscription's records go (implemented by the partition owner's feed)."""

    @property
    def next_offset(self) -> int:
        """The offset the sink needs next; a resubscription starts here."""
        ...

    def subscribed(self, start: int) -> None:
        """A subscription from offset ``start`` is about to begin (called on the reader's loop)."""
        ...

    def offer(self, record: LogRecord) -> Awaitable[None] | None:
        """Take one record (called on the reader's loop); an unreadable entry is a record with
        an ``error`` (it gets dead-lettered). May return an awaitable to apply back-pressure:
        the reader waits for it before taking the next record."""
        ...

    def fail(self, error: Exception) -> None:
        """The subscription cannot go on; the owner must stop."""
        ...


class StreamReader:
    """Subscribes partition streams on behalf of owners, on one asyncio loop in a daemon thread.

    Args:
        settings: broker endpoint (``amqp_url`` host, credentials, vhost) and ``stream_port``.
        initial_credit: chunks in flight per subscription (bigger = faster catch-up).
        name: connection name shown in the broker's management UI.
    """

    def __init__(
        self, settings: Settings, initial_credit: int = tuning.LIVE_CREDIT, name: str = ""
    ) -> None:
        self._settings = settings
        self._credit = initial_credit
        self._name = name or "friendship-stream"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="stream-reader", daemon=True)
        self._wanted: dict[int, RecordSink] = {}
        self._subscribed: dict[int, RecordSink] = {}
        self._subscription_ids: dict[int, int] = {}
        self._connection: StreamConnection | None = None
        self._next_subscription_id = 0
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._connection_lost = asyncio.Event()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._received: dict[int, int] = {}
        self.reconnects = 0

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and the connection supervisor."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_supervisor(), self._loop).result(
            timeout=tuning.READER_START_TIMEOUT_S
        )

    def stop(self, timeout_s: float = tuning.READER_STOP_TIMEOUT_S) -> None:
        """Unsubscribe everything, close the connection and end the loop thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(TimeoutError):
            future.result(timeout=timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=timeout_s)

    async def first_offset(self, partition: int) -> int | None:
        """``probes.read_first_offset`` on this reader's broker (a coroutine for its loop)."""
        return await read_first_offset(self._settings, partition)

    def received_tail(self, partition: int) -> int | None:
        """The last offset of the chunks received for ``partition`` so far (any thread); None
        before the first. It trails the stream's tail while the partition's feed is full."""
        return self._received.get(partition)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The reader's event loop (sinks schedule timers on it)."""
        return self._loop

    def subscribe(self, partition: int, sink: RecordSink) -> None:
        """Deliver partition records to ``sink`` from ``sink.next_offset`` on (thread-safe)."""
        self._loop.call_soon_threadsafe(self._want, partition, sink)

    def unsubscribe(self, partition: int) -> Future[None]:
        """Stop delivering the partition's records (thread-safe); the future ends when done.

        Takes effect in call order with ``subscribe``: a ``subscribe`` of the same partition made
        right after (a retake) wins, however busy the loop is.
        """
        self._loop.call_soon_threadsafe(self._wanted.pop, partition, None)
        return asyncio.run_coroutine_threadsafe(self._unwant(partition), self._loop)

    # -- loop side ------------------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start_supervisor(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise())

    def _want(self, partition: int, sink: RecordSink) -> None:
        self._wanted[partition] = sink
        self._changed.set()

    async def _unwant(self, partition: int) -> None:
        # ``unsubscribe`` already dropped the wish; a coroutine only starts on the loop's next
        # round, after a ``subscribe`` made meanwhile, whose newer sink ``_reconcile`` installs.
        if partition in self._wanted:
            return
        if partition in self._subscribed and self._connection is not None:
            await self._unsubscribe_stream(partition)

    async def _shutdown(self) -> None:
        self._stopping = True
        self._wanted.clear()
        self._changed.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._close_connection()

    async def _supervise(self) -> None:
        """Keep a connection open and the subscriptions equal to the wanted set."""
        attempt = 0
        while not self._stopping:
            try:
                if self._connection is None:
                    await self._open_connection()
                # Clear before reconciling: a change made meanwhile must wake the next round.
                self._changed.clear()
                await self._reconcile()
                # Only a reconcile that went through (subscriptions accepted) proves the
                # connection, so only then does the back-off start over.
                attempt = 0
                waiters = [
                    asyncio.create_task(self._changed.wait()),
                    asyncio.create_task(self._connection_lost.wait()),
                ]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if self._connection_lost.is_set():
                    raise ConnectionError("stream connection lost")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect and resubscribe
                attempt += 1
                self.reconnects += 1
                ceiling = min(tuning.RECONNECT_MAX_S, tuning.RECONNECT_MIN_S * 2**attempt)
                delay = random.uniform(tuning.RECONNECT_MIN_S, ceiling)  # noqa: S311
                log.warning(
                    "stream connection to %s:%d failed (%s: %s); reconnect %d in %.2f s, "
                    "resuming every partition from its next offset",
                    self._settings.amqp.host,
                    self._settings.stream_port,
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                )
                await self._close_connection()
                await asyncio.sleep(delay)

    async def _open_connection(self) -> None:
        self._connection_lost.clear()
        self._subscribed.clear()
        self._subscription_ids.clear()
        connection = stream_connection(self._settings, self._name)
        try:
            await connection.open()
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection = connection
        failed = connection.failed
        assert failed is not None
        failed.add_done_callback(self._on_failed)

    def _on_failed(self, failed: asyncio.Future[None]) -> None:
        if self._stopping or failed.cancelled():
            return
        log.warning("stream connection lost: %s", failed.exception())
        self._connection_lost.set()

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._subscribed.clear()
        self._subscription_ids.clear()
        for partition in list(self._pumps):
            self._stop_pump(partition)
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), tuning.STREAM_CLOSE_TIMEOUT_S)

    def _free_subscription_id(self) -> int:
        """A subscription id not in use, cycling so an id is not reused right away."""
        used = set(self._subscription_ids.values())
        for _ in range(MAX_SUBSCRIPTIONS):
            candidate = self._next_subscription_id
            self._next_subscription_id = (candidate + 1) % MAX_SUBSCRIPTIONS
            if candidate not in used:
                return candidate
        raise ConnectionError(f"more than {MAX_SUBSCRIPTIONS} subscriptions on one connection")

    async def _reconcile(self) -> None:
        for partition in [p for p in self._subscribed if p not in self._wanted]:
            await self._unsubscribe_stream(partition)
        for partition, sink in list(self._wanted.items()):
            if self._subscribed.get(partition) is not sink:
                if partition in self._subscribed:
                    await self._unsubscribe_stream(partition)
                await self._subscribe_stream(partition, sink)

    async def _subscribe_stream(self, partition: int, sink: RecordSink) -> None:
        connection = self._connection
        if connection is None:
            raise ConnectionError("no stream connection")
        start = sink.next_offset
        sink.subscribed(start)
        subscription_id = self._free_subscription_id()
        # The connection's read loop only queues chunks: a partition whose feed is full must not
        # hold up the other partitions or the answers to requests on the same connection. Its
        # pump task waits instead, and grants credit only for chunks it handed on, so a slow
        # partition stops its own stream at the broker (at most ``initial_credit`` chunks queued).
        chunks: asyncio.Queue[tuple[int, list[ChunkEntry]]] = asyncio.Queue()

        def on_chunk(first_offset: int, entries: list[ChunkEntry]) -> None:
            last = first_offset + chunk_span(entries) - 1
            if last > self._received.get(partition, -1):
                self._received[partition] = last
            chunks.put_nowait((first_offset, entries))

        await connection.subscribe(
            subscription_id,
            stream_name(partition),
            start,
            self._credit,
            on_chunk,
            auto_credit=False,
        )
        self._stop_pump(partition)
        self._pumps[partition] = asyncio.create_task(
            self._pump(partition, subscription_id, connection, chunks, sink)
        )
        self._subscribed[partition] = sink
        self._subscription_ids[partition] = subscription_id
        log.debug("subscribed %s from offset %d", stream_name(partition), start)

    async def _pump(
        self,
        partition: int,
        subscription_id: int,
        connection: StreamConnection,
        chunks: asyncio.Queue[tuple[int, list[ChunkEntry]]],
        sink: RecordSink,
    ) -> None:
        """Hand queued chunks to ``sink`` in order, granting credit as they are taken."""
        handler = _chunk_handler(sink)
        step = max(1, self._credit // 2)
        taken = 0
        try:
            while True:
                first_offset, entries = await chunks.get()
                waiting = handler(first_offset, entries)
                if waiting is not None:
                    await waiting
                taken += 1
                if taken >= step:
                    connection.grant(subscription_id, taken)
                    taken = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection broke under the pump
            log.warning(
                "reading %s stopped (%s); reconnecting", stream_name(partition), loggable(exc)
            )
            self._connection_lost.set()

    def _stop_pump(self, partition: int) -> None:
        pump = self._pumps.pop(partition, None)
        if pump is not None:
            pump.cancel()

    async def _unsubscribe_stream(self, partition: int) -> None:
        self._stop_pump(partition)
        self._subscribed.pop(partition, None)
        subscription_id = self._subscription_ids.pop(partition, None)
        connection = self._connection
        if connection is None or subscription_id is None:
            return
        try:
            # Answered after every chunk sent before it: no stale chunk reaches a later
            # subscription that reuses the id.
            await connection.unsubscribe(subscription_id)
        except Exception as exc:  # noqa: BLE001 - a failed unsubscribe means a broken connection
            log.warning(
                "unsubscribing %s failed (%s); reconnecting", stream_name(partition), loggable(exc)
            )
            self._connection_lost.set()


def _chunk_handler(
    sink: RecordSink,
) -> Callable[[int, list[ChunkEntry]], Awaitable[None] | None]:
    """Hand a chunk's records to ``sink`` in offset order, waiting where it pushes back."""

    async def rest(waiting: Awaitable[None], records: Iterator[LogRecord]) -> None:
        await waiting
        for record in records:
            more = sink.offer(record)
            if more is not None:
                await more

    def on_chunk(first_offset: int, entries: list[ChunkEntry]) -> Awaitable[None] | None:
        records = chunk_records(first_offset, entries)
        for record in records:
            waiting = sink.offer(record)
            if waiting is not None:
                return rest(waiting, records)
        return None

    return on_chunk
