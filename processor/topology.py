"""Idempotent declaration of the exchange and partition streams (CONTRACT.md §5).

The ``events`` exchange is ``x-consistent-hash``; partition ``i`` is the stream ``events.p{i:03d}``
bound with weight ``"1"`` in partition order, so the hash ring is the same after a broker restart.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import pika
import pika.exceptions

from processor.errors import TopologyError
from processor.settings import EXCHANGE, Settings, stream_name

log = logging.getLogger(__name__)

#: Binding weight of every partition (equal weights = equal share of the hash ring).
BINDING_WEIGHT: Final = "1"


def stream_arguments(settings: Settings) -> dict[str, object]:
    """Queue arguments of a partition stream: its type and explicit retention.

    Retention defaults to keeping everything (replay needs the whole log); ``STREAM_MAX_AGE``
    (e.g. ``"7D"``) and ``STREAM_MAX_LENGTH_BYTES`` (bytes) set RabbitMQ's ``x-max-age`` and
    ``x-max-length-bytes`` when an operator chooses to truncate.
    """
    arguments: dict[str, object] = {"x-queue-type": "stream"}
    if settings.stream_max_age:
        arguments["x-max-age"] = settings.stream_max_age
    if settings.stream_max_length_bytes:
        arguments["x-max-length-bytes"] = settings.stream_max_length_bytes
    if settings.stream_max_segment_size_bytes:
        arguments["x-stream-max-segment-size-bytes"] = settings.stream_max_segment_size_bytes
    return arguments


def declare_topology(settings: Settings) -> list[str]:
    """Declare the exchange, the partition streams and their bindings; safe to run twice.

    Returns:
        The stream names, in partition order.

    Raises:
        TopologyError: the broker refused a declaration (for example an existing stream with
            other retention arguments, or the consistent-hash plugin not enabled), or it already
            has a different number of partition streams.
    """
    streams = [stream_name(p) for p in range(settings.partitions)]
    try:
        connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    except pika.exceptions.AMQPError as exc:
        raise TopologyError(f"cannot connect to the broker at {settings.amqp.host}: {exc}") from exc
    try:
        _check_partition_count(connection, settings.partitions)
        channel = connection.channel()
        # A plugin exchange type: types-pika only knows the built-in ones.
        exchange_type: Any = "x-consistent-hash"
        channel.exchange_declare(EXCHANGE, exchange_type=exchange_type, durable=True)
        arguments = stream_arguments(settings)
        for stream in streams:
            channel.queue_declare(stream, durable=True, arguments=arguments)
        for stream in streams:
            channel.queue_bind(stream, EXCHANGE, routing_key=BINDING_WEIGHT)
    except pika.exceptions.ChannelClosedByBroker as exc:
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


def _stream_exists(connection: pika.BlockingConnection, name: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
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
