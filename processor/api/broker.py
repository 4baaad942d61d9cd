"""The API's one shared publisher: opened at start, reopened on the next node when it is lost.

Publishing goes through one AMQP channel in confirm mode; concurrent requests share it. The
broker nodes (``AMQP_ADDRESSES``) are tried in order, starting after the node that failed last
(``processor.publishing.connection.BrokerNodes``): when the connection is lost, the requests
whose confirms were pending fail (``publish_failed``, never a 202), and the next request
connects to the next node. When no node answers, requests fail fast with
``broker_unavailable`` until the reconnect back-off (``RECONNECT_BACKOFF_S`` ..
``RECONNECT_BACKOFF_MAX_S``) has passed, so a broker outage is not a connection storm.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

from pika.exceptions import AMQPError

from processor import tuning
from processor.publishing.connection import BrokerNodes, backoff_delay
from processor.publishing.errors import PublisherClosed, PublishError
from processor.publishing.publisher import AsyncPublisher, OutgoingEvent
from processor.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(PublishError):
    """No broker node could be reached; nothing was published.

    Attributes:
        retry_after_s: whole seconds until the API tries the broker again (``Retry-After``).
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, 0)
        self.retry_after_s = retry_after_s


class BrokerLink:
    """One ``AsyncPublisher`` shared by all requests of an app (use from the app's loop).

    Args:
        settings: the broker (``amqp_url``: credentials, vhost, TLS; ``amqp_addresses``) and
            the reconnect back-off.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nodes = BrokerNodes(settings.amqp_addresses)
        self._publisher: AsyncPublisher | None = None
        self._lock: asyncio.Lock | None = None
        self._failed_rounds = 0
        self._retry_at = 0.0
        self._last_failure = ""

    @property
    def is_open(self) -> bool:
        """True while the publisher's connection and channel are usable."""
        return self._publisher is not None and self._publisher.is_open

    @property
    def retry_after_s(self) -> int:
        """Whole seconds a client should wait before trying again after a failed publish
        (at least 1): what is left of the back-off, or its first step."""
        left = self._retry_at - time.monotonic()
        return max(1, math.ceil(max(left, self._settings.reconnect_backoff_s)))

    async def ensure_open(self) -> AsyncPublisher:
        """The open publisher, (re)connecting first when needed; one connect at a time.

        Raises:
            BrokerUnavailable: no node could be reached within
                ``tuning.API_BROKER_CONNECT_TIMEOUT_S``, or the last round failed less than the
                reconnect back-off ago.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            publisher = self._publisher
            if publisher is not None and publisher.is_open:
                return publisher
            if publisher is not None:
                await self._close_quietly(publisher)
                self._publisher = None
            now = time.monotonic()
            if now < self._retry_at:
                raise BrokerUnavailable(
                    f"{self._last_failure}; next try in {self._retry_at - now:.1f} s",
                    self.retry_after_s,
                )
            publisher = AsyncPublisher(self._settings, nodes=self._nodes, reconnect=False)
            try:
                await asyncio.wait_for(
                    publisher.connect(), timeout=tuning.API_BROKER_CONNECT_TIMEOUT_S
                )
            except (PublishError, TimeoutError, OSError, AMQPError) as exc:
                await self._close_quietly(publisher)
                self._failed_rounds += 1
                delay = backoff_delay(self._settings, self._failed_rounds)
                self._retry_at = time.monotonic() + delay
                self._last_failure = (
                    str(exc) or f"no connection within {tuning.API_BROKER_CONNECT_TIMEOUT_S:.0f} s"
                )
                log.warning(
                    "publisher cannot connect to the broker (%s); next try in %.2f s or later",
                    self._last_failure,
                    delay,
                )
                raise BrokerUnavailable(self._last_failure, self.retry_after_s) from exc
            self._failed_rounds = 0
            self._publisher = publisher
            log.info("publisher connected to the broker at %s", publisher.address)
            return publisher

    async def publish(self, events: Sequence[OutgoingEvent]) -> int:
        """Publish ``events`` and wait until the broker confirmed every one.

        Returns:
            The number of events confirmed (``len(events)``).

        Raises:
            BrokerUnavailable: no connection could be opened; nothing was published.
            PublishError: some events were not confirmed (nack, unroutable, the connection lost
                before their confirms came, or no answer within ``tuning.API_PUBLISH_TIMEOUT_S``:
                then this node is given up and the next request connects to the next one);
                others may be in the log, and publishing them again is safe (the processor
                applies an ``event_id`` once).
        """
        if not events:
            return 0
        publisher = await self.ensure_open()
        try:
            try:
                return await asyncio.wait_for(
                    publisher.publish(events), timeout=tuning.API_PUBLISH_TIMEOUT_S
                )
            except PublisherClosed:
                # Lost between ensure_open and publish (nothing sent): the next node, once.
                publisher = await self.ensure_open()
                return await asyncio.wait_for(
                    publisher.publish(events), timeout=tuning.API_PUBLISH_TIMEOUT_S
                )
        except TimeoutError as exc:
            log.warning(
                "the broker at %s confirmed nothing within %.0f s; failing over",
                publisher.address,
                tuning.API_PUBLISH_TIMEOUT_S,
            )
            await self._fail_over_quietly(publisher)
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

    @staticmethod
    async def _fail_over_quietly(publisher: AsyncPublisher) -> None:
        try:
            await publisher.fail_over()
        except (TimeoutError, OSError, PublishError, AMQPError) as exc:
            log.debug("closing the publisher failed: %s", exc)
