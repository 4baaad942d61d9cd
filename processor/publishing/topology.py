"""Idempotent declaration of the exchange and partition streams (docs/contract.md §5).

The ``events`` exchange is ``x-consistent-hash``; partition ``i`` is the stream ``events.p{i:03d}``
bound with weight ``"1"`` in partition order, so the hash ring is the same after a broker restart.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from processor import tuning
from processor.publishing.broker_errors import connection_failure_reason
from processor.publishing.connection import (
    CONNECTION_NAME_PREFIX,
    backoff_delay,
    open_blocking_connection,
)
from processor.publishing.errors import BrokerUnreachable, TopologyError
from processor.settings import EXCHANGE, MAX_PARTITIONS, Settings, stream_name

log = logging.getLogger(__name__)

#: Binding weight of every partition (equal weights = equal share of the hash ring).
BINDING_WEIGHT: Final = "1"
#: AMQP reply codes: a passive declare of something that does not exist; no permission.
_NOT_FOUND: Final = 404
_ACCESS_REFUSED: Final = 403
_PRECONDITION_FAILED: Final = 406


#: The queue argument of a stream's member count when it is created (RabbitMQ 3.9+).
INITIAL_CLUSTER_SIZE: Final = "x-initial-cluster-size"


def stream_arguments(settings: Settings) -> dict[str, object]:
    """Queue arguments of a partition stream: its type, members and explicit retention.

    ``x-initial-cluster-size`` is always ``STREAM_REPLICATION_FACTOR`` (default 1): without it
    RabbitMQ 3.10 places a new stream on every node of a cluster, so a factor of 1 would not
    mean one member. A factor above the cluster's node count gives a member on every node
    (RabbitMQ caps it). It only counts when a stream is created: ``declare_topology`` accepts
    existing streams made with another (or no) factor and leaves their members as they are.

    Retention defaults to keeping everything (replay needs the whole log); ``STREAM_MAX_AGE``
    (e.g. ``"7D"``) and ``STREAM_MAX_LENGTH_BYTES`` (bytes) set RabbitMQ's ``x-max-age`` and
    ``x-max-length-bytes`` when an operator chooses to truncate.
    """
    arguments: dict[str, object] = {
        "x-queue-type": "stream",
        INITIAL_CLUSTER_SIZE: settings.stream_replication_factor,
    }
    if settings.stream_max_age:
        arguments["x-max-age"] = settings.stream_max_age
    if settings.stream_max_length_bytes:
        arguments["x-max-length-bytes"] = settings.stream_max_length_bytes
    if settings.stream_max_segment_size_bytes:
        arguments["x-stream-max-segment-size-bytes"] = settings.stream_max_segment_size_bytes
    return arguments


def declare_topology(settings: Settings) -> list[str]:
    """Declare the exchange, the partition streams and their bindings; safe to run twice.

    A connection lost midway (a broker node killed or restarted while a processor starts) is
    not an answer: the whole declaration, idempotent, is made again on a new connection (the
    next node of ``AMQP_ADDRESSES`` first), up to ``tuning.TOPOLOGY_ATTEMPTS`` times with the
    reconnect back-off in between.

    Returns:
        The stream names, in partition order.

    Raises:
        TopologyError: the broker refused a declaration (for example an existing stream with
            other retention arguments, or the consistent-hash plugin not enabled), it already
            has a different number of partition streams, no node accepted a connection, or
            every attempt lost its connection.
    """
    failures = 0
    while True:
        try:
            return _declare_once(settings)
        except pika.exceptions.AMQPConnectionError as exc:
            failures += 1
            if failures >= tuning.TOPOLOGY_ATTEMPTS:
                raise TopologyError(
                    f"declaring the topology lost its broker connection {failures} times "
                    f"(last: {connection_failure_reason(exc)})"
                ) from exc
            delay = backoff_delay(settings, failures)
            log.warning(
                "declaring the topology lost its broker connection (%s); again in %.1f s",
                connection_failure_reason(exc),
                delay,
            )
            time.sleep(delay)


def _declare_once(settings: Settings) -> list[str]:
    """One attempt of ``declare_topology`` on one connection.

    Raises:
        TopologyError: as ``declare_topology``.
        pika.exceptions.AMQPConnectionError: the connection was lost midway.
    """
    streams = [stream_name(p) for p in range(settings.partitions)]
    connection = _connect(settings)
    try:
        _check_partition_count(connection, settings.partitions)
        channel = connection.channel()
        # A plugin exchange type: types-pika only knows the built-in ones.
        exchange_type: Any = "x-consistent-hash"
        channel.exchange_declare(EXCHANGE, exchange_type=exchange_type, durable=True)
        arguments = stream_arguments(settings)
        for stream in streams:
            channel = _declare_stream(connection, channel, stream, arguments)
        for stream in streams:
            channel.queue_bind(stream, EXCHANGE, routing_key=BINDING_WEIGHT)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _ACCESS_REFUSED:
            _check_declared(connection, streams)
            log.info("topology in place (this broker user may not declare it, only use it)")
            return streams
        raise TopologyError(
            f"the broker refused the topology ({exc.reply_code} {exc.reply_text}); "
            "is rabbitmq_consistent_hash_exchange enabled, and do existing streams have the "
            "same retention arguments?"
        ) from exc
    finally:
        if connection.is_open:
            connection.close()
    log.info("topology ready: exchange %s, %d partition streams", EXCHANGE, len(streams))
    return streams


def _declare_stream(
    connection: pika.BlockingConnection,
    channel: BlockingChannel,
    stream: str,
    arguments: dict[str, object],
) -> BlockingChannel:
    """Declare ``stream`` with ``arguments``; returns the channel to go on with.

    An existing stream created with another replication factor (or none: deployments from
    before the setting) makes the broker refuse the declare (406, inequivalent
    ``x-initial-cluster-size``). The factor only counts at creation, so the declare is
    repeated without it (the retention arguments are still compared), and if the broker names
    the factor again (it was created with another one), the stream is only checked to exist.

    Raises:
        pika.exceptions.ChannelClosedByBroker: any other refusal (retention differs, ...).
    """
    try:
        with _quiet_refusals():
            channel.queue_declare(stream, durable=True, arguments=arguments)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if not _names_initial_cluster_size(exc):
            raise
    channel = connection.channel()
    without = {key: value for key, value in arguments.items() if key != INITIAL_CLUSTER_SIZE}
    try:
        with _quiet_refusals():
            channel.queue_declare(stream, durable=True, arguments=without)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if not _names_initial_cluster_size(exc):
            raise
    channel = connection.channel()
    channel.queue_declare(stream, passive=True)
    log.info(
        "stream %s exists with another replication factor; its members stay as they are",
        stream,
    )
    return channel


def _names_initial_cluster_size(exc: pika.exceptions.ChannelClosedByBroker) -> bool:
    return exc.reply_code == _PRECONDITION_FAILED and INITIAL_CLUSTER_SIZE in exc.reply_text


def _check_declared(connection: pika.BlockingConnection, streams: list[str]) -> None:
    """A user without ``configure`` permission (the least-privilege reader or publisher) checks
    with passive declares, which need none, that the exchange and every stream exist.

    Raises:
        TopologyError: something is missing: an admin must declare it (``just topology``).
    """
    try:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, passive=True)
        for stream in streams:
            channel.queue_declare(stream, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise TopologyError(
            f"the topology is incomplete ({exc.reply_code} {exc.reply_text}) and this broker "
            "user may not declare it: run `just topology` with an administrator's AMQP_URL"
        ) from exc


def _connect(settings: Settings) -> pika.BlockingConnection:
    """A blocking AMQP connection to the first node of ``AMQP_ADDRESSES`` that accepts one.

    Raises:
        TopologyError: no node accepted (one line naming each node tried and its reason).
    """
    try:
        return open_blocking_connection(settings, name=f"{CONNECTION_NAME_PREFIX}-topology")
    except BrokerUnreachable as exc:
        raise TopologyError(str(exc)) from None


def count_partition_streams(settings: Settings, limit: int = MAX_PARTITIONS) -> int:
    """How many partition streams the broker's vhost has: ``events.p000`` onwards, consecutive.

    Returns:
        0 when the topology was never declared.

    Raises:
        TopologyError: the broker cannot be reached.
    """
    connection = _connect(settings)
    try:
        count = 0
        while count < limit and _stream_exists(connection, stream_name(count)):
            count += 1
        return count
    finally:
        if connection.is_open:
            connection.close()


def ensure_partition_count(settings: Settings) -> None:
    """Refuse to go on when ``PARTITIONS`` differs from the broker's partition streams.

    A read-only check for commands that only look (``status``): showing 8 of 16 partitions
    without a word would mislead.

    Raises:
        TopologyError: the counts differ (names both, and what to set), or the broker cannot
            be reached.
    """
    existing = count_partition_streams(settings, limit=max(settings.partitions, MAX_PARTITIONS))
    if existing and existing != settings.partitions:
        raise TopologyError(
            f"the broker has {existing} partition streams ({stream_name(0)}.."
            f"{stream_name(existing - 1)}) but PARTITIONS={settings.partitions}; "
            f"set PARTITIONS={existing}"
        )


class _ExpectedRefusal(logging.Filter):
    """Drops pika's WARNING about a channel the broker closes for an expected refusal.

    The probe asks whether a stream exists by declaring it passively; "no" arrives as a
    channel close with 404, which pika logs as a warning a user would have to decode. The
    same for an existing stream's other ``x-initial-cluster-size`` (406), which
    ``_declare_stream`` handles.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "NOT_FOUND - no queue" not in message and INITIAL_CLUSTER_SIZE not in message


