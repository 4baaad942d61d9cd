"""The live reader: partition streams subscribed on behalf of their owners, on the nodes that
host them, with failover.

One ``StreamReader`` per process runs an asyncio loop in its own thread. Partition owners ask it
to subscribe their stream from an offset and hand it a ``RecordSink`` (their feed); it delivers
``LogRecord`` values in log order (``processor.reading.chunks``) over connections of
``processor.reading.client``, a chunk's records at a time. When a partition's queued chunks
are all handed on (the end of what the socket brought), its sink hears that the reader is idle
(``RecordSink.reader_idle``): the feed's adaptive batching hands a batch over then.

Cluster awareness: the reader asks the broker's ``Metadata`` where each partition stream lives
and reads it from a node that hosts it: a replica when the stream has any (partitions spread
over the replicas, the least loaded node first), else the leader. It keeps one connection per
node in use (subscription ids are per connection). With ``STREAM_ADVERTISED_ADDRESSES=ignore``
every partition is read on one first-contact connection instead.

Failover: when a node's connection fails (closed, refused, or silent for the read deadline), only
that node's partitions move: after a jittered back-off (``RECONNECT_BACKOFF_S`` doubling up to
``RECONNECT_BACKOFF_MAX_S``, full jitter; the metadata right after a node loss still names it)
the reader asks fresh metadata and resubscribes each from the next offset its sink still needs,
on a node that hosts it. A ``MetadataUpdate`` for one stream moves that stream only. A problem
of one partition (for example "stream not available" at subscribe) is retried for that partition
with back-off and never stops the others; a stream that does not exist is reported to its sink
(``RecordSink.fail``). Nothing is skipped and nothing is read twice into a sink: a
resubscription starts at ``sink.next_offset`` and the chunks still queued for the old one are
dropped.

Callbacks never raise into a connection's read loop: failures are handed to the sink
(``RecordSink.fail``) where the owner sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import Future
from typing import Protocol

from processor import tuning
from processor.errors import loggable
from processor.reading.chunks import records_span
from processor.reading.client import (
    MAX_SUBSCRIPTIONS,
    StreamConnection,
    StreamMetadata,
    candidates,
    describe_code,
    open_connection,
    open_first_contact,
)
from processor.reading.errors import (
    StreamDoesNotExist,
    StreamNotAvailable,
    StreamProtocolError,
)
from processor.reading.log_record import LogRecord
from processor.reading.probes import read_first_offset
from processor.settings import Address, Settings, stream_name

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

    def offer(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        """Take one chunk's records, offsets increasing (called on the reader's loop); an
        unreadable entry is a record with an ``error`` (it gets dead-lettered). May return an
        awaitable to apply back-pressure: the reader waits for it before the next chunk."""
        ...

    def reader_idle(self) -> None:
        """Every chunk received so far was offered: nothing more is buffered for the
        partition (called on the reader's loop)."""
        ...

    def fail(self, error: Exception) -> None:
        """The subscription cannot go on; the owner must stop."""
        ...


class _Node:
    """One broker node in use: its connection and the partitions read on it."""

    def __init__(self, address: Address, connection: StreamConnection) -> None:
        self.address = address
        self.connection = connection
        self.ids: dict[int, int] = {}  # partition -> subscription id
        self._next_id = 0

    @property
    def label(self) -> str:
        """``host:port`` connected to (a first-contact address, or the advertised one)."""
        host, port = self.connection.address
        return f"{host}:{port}"

    def free_id(self) -> int:
        """A subscription id not in use, cycling so an id is not reused right away."""
        used = set(self.ids.values())
        for _ in range(MAX_SUBSCRIPTIONS):
            candidate = self._next_id
            self._next_id = (candidate + 1) % MAX_SUBSCRIPTIONS
            if candidate not in used:
                return candidate
        raise ConnectionError(f"more than {MAX_SUBSCRIPTIONS} subscriptions on {self.label}")


class StreamReader:
    """Subscribes partition streams on behalf of owners, on one asyncio loop in a daemon thread.

    Args:
        settings: broker addresses (``STREAM_ADDRESSES``), credentials, vhost, TLS, SASL
            mechanism, heartbeat, read deadline and reconnect back-off.
        initial_credit: chunks in flight per subscription (bigger = faster catch-up).
        name: connection name shown in the broker's management UI.

    Attributes:
        reconnects: partitions moved or resubscribed after a failure (node loss, refusal, a
            ``MetadataUpdate``), counted per failure event.
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
        self._placed: dict[int, _Node] = {}
        self._nodes: dict[Address, _Node] = {}
        self._metadata: dict[int, StreamMetadata] = {}
        self._stale: set[int] = set()
        self._attempts: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}
        self._learnt: list[Address] = []
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._received: dict[int, int] = {}
        self.reconnects = 0

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and the supervisor."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_supervisor(), self._loop).result(
            timeout=tuning.READER_START_TIMEOUT_S
        )

    def stop(self, timeout_s: float = tuning.READER_STOP_TIMEOUT_S) -> None:
        """Unsubscribe everything, close the connections and end the loop thread."""
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

    def node_of(self, partition: int) -> Address | None:
        """The node ``(host, port)`` the partition is read from now (None: not subscribed)."""
        node = self._placed.get(partition)
        return node.address if node is not None else None

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
        self._attempts.pop(partition, None)
        self._retry_at.pop(partition, None)
        if partition in self._subscribed:
            await self._unsubscribe_stream(partition)

    async def _shutdown(self) -> None:
        self._stopping = True
        self._wanted.clear()
        self._changed.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for partition in list(self._pumps):
            self._stop_pump(partition)
        for node in list(self._nodes.values()):
            await self._close_node(node)

    async def _supervise(self) -> None:
        """Keep the subscriptions equal to the wanted set, on live nodes that host them."""
        while not self._stopping:
            # Clear before reconciling: a change made meanwhile must wake the next round.
            self._changed.clear()
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad round must not end reading
                log.warning("stream reader round failed (%s); trying again", loggable(exc))
                await asyncio.sleep(self._settings.reconnect_backoff_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._next_due_in())

    def _next_due_in(self) -> float | None:
        """Seconds until the earliest partition retry (None: nothing waits for one)."""
        waiting = [
            at
            for p, at in self._retry_at.items()
            if p in self._wanted and p not in self._subscribed
        ]
        return max(0.0, min(waiting) - time.monotonic()) if waiting else None

    async def _reconcile(self) -> None:
        for node in list(self._nodes.values()):
            if not node.connection.healthy:
                await self._node_lost(node)
        for partition in [
            p for p, sink in self._subscribed.items() if self._wanted.get(p) is not sink
        ]:
            await self._unsubscribe_stream(partition)
        now = time.monotonic()
        due = [
            p
            for p in self._wanted
            if p not in self._subscribed and self._retry_at.get(p, 0.0) <= now
        ]
        if not due:
            return
        follow = self._settings.stream_follow_advertised
        unknown = [p for p in due if p in self._stale or p not in self._metadata]
        if follow and unknown:
            try:
                await self._refresh_metadata(unknown)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no node answered: back off, try again
                self._connection_failed(self._label(None), exc, due)
                return
        # A node that cannot be reached (or fails) in this round is not tried again in it: its
        # partitions back off together, with one line per node.
        unreachable: dict[Address | None, Exception] = {}
        unreached: dict[Address | None, list[int]] = {}
        for partition in due:
            sink = self._wanted.get(partition)
            if sink is not None and partition not in self._subscribed:
                placed, where = await self._place(
                    partition, sink, follow=follow, unreachable=unreachable
                )
                if not placed:
                    unreached.setdefault(where, []).append(partition)
        for address, partitions in unreached.items():
            self._stale.update(partitions)
            self._connection_failed(self._label(address), unreachable[address], partitions)

    async def _refresh_metadata(self, partitions: list[int]) -> None:
        streams = [stream_name(p) for p in partitions]
        answer = None
        for node in list(self._nodes.values()):
            if node.connection.healthy:
                with contextlib.suppress(StreamProtocolError, OSError):
                    answer = await node.connection.metadata(streams)
                    break
        if answer is None:
            # A first-contact connection, kept as the node it reached.
            answer = await (await self._node(None)).connection.metadata(streams)
        if answer.brokers:
            self._learnt = [broker.address for broker in answer.brokers]
        for partition in partitions:
            found = answer.streams.get(stream_name(partition))
            if found is not None:
                self._metadata[partition] = found
                self._stale.discard(partition)

    def _label(self, address: Address | None) -> str:
        """``host:port``; for None, the first-contact addresses (``h:p,h:p``)."""
        if address is None:
            return ",".join(f"{h}:{p}" for h, p in self._settings.stream_addresses)
        return f"{address[0]}:{address[1]}"

    def _load(self) -> dict[Address, int]:
        return {address: len(node.ids) for address, node in self._nodes.items()}

    def _addresses(self, partition: int, sink: RecordSink, follow: bool) -> list[Address | None]:
        """Where ``partition`` may be read, best first ([None]: the first-contact address); empty
        when its metadata says it cannot be read now (handled here: backed off or gone)."""
        if not follow:
            return [None]
        metadata = self._metadata[partition]
        problem = metadata.error()
        if isinstance(problem, StreamDoesNotExist):
            self._gone(partition, sink, problem)
            return []
        if problem is not None:
            self._stale.add(partition)
            self._partition_failed(partition, "the metadata", problem)
            return []
        return list(candidates(metadata, self._load()))

    async def _place(
        self,
        partition: int,
        sink: RecordSink,
        *,
        follow: bool,
        unreachable: dict[Address | None, Exception],
    ) -> tuple[bool, Address | None]:
        """Subscribe ``partition`` on the best node hosting it that answers.

        Returns ``(True, None)`` when it is subscribed or handled (backed off for a refusal of
        its own, or its sink told that the stream does not exist); else ``(False, node)``: the
        last node that could not be reached (in ``unreachable``), whose back-off it shares.
        """
        addresses = self._addresses(partition, sink, follow)
        refused: tuple[str, Exception] | None = None
        last: Address | None = None
        for address in addresses:
            if address not in unreachable:
                outcome = await self._try_node(partition, sink, address, unreachable)
                if outcome is None:
                    return True, None
                if isinstance(outcome, tuple):
                    refused = outcome
                    continue
            last = address
        if refused is not None:  # a node hosting it refused: retry this partition alone
            self._stale.add(partition)
            self._partition_failed(partition, *refused)
            return True, None
        # No address: handled by ``_addresses``. Else every node hosting it was unreachable.
        return not addresses, last

    async def _try_node(
        self,
        partition: int,
        sink: RecordSink,
        address: Address | None,
        unreachable: dict[Address | None, Exception],
    ) -> tuple[str, Exception] | bool | None:
        """One attempt on one node: None = subscribed or handled; ``(node, error)`` = refused
        for this stream only; False = the node is unreachable (recorded in ``unreachable``)."""
        try:
            node = await self._node(address)
        except (OSError, StreamProtocolError) as exc:
            unreachable[address] = exc
            return False
        try:
            await self._subscribe_stream(partition, sink, node)
        except asyncio.CancelledError:
            raise
        except StreamDoesNotExist as exc:
            self._gone(partition, sink, exc)
            return None
        except (OSError, StreamProtocolError) as exc:
            if node.connection.healthy:  # refused for this stream only (not available...)
                return (node.label, exc)
            unreachable[address] = exc  # the node failed under the request
            return False
        self._attempts.pop(partition, None)
        self._retry_at.pop(partition, None)
        return None

    def _gone(self, partition: int, sink: RecordSink, error: Exception) -> None:
        """The stream does not exist: the owner is told and the partition no longer wanted."""
        log.warning("%s cannot be read (%s); its owner stops", stream_name(partition), error)
        self._wanted.pop(partition, None)
        self._attempts.pop(partition, None)
        self._retry_at.pop(partition, None)
        sink.fail(error)

    def _back_off(self, partitions: list[int]) -> tuple[int, float]:
        """Schedule ``partitions`` for one more attempt after a jittered delay (shared by the
        group); returns ``(attempt, delay in seconds)``."""
        attempt = 1 + max((self._attempts.get(p, 0) for p in partitions), default=0)
        low = self._settings.reconnect_backoff_s
        ceiling = min(self._settings.reconnect_backoff_max_s, low * 2**attempt)
        delay = random.uniform(low, ceiling)  # noqa: S311 - jitter, not secrecy
        at = time.monotonic() + delay
        for partition in partitions:
            self._attempts[partition] = attempt
            self._retry_at[partition] = at
        return attempt, delay

    def _connection_failed(self, where: str, error: Exception, partitions: list[int]) -> None:
        self.reconnects += 1
        attempt, delay = self._back_off(partitions)
        log.warning(
            "stream connection to %s failed (%s: %s); reconnect %d in %.2f s, "
            "resuming every partition from its next offset (%d partitions)",
            where,
            type(error).__name__,
            error,
            attempt,
            delay,
            len(partitions),
        )

    def _partition_failed(self, partition: int, where: str, error: Exception) -> None:
        self.reconnects += 1
        attempt, delay = self._back_off([partition])
        log.warning(
            "reading %s from %s failed (%s: %s); retry %d in %.2f s from its next offset; "
            "the other partitions go on",
            stream_name(partition),
            where,
            type(error).__name__,
            error,
            attempt,
            delay,
        )

    async def _node(self, address: Address | None) -> _Node:
        """The node at ``address`` (None: the first-contact address), connected if needed."""
        if address is not None:
            node = self._nodes.get(address)
            if node is not None and node.connection.healthy:
                return node
            connection = await open_connection(self._settings, self._name, address)
        else:
            for node in self._nodes.values():
                if node.connection.healthy:
                    return node
            connection = await open_first_contact(self._settings, self._name, self._learnt)
        node = _Node(connection.advertised or connection.address, connection)
        old = self._nodes.get(node.address)
        if old is not None:
            await self._node_lost(old)
        self._nodes[node.address] = node
        connection.on_metadata_update = lambda stream, code: self._metadata_update(
            node, stream, code
        )
        failed = connection.failed
        assert failed is not None
        failed.add_done_callback(self._on_failed)
        return node

    def _on_failed(self, failed: asyncio.Future[None]) -> None:
        if self._stopping or failed.cancelled():
            return
        self._changed.set()

    async def _node_lost(self, node: _Node) -> None:
        """The node's connection failed: its partitions move (after a back-off)."""
        if self._nodes.get(node.address) is node:
            del self._nodes[node.address]
        partitions = list(node.ids)
        for partition in partitions:
            self._drop_local(partition)
        failed = node.connection.failed
        error: Exception = ConnectionError("connection closed")
        if failed is not None and failed.done() and not failed.cancelled():
            cause = failed.exception()
            if isinstance(cause, Exception):
                error = cause
        await self._close_node(node)
        wanted = [p for p in partitions if p in self._wanted]
        self._stale.update(wanted)
        if wanted:
            self._connection_failed(node.label, error, wanted)
        else:
            log.info("stream connection to %s ended (%s)", node.label, loggable(error))

    async def _close_node(self, node: _Node) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.connection.close(), tuning.STREAM_CLOSE_TIMEOUT_S)

    def _metadata_update(self, node: _Node, stream: str, code: int) -> None:
        """The broker dropped ``node``'s subscription of ``stream``: move that stream only."""
        for partition in [p for p in node.ids if stream_name(p) == stream]:
            self._drop_local(partition)
            self._stale.add(partition)
            if partition in self._wanted:
                self._partition_failed(
                    partition,
                    node.label,
                    StreamNotAvailable(
                        f"the broker dropped the subscription (metadata update, "
                        f"{describe_code(code)}): its member moved, went away or was deleted",
                        code,
                    ),
                )
        self._changed.set()

    def _drop_local(self, partition: int) -> None:
        """Forget the partition's subscription here (the broker side is gone or going)."""
        self._stop_pump(partition)
        self._subscribed.pop(partition, None)
        node = self._placed.pop(partition, None)
        if node is not None:
            node.ids.pop(partition, None)

    async def _subscribe_stream(self, partition: int, sink: RecordSink, node: _Node) -> None:
        connection = node.connection
        start = sink.next_offset
        sink.subscribed(start)
        subscription_id = node.free_id()
        # The connection's read loop only queues chunks: a partition whose feed is full must not
        # hold up the other partitions or the answers to requests on the same connection. Its
        # pump task waits instead, and grants credit only for chunks it handed on, so a slow
        # partition stops its own stream at the broker (at most ``initial_credit`` chunks queued).
        chunks: asyncio.Queue[tuple[int, list[LogRecord]]] = asyncio.Queue()

        def on_chunk(first_offset: int, records: list[LogRecord]) -> None:
            last = first_offset + records_span(first_offset, records) - 1
            if last > self._received.get(partition, -1):
                self._received[partition] = last
            chunks.put_nowait((first_offset, records))

        node.ids[partition] = subscription_id
        try:
            await connection.subscribe(
                subscription_id,
                stream_name(partition),
                start,
                self._credit,
                on_chunk,
                auto_credit=False,
            )
        except BaseException:
            node.ids.pop(partition, None)
            raise
        self._stop_pump(partition)
        self._pumps[partition] = asyncio.create_task(
            self._pump(partition, subscription_id, connection, chunks, sink)
        )
        self._subscribed[partition] = sink
        self._placed[partition] = node
        log.debug("subscribed %s from offset %d on %s", stream_name(partition), start, node.label)

    async def _pump(
        self,
        partition: int,
        subscription_id: int,
        connection: StreamConnection,
        chunks: asyncio.Queue[tuple[int, list[LogRecord]]],
        sink: RecordSink,
    ) -> None:
        """Hand queued chunks to ``sink`` in order, granting credit as they are taken; tell it
        when the queue is empty (``RecordSink.reader_idle``)."""
        step = max(1, self._credit // 2)
        taken = 0
        try:
            while True:
                if chunks.empty():
                    sink.reader_idle()
                _, records = await chunks.get()
                waiting = sink.offer(records)
                if waiting is not None:
                    await waiting
                taken += 1
                if taken >= step:
                    connection.grant(subscription_id, taken)
                    taken = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the sink broke under the pump
            log.warning(
                "reading %s stopped (%s); resubscribing it", stream_name(partition), loggable(exc)
            )
            node = self._placed.get(partition)
            self._pumps.pop(partition, None)
            if node is not None and node.connection is connection:
                with contextlib.suppress(Exception):
                    await connection.unsubscribe(subscription_id)
                self._drop_local(partition)
                self._partition_failed(partition, node.label, exc)
                self._changed.set()

    def _stop_pump(self, partition: int) -> None:
        pump = self._pumps.pop(partition, None)
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()

    async def _unsubscribe_stream(self, partition: int) -> None:
        node = self._placed.get(partition)
        subscription_id = node.ids.get(partition) if node is not None else None
        self._drop_local(partition)
        if node is None or subscription_id is None or not node.connection.healthy:
            return
        try:
            # Answered after every chunk sent before it: no stale chunk reaches a later
            # subscription that reuses the id.
            await node.connection.unsubscribe(subscription_id)
        except Exception as exc:  # noqa: BLE001 - a failed unsubscribe means a broken connection
            log.warning(
                "unsubscribing %s on %s failed (%s); dropping that connection",
                stream_name(partition),
                node.label,
                loggable(exc),
            )
            node.connection.abort(exc)
            self._changed.set()
