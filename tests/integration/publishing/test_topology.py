"""Topology declaration against the real broker: idempotent, and the partition count is fixed."""

from __future__ import annotations

import pika
import pytest

from processor.applying.checkpoint import ensure_checkpoints
from processor.applying.errors import PartitionCountMismatch
from processor.publishing.errors import TopologyError
from processor.publishing.topology import declare_topology
from processor.settings import Settings, stream_name
from projections.database import connect
from testkit.tcp_proxy import TcpProxy


def test_declaring_twice_changes_nothing(settings: Settings) -> None:
    assert declare_topology(settings) == [stream_name(p) for p in range(16)]
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        for partition in range(16):
            channel.queue_declare(stream_name(partition), passive=True)
    finally:
        connection.close()


@pytest.mark.parametrize("partitions", [8, 20])
def test_a_different_partition_count_is_refused_by_the_broker_check(
    settings: Settings, partitions: int
) -> None:
    with pytest.raises(TopologyError, match="partitions"):
        declare_topology(settings.with_overrides(partitions=partitions))


def test_a_smaller_partition_count_is_refused_by_the_database_check(settings: Settings) -> None:
    with connect(settings.database_url) as conn:
        ensure_checkpoints(conn, 16)
        with pytest.raises(PartitionCountMismatch, match="16 partitions"):
            ensure_checkpoints(conn, 8)


def test_an_unroutable_publish_is_an_error_not_a_silent_confirm(settings: Settings) -> None:
    import asyncio  # noqa: PLC0415

    from processor.publishing.errors import PublishError  # noqa: PLC0415
    from processor.publishing.publisher import AsyncPublisher, OutgoingEvent  # noqa: PLC0415

    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:  # Unbind every partition: the exchange can route nothing.
        channel = connection.channel()
        for partition in range(16):
            channel.queue_unbind(stream_name(partition), "events", routing_key="1")
    finally:
        connection.close()

    async def publish() -> None:
        publisher = AsyncPublisher(settings)
        try:
            await publisher.publish([OutgoingEvent("e-1", "user-1", b"{}")])
        finally:
            await publisher.close()

    with pytest.raises(PublishError, match="unroutable"):
        asyncio.run(publish())


def test_a_connection_lost_while_declaring_is_declared_again_on_a_new_one(
    settings: Settings,
) -> None:
    """A broker node killed while a processor declares the topology (the start of every
    member) must not stop the processor: the declaration is made again on a new connection."""
    node = (settings.amqp.host, settings.amqp.port)
    # The handshake sends about 500 bytes; 16 stream declarations about 100 each.
    with TcpProxy(*node, cut_after_bytes=1_200, cuts=1) as proxy:
        through_proxy = settings.with_overrides(
            amqp_addresses_raw=f"{proxy.address[0]}:{proxy.address[1]}",
            reconnect_backoff_s=0.05,
            reconnect_backoff_max_s=0.2,
        )
        streams = declare_topology(through_proxy)
        cut = proxy.cut
    assert cut == 1, "the connection was not cut during the declaration"
    assert streams == [stream_name(p) for p in range(16)]
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        for stream in streams:
            channel.queue_declare(stream, passive=True)
    finally:
        connection.close()
