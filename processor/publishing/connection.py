"""AMQP connections to the broker: one place builds pika's parameters, and the nodes fail over.

Every AMQP connection of the product (the publishers of the HTTP ingest, ``just publish`` and the
demo, the topology's declarations) is opened here, so ``AMQP_URL``, ``AMQP_ADDRESSES``, TLS and
the SASL mechanism mean the same everywhere:

- ``AMQP_URL`` gives the scheme (``amqps://`` = TLS), the credentials, the vhost and pika's URL
  options (``?heartbeat=...``); ``AMQP_ADDRESSES`` (``Settings.amqp_addresses``) the nodes'
  ``host:port``, tried in order.
- TLS uses ``processor.tls.broker_ssl_context`` (``BROKER_TLS_CA_FILE``, and a client
  certificate for ``BROKER_SASL_MECHANISM=EXTERNAL``), and checks the certificate against the
  host name of the address being tried.
- ``BrokerNodes`` remembers which node failed last: the next connection starts with the node
  after it, so a publisher whose node went away reconnects to the next one first.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Final

import pika
import pika.credentials
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from processor import tuning
from processor.publishing.broker_errors import connection_failure_reason
from processor.publishing.errors import BrokerUnreachable
from processor.settings import Address, Settings
from processor.tls import broker_ssl_context

log = logging.getLogger(__name__)

#: The client-provided connection name every AMQP connection of the product starts with (the
#: broker's connection listing shows it).
CONNECTION_NAME_PREFIX: Final = "friendship-stream"


def describe(address: Address) -> str:
    """``host:port`` (``[v6]:port`` for an IPv6 address), for messages."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connection_parameters(
    settings: Settings, address: Address, name: str = CONNECTION_NAME_PREFIX
) -> pika.connection.Parameters:
    """pika's parameters for one node: ``address`` with everything else from ``settings``.

    Args:
        settings: ``amqp_url`` (credentials, vhost, URL options such as ``heartbeat``), TLS
            (``amqps://``, the broker TLS files) and ``broker_sasl_mechanism``.
        address: the node's ``(host, port)``.
        name: the connection name the broker lists (``client_properties.connection_name``).

    Returns:
        One attempt, no retry (``connection_attempts=1``): failing over is the caller's job.

    Raises:
        SettingsError: a broker TLS file cannot be used (names the variable and the file).
    """
    host, port = address
    parameters = pika.URLParameters(settings.amqp_url)
    parameters.host = host
    parameters.port = port
    parameters.connection_attempts = 1
    parameters.retry_delay = 0
    # A node that does not answer (a black hole, not a refusal) costs at most this long.
    timeout = tuning.BROKER_NODE_CONNECT_TIMEOUT_S
    parameters.socket_timeout = min(parameters.socket_timeout or timeout, timeout)
    parameters.stack_timeout = min(parameters.stack_timeout or timeout, timeout)
    parameters.client_properties = {"connection_name": name}
    if settings.broker_sasl_mechanism == "EXTERNAL":
        parameters.credentials = pika.credentials.ExternalCredentials()
    else:
        parameters.credentials = pika.PlainCredentials(
            settings.amqp.username, settings.amqp.password
        )
    parameters.ssl_options = (
        pika.SSLOptions(broker_ssl_context(settings), server_hostname=host)
        if settings.amqp_tls
        else None
    )
    return parameters


def backoff_delay(settings: Settings, failures: int) -> float:
    """Seconds to wait after ``failures`` (>= 1) failed rounds over every node: exponential
    from ``RECONNECT_BACKOFF_S``, capped at ``RECONNECT_BACKOFF_MAX_S``, with full jitter
    between the first wait and the cap of this round."""
    exponent = min(max(failures, 1) - 1, 32)
    ceiling = min(settings.reconnect_backoff_max_s, settings.reconnect_backoff_s * 2**exponent)
    return random.uniform(settings.reconnect_backoff_s, ceiling)  # noqa: S311 - jitter only