@contextlib.contextmanager
def _quiet_refusals() -> Iterator[None]:
    channel_log = logging.getLogger("pika.channel")
    expected = _ExpectedRefusal()
    channel_log.addFilter(expected)
    try:
        yield
    finally:
        channel_log.removeFilter(expected)


def _stream_exists(connection: pika.BlockingConnection, name: str) -> bool:
    """Whether the vhost has the queue ``name`` (a passive declare; a 404 means no)."""
    channel = connection.channel()
    try:
        with _quiet_refusals():
            channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            return False
        raise
    channel.close()
    return True


def _check_partition_count(connection: pika.BlockingConnection, partitions: int) -> None:
    """Refuse a ``PARTITIONS`` that differs from the streams the broker already has.

    Changing the count changes the hash ring: users would move to other partitions and their
    events would no longer be in one log in order.

    Raises:
        TopologyError: the vhost has ``events.p{partitions}`` (more partitions), or has
            ``events.p000`` but not ``events.p{partitions - 1}`` (fewer).
    """
    if _stream_exists(connection, stream_name(partitions)):
        raise TopologyError(
            f"the broker already has stream {stream_name(partitions)}: this deployment has more "
            f"than PARTITIONS={partitions} partitions; set PARTITIONS to the existing count"
        )
    if _stream_exists(connection, stream_name(0)) and not _stream_exists(
        connection, stream_name(partitions - 1)
    ):
        raise TopologyError(
            f"the broker has {stream_name(0)} but not {stream_name(partitions - 1)}: this "
            f"deployment has fewer than PARTITIONS={partitions} partitions; changing the count "
            "would move users to other partitions (drain, then re-create the topology)"
        )
