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