class BrokerNodes:
    """The broker's AMQP nodes in the order to try them; shared by the connections that should
    fail over together (one API process, one file being published).

    Args:
        addresses: ``Settings.amqp_addresses``, in the configured order (at least one).
    """

    def __init__(self, addresses: tuple[Address, ...]) -> None:
        if not addresses:
            raise ValueError("at least one broker address is needed")
        self.addresses = addresses
        self._first = 0

    def order(self) -> list[Address]:
        """Every address once, starting with the one after the node that failed last."""
        first = self._first
        return list(self.addresses[first:] + self.addresses[:first])

    def failed(self, address: Address) -> None:
        """``address`` failed (refused, or its connection was lost): try the next one first."""
        if address in self.addresses:
            self._first = (self.addresses.index(address) + 1) % len(self.addresses)


async def open_async_connection(
    settings: Settings,
    nodes: BrokerNodes,
    on_close: Callable[[AsyncioConnection, BaseException], None],
    name: str = CONNECTION_NAME_PREFIX,
) -> tuple[AsyncioConnection, Address]:
    """Open an asyncio AMQP connection to the first node of ``nodes.order()`` that accepts one.

    Each node gets one attempt of at most ``tuning.BROKER_NODE_CONNECT_TIMEOUT_S`` seconds (TCP,
    TLS and the AMQP handshake); a node that fails is marked failed in ``nodes`` and the next
    one is tried at once.

    Args:
        on_close: called when the open connection closes later (pika's close callback).

    Returns:
        The open connection and the node it is on.

    Raises:
        BrokerUnreachable: every node failed (the reason of each, in words).
        SettingsError: a broker TLS file cannot be used.
    """
    loop = asyncio.get_running_loop()
    reasons: list[tuple[str, str]] = []
    for address in nodes.order():
        parameters = connection_parameters(settings, address, name)
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()

        def on_open(
            connection: pika.connection.Connection,
            done: asyncio.Future[AsyncioConnection] = opened,
        ) -> None:
            if done.done():  # the caller gave up on it (timeout, cancelled): not left open
                connection.close()
                return
            assert isinstance(connection, AsyncioConnection)
            done.set_result(connection)

        def on_open_error(
            _connection: object,
            error: BaseException | str,
            done: asyncio.Future[AsyncioConnection] = opened,
        ) -> None:
            if not done.done():
                done.set_exception(_OpenFailed(connection_failure_reason(error)))

        connection = AsyncioConnection(
            parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            # pika's own stack timeout ends a silent attempt; this bound is a safety net only.
            await asyncio.wait_for(opened, timeout=2 * tuning.BROKER_NODE_CONNECT_TIMEOUT_S)
        except _OpenFailed as exc:
            reasons.append((describe(address), str(exc)))
        except TimeoutError:
            reasons.append(
                (
                    describe(address),
                    f"no answer within {tuning.BROKER_NODE_CONNECT_TIMEOUT_S:.0f} s",
                )
            )
        else:
            return connection, address
        nodes.failed(address)
        log.debug("broker node %s refused: %s", describe(address), reasons[-1][1])
    raise BrokerUnreachable(reasons)


class _OpenFailed(Exception):
    """One node's connection attempt failed (the reason in words)."""


def open_blocking_connection(
    settings: Settings, name: str = CONNECTION_NAME_PREFIX
) -> pika.BlockingConnection:
    """A blocking AMQP connection to the first node of ``settings.amqp_addresses`` that accepts
    one (each tried once, in order).

    Raises:
        BrokerUnreachable: every node failed (the reason of each, in words).
        SettingsError: a broker TLS file cannot be used.
    """
    reasons: list[tuple[str, str]] = []
    for address in settings.amqp_addresses:
        try:
            return pika.BlockingConnection(connection_parameters(settings, address, name))
        except (pika.exceptions.AMQPError, OSError) as exc:
            reasons.append((describe(address), connection_failure_reason(exc)))
    raise BrokerUnreachable(reasons)
