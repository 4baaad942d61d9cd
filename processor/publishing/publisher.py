"""Publishing events to the ``events`` exchange with publisher confirms and ``mandatory``.

Throughput comes from many messages in flight on pika's asyncio connection: each publish
registers a future by delivery tag, and the broker's (possibly ``multiple``) acks resolve them.
A message the exchange could not route comes back as ``basic.return`` before its ack and fails
its future, so an unroutable event is an error, not a silent confirm (docs/contract.md §5).

A confirm belongs to its channel: when the connection or channel closes before the broker
confirmed an event, that event's future fails (it is never reported confirmed), and the node
counts as failed, so the next connection goes to the next node of ``AMQP_ADDRESSES``
(``processor.publishing.connection``). ``publish_events`` publishes the unconfirmed events again
there, a bounded number of times.

Publishing is at-least-once: a caller that retries after a ``PublishError`` may append an event
twice, which the processor applies once (same ``event_id``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.exceptions import AMQPError
from pika.frame import Method
from pika.spec import Basic, BasicProperties, Confirm

from processor import tuning
from processor.publishing.broker_errors import connection_failure_reason
from processor.publishing.connection import (
    CONNECTION_NAME_PREFIX,
    BrokerNodes,
    backoff_delay,
    describe,
    open_async_connection,
)
from processor.publishing.errors import BrokerUnreachable, PublisherClosed, PublishError
from processor.settings import EXCHANGE, Address, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One event to publish: its id (AMQP ``message_id``), routing key and JSON body bytes."""

    event_id: str
    user_id: str
    body: bytes


