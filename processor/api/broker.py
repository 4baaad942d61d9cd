"""The API's one shared publisher: opened at start, reopened when the broker dropped it.

Publishing goes through one AMQP channel in confirm mode; concurrent requests share it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pika.exceptions import AMQPError

from processor import tuning
from processor.publishing.errors import PublishError
from processor.publishing.publisher import AsyncPublisher, OutgoingEvent
from processor.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(PublishError):
    """The broker connection could not be opened; nothing was published."""


class BrokerLink:
    """One ``AsyncPublisher`` shared by all requests of an app (use from the app's loop).

    Args:
        settings: the broker (``amqp_url``, its vhost included).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._publisher: AsyncPublisher | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def is_open(self) -> bool:
        """True while the publisher's connection and channel are usable."""
        return self._publisher is not None and self._publisher.is_open

    async def ensure_open(self) -> AsyncPublisher:
        """The open publisher, (re)connecting first when needed; one connect at a time.

        Raises:
            BrokerUnavailable: the broker cannot be reached within
                ``tuning.API_BROKER_CONNECT_TIMEOUT_S``.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            publisher = self._publisher
            if publisher is not None and publisher.is_open:
                return publisher
            if publisher is not None:
                await self._close_quietly(publisher)
            publisher = AsyncPublisher(self._settings)
            self._publisher = publisher
            try:
                await asyncio.wait_for(
                    publisher.connect(), timeout=tuning.API_BROKER_CONNECT_TIMEOUT_S
                )
            except (PublishError, TimeoutError, OSError, AMQPError) as exc:
                await self._close_quietly(publisher)
                self._publisher = None
                raise BrokerUnavailable(f"cannot connect to the broker: {exc}", 0) from exc
            log.info("publisher connected to the broker")
            return publisher

    async def publish(self, events: Sequence[OutgoingEvent]) -> int:
        """Publish ``events`` and wait until the broker confirmed every one.

        Returns:
            The number of events confirmed (``len(events)``).

        Raises:
            BrokerUnavailable: no connection could be opened; nothing was published.
            PublishError: some events were not confirmed (nack, unroutable, connection lost or no
                answer within ``tuning.API_PUBLISH_TIMEOUT_S``); others may be in the log, and
                publishing them again is safe (the processor applies an ``event_id`` once).
        """
        if not events:
            return 0
        publisher = await self.ensure_open()
        try:
            return await asyncio.wait_for(
                publisher.publish(events), timeout=tuning.API_PUBLISH_TIMEOUT_S
            )
        except TimeoutError as exc:
            raise PublishError(
                f"the broker did not confirm {len(events)} events within "
                f"{tuning.API_PUBLISH_TIMEOUT_S:.0f} s",
                len(events),
            ) from exc

    async def check(self) -> str | None:
        """Readiness of the broker: None when a connection is (or could be) open, else why not."""
        try:
            await self.ensure_open()
        except BrokerUnavailable as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        """Close the connection (at app shutdown)."""
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await self._close_quietly(publisher)

    @staticmethod
    async def _close_quietly(publisher: AsyncPublisher) -> None:
        try:
            await publisher.close()
        except (TimeoutError, OSError, PublishError, AMQPError) as exc:
            log.debug("closing the publisher failed: %s", exc)
