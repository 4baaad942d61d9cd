"""Publishing events to the ``events`` exchange with publisher confirms and ``mandatory``.

Throughput comes from many messages in flight on pika's asyncio connection: each publish
registers a future by delivery tag, and the broker's (possibly ``multiple``) acks resolve them.
A message the exchange could not route comes back as ``basic.return`` before its ack and fails
its future, so an unroutable event is an error, not a silent confirm (docs/contract.md §5).

Publishing is at-least-once: a caller that retries after a ``PublishError`` may append an event
twice, which the processor applies once (same ``event_id``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.frame import Method
from pika.spec import Basic, BasicProperties, Confirm

from processor import tuning
from processor.publishing.broker_errors import connection_failure_reason
from processor.publishing.errors import PublishError
from processor.settings import EXCHANGE, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One event to publish: its id (AMQP ``message_id``), routing key and JSON body bytes."""

    event_id: str
    user_id: str
    body: bytes


class AsyncPublisher:
    """A confirmed, mandatory publisher on one AMQP channel (use from one asyncio loop).

    Args:
        settings: where the broker is (``amqp_url``, its vhost included).
        max_in_flight: most unconfirmed messages before ``publish`` waits for acks.
    """

    def __init__(
        self, settings: Settings, max_in_flight: int = tuning.PUBLISH_MAX_IN_FLIGHT
    ) -> None:
        self._parameters = pika.URLParameters(settings.amqp_url)
        self._address = f"{settings.amqp.host}:{settings.amqp.port}"
        self._max_in_flight = max_in_flight
        self._connection: AsyncioConnection | None = None
        self._channel: Channel | None = None
        self._next_tag = 0
        self._pending: OrderedDict[int, tuple[str, asyncio.Future[None]]] = OrderedDict()
        self._returned: dict[str, str] = {}
        self._space = asyncio.Event()
        self._closed_reason: str | None = None

    @property
    def is_open(self) -> bool:
        """True while the connection and channel are usable."""
        return (
            self._channel is not None
            and self._channel.is_open
            and self._connection is not None
            and self._connection.is_open
        )

    async def connect(self) -> None:
        """Open the connection and a channel in confirm mode.

        Raises:
            PublishError: the broker cannot be reached or refused the login or vhost.
        """
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._closed_reason = None
        self._next_tag = 0

        def fail(reason: str) -> None:
            if not ready.done():
                ready.set_exception(PublishError(f"cannot open the broker channel ({reason})", 0))

        def on_confirm_mode(_frame: Method[Confirm.SelectOk]) -> None:
            if not ready.done():
                ready.set_result(None)

        def on_channel(channel: Channel) -> None:
            self._channel = channel
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(self._on_confirm, callback=on_confirm_mode)

        def on_open(connection: pika.connection.Connection) -> None:
            connection.channel(on_open_callback=on_channel)

        def on_open_error(_connection: object, error: BaseException | str) -> None:
            fail(f"cannot connect to {self._address}: {connection_failure_reason(error)}")

        def on_close(_connection: object, reason: BaseException) -> None:
            self._fail_all(f"connection closed: {reason}")
            fail(str(reason))

        self._connection = AsyncioConnection(
            self._parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        await ready
        self._space.set()

    async def close(self) -> None:
        """Close the connection after the pending confirms were awaited by their callers."""
        connection = self._connection
        if connection is not None and connection.is_open:
            closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_closed(_connection: object, _reason: BaseException) -> None:
                if not closed.done():
                    closed.set_result(None)

            connection.add_on_close_callback(on_closed)
            connection.close()
            await asyncio.wait_for(closed, timeout=tuning.PUBLISHER_CLOSE_TIMEOUT_S)
        self._connection = None
        self._channel = None

    async def publish(self, events: Iterable[OutgoingEvent]) -> int:
        """Publish events and wait until the broker confirmed every one of them.

        Returns:
            The number of events confirmed.

        Raises:
            PublishError: at least one event was nacked, unroutable or lost with the connection;
                ``failed`` says how many. Others may have been published: retrying is safe.
        """
        if not self.is_open:
            await self.connect()
        futures: list[asyncio.Future[None]] = []
        for event in events:
            while len(self._pending) >= self._max_in_flight:
                self._space.clear()
                await self._space.wait()
            futures.append(self._publish_one(event))
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise PublishError(
                f"{len(errors)} of {len(futures)} events not confirmed: {errors[0]}", len(errors)
            )
        return len(futures)

    def _publish_one(self, event: OutgoingEvent) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        channel = self._channel
        if channel is None or not channel.is_open or self._closed_reason is not None:
            future.set_exception(PublishError(f"channel closed: {self._closed_reason}", 1))
            return future
        self._next_tag += 1
        self._pending[self._next_tag] = (event.event_id, future)
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
            event_id, future = self._pending.pop(confirmed)
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

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        self._fail_all(f"channel closed: {reason}")

    def _fail_all(self, reason: str) -> None:
        self._closed_reason = reason
        pending, self._pending = self._pending, OrderedDict()
        for event_id, future in pending.values():
            if not future.done():
                future.set_exception(PublishError(f"event {event_id}: {reason}", 1))
        self._space.set()


async def publish_events(settings: Settings, events: Sequence[OutgoingEvent]) -> int:
    """Open a publisher, publish ``events`` with confirms, close it; returns the count confirmed.

    Raises:
        PublishError: as ``AsyncPublisher.publish``.
    """
    publisher = AsyncPublisher(settings)
    await publisher.connect()
    try:
        return await publisher.publish(events)
    finally:
        await publisher.close()