class AsyncPublisher:
    """A confirmed, mandatory publisher on one AMQP channel (use from one asyncio loop).

    It connects to the first node of ``nodes`` that accepts (``processor.publishing.connection``)
    and stays there. When that connection or channel closes before the broker confirmed what was
    published on it, every one of those events fails with a ``PublishError`` (never a confirm),
    the node is marked failed in ``nodes``, and the next ``publish`` reconnects, starting with
    the next node.

    Args:
        settings: the broker (``amqp_url``: credentials, vhost, TLS; ``amqp_addresses``).
        max_in_flight: most unconfirmed messages before ``publish`` waits for acks.
        nodes: the failover order to share with other publishers (one API, one file); a
            new ``BrokerNodes(settings.amqp_addresses)`` when None.
        reconnect: ``publish`` on a closed publisher connects again (True), or raises
            ``PublisherClosed`` (False: an owner such as the API's ``BrokerLink`` replaces it).
    """

    def __init__(
        self,
        settings: Settings,
        max_in_flight: int = tuning.PUBLISH_MAX_IN_FLIGHT,
        nodes: BrokerNodes | None = None,
        *,
        reconnect: bool = True,
    ) -> None:
        self._settings = settings
        self._reconnect = reconnect
        self._nodes = nodes if nodes is not None else BrokerNodes(settings.amqp_addresses)
        self._max_in_flight = max_in_flight
        self._connection: AsyncioConnection | None = None
        self._address: Address | None = None
        self._channel: Channel | None = None
        self._closing = False
        self._next_tag = 0
        self._pending: OrderedDict[int, tuple[OutgoingEvent, asyncio.Future[None]]] = OrderedDict()
        self._returned: dict[str, str] = {}
        self._space = asyncio.Event()
        self._closed_reason: str | None = None
        self._connecting = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        """True while the connection and channel are usable."""
        return (
            self._channel is not None
            and self._channel.is_open
            and self._connection is not None
            and self._connection.is_open
            and self._closed_reason is None
        )

    @property
    def address(self) -> str | None:
        """``host:port`` of the node this publisher is connected to (None before ``connect``)."""
        return None if self._address is None else describe(self._address)

    async def connect(self) -> None:
        """Open a connection to the first node that accepts, and a channel in confirm mode.

        Raises:
            BrokerUnreachable: no node accepted a connection (each node's reason).
            PublishError: the channel could not be opened in confirm mode.
            SettingsError: a broker TLS file cannot be used.
        """
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._closed_reason = None
        self._closing = False
        self._next_tag = 0
        self._channel = None

        def on_close(connection: object, reason: BaseException) -> None:
            if connection is not self._connection:
                return  # a connection this publisher no longer uses
            if not self._closing and self._address is not None:
                self._nodes.failed(self._address)
                log.warning(
                    "broker connection to %s lost (%s); the next publish fails over",
                    describe(self._address),
                    connection_failure_reason(reason),
                )
            self._fail_all(
                f"the connection to {self.address} closed before the broker confirmed "
                f"({connection_failure_reason(reason)})"
            )
            fail_ready(reason)

        def fail_ready(reason: BaseException) -> None:
            if not ready.done():
                ready.set_exception(
                    PublishError(
                        f"cannot open the broker channel on {self.address} "
                        f"({connection_failure_reason(reason)})",
                        0,
                    )
                )

        def on_confirm_mode(_frame: Method[Confirm.SelectOk]) -> None:
            if not ready.done():
                ready.set_result(None)

        def on_channel(channel: Channel) -> None:
            self._channel = channel
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_close_callback(lambda _channel, reason: fail_ready(reason))
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(self._on_confirm, callback=on_confirm_mode)

        connection, address = await open_async_connection(
            self._settings, self._nodes, on_close, name=f"{CONNECTION_NAME_PREFIX}-publisher"
        )
        self._connection, self._address = connection, address
        connection.channel(on_open_callback=on_channel)
        try:
            await ready
        except PublishError:
            await self.close()
            raise
        self._space.set()

    async def close(self) -> None:
        """Close the connection; events still unconfirmed fail (never count as confirmed)."""
        connection = self._connection
        self._closing = True
        if connection is not None and connection.is_open:
            closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_closed(_connection: object, _reason: BaseException) -> None:
                if not closed.done():
                    closed.set_result(None)

            connection.add_on_close_callback(on_closed)
            connection.close()
            try:
                await asyncio.wait_for(closed, timeout=tuning.PUBLISHER_CLOSE_TIMEOUT_S)
            finally:
                self._fail_all("the publisher was closed before the broker confirmed")
        self._fail_all("the publisher was closed before the broker confirmed")
        self._connection = None
        self._channel = None

    async def fail_over(self) -> None:
        """Close the connection and count its node as failed: the next ``publish`` connects to
        the next node first (after a nack or a lost confirm). Unconfirmed events fail."""
        if self._address is not None:
            self._nodes.failed(self._address)
        await self.close()

    async def publish(self, events: Iterable[OutgoingEvent]) -> int:
        """Publish events and wait until the broker confirmed every one of them.

        Returns:
            The number of events confirmed.

        Raises:
            BrokerUnreachable: no node accepted a connection; nothing was published.
            PublisherClosed: the publisher is closed and may not reconnect; nothing was sent.
            PublishError: at least one event was nacked, unroutable or lost with the connection
                (its confirm never came); ``failed`` says how many and ``unconfirmed`` lists
                them. Others may have been published: publishing them again is safe.
        """
        if not self.is_open and not self._reconnect:
            raise PublisherClosed(
                "the broker connection closed before these events were sent "
                f"({self._closed_reason})",
                0,
            )
        if not self.is_open:
            async with self._connecting:  # concurrent callers open one connection, not several
                if not self.is_open:
                    await self.connect()
        sent: list[tuple[OutgoingEvent, asyncio.Future[None]]] = []
        for event in events:
            while len(self._pending) >= self._max_in_flight:
                self._space.clear()
                await self._space.wait()
            sent.append((event, self._publish_one(event)))
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed = [
            (event, result)
            for (event, _), result in zip(sent, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failed:
            raise PublishError(
                f"{len(failed)} of {len(sent)} events not confirmed: {failed[0][1]}",
                len(failed),
                [event for event, _ in failed],
            )
        return len(sent)

    def _publish_one(self, event: OutgoingEvent) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        channel = self._channel
        if channel is None or not channel.is_open or self._closed_reason is not None:
            future.set_exception(PublishError(f"channel closed: {self._closed_reason}", 1))
            return future
        self._next_tag += 1
        self._pending[self._next_tag] = (event, future)
        try:
            channel.basic_publish(
                EXCHANGE,
                event.user_id,
                event.body,
                properties=BasicProperties(
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=event.event_id,
                ),
                mandatory=True,
            )
        except AMQPError as exc:  # the connection is closing under us: no confirm will come
            self._pending.pop(self._next_tag, None)
            future.set_exception(PublishError(f"event {event.event_id}: not sent ({exc!r})", 1))
        return future

    def _on_return(
        self, _channel: Channel, method: Basic.Return, properties: BasicProperties, _body: bytes
    ) -> None:
        if properties.message_id:
            self._returned[properties.message_id] = f"{method.reply_code} {method.reply_text}"

    def _on_confirm(self, frame: Method[Basic.Ack | Basic.Nack]) -> None:
        method = frame.method
        tag = method.delivery_tag
        nack = isinstance(method, Basic.Nack)
        if method.multiple:
            tags = []
            for pending_tag in self._pending:
                if pending_tag > tag:
                    break
                tags.append(pending_tag)
        else:
            tags = [tag] if tag in self._pending else []
        for confirmed in tags:
            event, future = self._pending.pop(confirmed)
            event_id = event.event_id
            returned = self._returned.pop(event_id, None)
            if future.done():
                continue
            if returned is not None:
                future.set_exception(PublishError(f"event {event_id} unroutable: {returned}", 1))
            elif nack:
                future.set_exception(PublishError(f"event {event_id} nacked by the broker", 1))
            else:
                future.set_result(None)
        if len(self._pending) < self._max_in_flight:
            self._space.set()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._fail_all(
            f"the channel closed before the broker confirmed ({connection_failure_reason(reason)})"
        )

    def _fail_all(self, reason: str) -> None:
        """Fail every event still waiting for its confirm: its confirm can no longer come (a
        confirm belongs to its channel), so it must not count as published."""
        self._closed_reason = reason
        pending, self._pending = self._pending, OrderedDict()
        for event, future in pending.values():
            if not future.done():
                future.set_exception(PublishError(f"event {event.event_id}: {reason}", 1))
        self._space.set()


async def publish_events(
    settings: Settings,
    events: Sequence[OutgoingEvent],
    on_confirmed: Callable[[int], None] | None = None,
) -> int:
    """Publish ``events`` in order with confirms, failing over between broker nodes; returns
    the count confirmed (``len(events)``).

    Events go out ``tuning.PUBLISH_CHUNK`` at a time. When part of a chunk is not confirmed (a
    nack, or the connection lost before its confirms came), exactly those events are published
    again, on the next broker node (``AMQP_ADDRESSES``), after the reconnect back-off
    (``RECONNECT_BACKOFF_S`` .. ``RECONNECT_BACKOFF_MAX_S``), up to ``tuning.PUBLISH_ATTEMPTS``
    attempts per chunk. A re-published event may be in the log twice; the processor applies its
    ``event_id`` once.

    Args:
        settings: the broker.
        events: the events, in order.
        on_confirmed: called after each confirmed chunk with the number confirmed so far.

    Raises:
        PublishError: a chunk still had unconfirmed events after ``tuning.PUBLISH_ATTEMPTS``
            attempts (the message says how many events before them were confirmed, and why the
            last attempt failed; ``unconfirmed`` lists the events).
    """
    publisher = AsyncPublisher(settings, nodes=BrokerNodes(settings.amqp_addresses))
    published = 0
    try:
        for start in range(0, len(events), tuning.PUBLISH_CHUNK):
            chunk = list(events[start : start + tuning.PUBLISH_CHUNK])
            published += await _publish_chunk(settings, publisher, chunk, published)
            if on_confirmed is not None:
                on_confirmed(published)
    finally:
        await publisher.close()
    return published


async def _publish_chunk(
    settings: Settings, publisher: AsyncPublisher, chunk: list[OutgoingEvent], before: int
) -> int:
    """Publish ``chunk`` until every event of it is confirmed; returns ``len(chunk)``.

    Raises:
        PublishError: events still unconfirmed after ``tuning.PUBLISH_ATTEMPTS`` attempts.
    """
    remaining = chunk
    attempt = 1
    while True:
        try:
            await publisher.publish(remaining)
        except PublishError as exc:
            unconfirmed = [e for e in exc.unconfirmed if isinstance(e, OutgoingEvent)]
            # A connect that failed published nothing; otherwise only the unconfirmed go again.
            if unconfirmed or isinstance(exc, BrokerUnreachable):
                remaining = unconfirmed or remaining
            if attempt >= tuning.PUBLISH_ATTEMPTS:
                raise PublishError(
                    f"{len(remaining)} events still not confirmed after {attempt} attempts "
                    f"({before} events before them were confirmed; publishing the file again "
                    f"is safe): {exc}",
                    len(remaining),
                    remaining,
                ) from exc
            delay = backoff_delay(settings, attempt)
            log.warning(
                "%s; publishing those %d again in %.2f s, on the next broker node "
                "(attempt %d of %d)",
                exc,
                len(remaining),
                delay,
                attempt + 1,
                tuning.PUBLISH_ATTEMPTS,
            )
            await publisher.fail_over()
            await asyncio.sleep(delay)
            attempt += 1
        else:
            return len(chunk)
