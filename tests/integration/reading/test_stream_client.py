"""The product's stream client against the machine's RabbitMQ node: metadata, SASL negotiation,
tune, first-contact failover, the read deadline (through a proxy that goes silent), and the live
reader keeping the other partitions going when one partition's stream does not exist."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import pika
import pytest

from processor import tuning
from processor.reading.client import (
    ConnectOptions,
    StreamConnection,
    connect_options,
    open_connection,
    open_first_contact,
    read_metadata,
)
from processor.reading.errors import (
    AuthenticationFailed,
    BrokerUnreachable,
    FrameTooLarge,
    ReadDeadlineExceeded,
    SaslMechanismUnavailable,
    StreamDoesNotExist,
)
from processor.reading.log_record import LogRecord
from processor.reading.probes import read_tail_offsets
from processor.reading.reader import StreamReader
from processor.settings import Settings, stream_name
from testkit.tcp_proxy import TcpProxy
from tests.integration.support import outgoing, publish, synthetic_events

pytestmark = pytest.mark.integration


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metadata_names_the_node_as_leader_and_refuses_a_missing_stream(
    settings: Settings,
) -> None:
    streams = [stream_name(0), stream_name(1), "no.such.stream"]
    metadata = asyncio.run(read_metadata(settings, streams))
    assert len(metadata.brokers) == 1, "one node: one broker"
    (broker,) = metadata.brokers
    for name in streams[:2]:
        found = metadata.streams[name]
        assert found.code == 1 and found.error() is None
        assert found.leader == broker, "the only node leads every stream"
        assert found.replicas == ()
        assert found.members == (broker,)
    missing = metadata.streams["no.such.stream"]
    assert missing.code == 2
    assert isinstance(missing.error(), StreamDoesNotExist)
    assert missing.members == ()

    async def connect_to_advertised() -> tuple[str, int] | None:
        connection = await open_connection(settings, "advertised-test", broker.address)
        try:
            return connection.advertised
        finally:
            await connection.close()

    # After first contact the client connects where the broker says it is.
    assert asyncio.run(connect_to_advertised()) == broker.address


def test_a_sasl_mechanism_the_broker_does_not_offer_is_refused_naming_the_offered_ones(
    settings: Settings,
) -> None:
    plain = connect_options(settings)
    external = ConnectOptions(plain.username, plain.password, plain.vhost, mechanism="EXTERNAL")
    host, port = settings.stream_addresses[0]
    with pytest.raises(SaslMechanismUnavailable) as refused:
        asyncio.run(StreamConnection(host, port, external, "sasl-test").open())
    assert "PLAIN" in refused.value.offered
    assert "EXTERNAL" in str(refused.value) and "PLAIN" in str(refused.value)


def test_a_wrong_password_is_an_authentication_failure(settings: Settings) -> None:
    with pytest.raises(AuthenticationFailed, match="authentication failure"):
        asyncio.run(
            open_first_contact(
                settings.with_overrides(stream_username="guest", stream_password="wrong"), "t"
            )
        )


def test_tune_takes_the_lower_heartbeat_and_frame_max(settings: Settings) -> None:
    async def tuned() -> tuple[int, int, float]:
        connection = await open_first_contact(
            settings.with_overrides(stream_heartbeat_s=1.0), "tune-test"
        )
        try:
            return connection.heartbeat_s, connection.frame_max, connection.read_deadline_s
        finally:
            await connection.close()

    heartbeat_s, frame_max, deadline_s = asyncio.run(tuned())
    assert heartbeat_s == 1, "ours is lower than the broker's (60 s by default)"
    assert 0 < frame_max <= tuning.STREAM_FRAME_MAX
    assert deadline_s == 2.0, "unset, the read deadline is two heartbeats"


def test_first_contact_fails_over_to_the_next_address_and_names_every_failure(
    settings: Settings,
) -> None:
    host, port = settings.stream_addresses[0]
    dead = refused_port()
    two = settings.with_overrides(stream_addresses_raw=f"127.0.0.1:{dead},{host}:{port}")

    async def reached() -> tuple[str, int]:
        connection = await open_first_contact(two, "failover-test")
        await connection.close()
        return connection.address

    assert asyncio.run(reached()) == (host, port)
    none = settings.with_overrides(stream_addresses_raw=f"127.0.0.1:{dead},127.0.0.1:{dead}")
    with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{dead}"):
        asyncio.run(open_first_contact(none, "failover-test"))


def test_a_silent_connection_is_given_up_after_the_read_deadline_an_idle_one_is_not(
    settings: Settings,
) -> None:
    host, port = settings.stream_addresses[0]
    short = settings.with_overrides(stream_heartbeat_s=1.0, stream_read_deadline_s=2.5)
    with TcpProxy(host, port) as proxy:
        through_proxy = short.with_overrides(stream_addresses_raw=f"127.0.0.1:{proxy.address[1]}")

        async def scenario() -> tuple[bool, BaseException | None]:
            connection = await open_first_contact(through_proxy, "deadline-test")
            try:
                assert connection.failed is not None
                # Idle, the broker's heartbeats keep the connection alive past the deadline.
                await asyncio.sleep(3 * connection.read_deadline_s)
                idle_alive = connection.healthy
                proxy.stall()
                with pytest.raises(ReadDeadlineExceeded):
                    await asyncio.wait_for(asyncio.shield(connection.failed), 60)
                return idle_alive, connection.failed.exception()
            finally:
                proxy.resume()
                await connection.close()

        idle_alive, error = asyncio.run(scenario())
    assert idle_alive, "an idle connection must survive on heartbeats"
    assert "sent nothing" in str(error)


class Sink:
    """Collects offsets and failures of one partition."""

    def __init__(self) -> None:
        self.next_offset = 0
        self.offsets: list[int] = []
        self.failures: list[Exception] = []
        self.arrived = threading.Event()
        self.failed = threading.Event()
        #: How many offsets had arrived at each ``reader_idle``.
        self.idle_at: list[int] = []

    def subscribed(self, start: int) -> None:
        pass

    def offer(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        self.offsets.extend(record.offset for record in records)
        self.next_offset = records[-1].last_offset + 1
        self.arrived.set()
        return None

    def reader_idle(self) -> None:
        self.idle_at.append(len(self.offsets))

    def fail(self, error: Exception) -> None:
        self.failures.append(error)
        self.failed.set()


def test_a_partition_whose_stream_does_not_exist_fails_alone(settings: Settings) -> None:
    publish(settings, outgoing(synthetic_events(200, users=20, seed=3)))
    reader = StreamReader(settings, name="friendship-stream missing-stream-test")
    reader.start()
    try:
        missing = Sink()
        reader.subscribe(settings.partitions, missing)  # beyond the declared streams
        present = {p: Sink() for p in range(settings.partitions)}
        for partition, sink in present.items():
            reader.subscribe(partition, sink)
        assert missing.failed.wait(60), "the missing stream's sink must be told"
        assert isinstance(missing.failures[0], StreamDoesNotExist)
        deadline = time.monotonic() + 60
        while sum(len(s.offsets) for s in present.values()) < 200:
            assert time.monotonic() < deadline, "the other partitions must be read"
            time.sleep(0.05)
        assert all(not s.failures for s in present.values())
        assert all(s.offsets == sorted(set(s.offsets)) for s in present.values())
        # Once every chunk received was offered, each partition's sink hears that the reader is
        # idle (the feed hands its batch over then, without waiting for a timer).
        while any(s.offsets and s.idle_at[-1:] != [len(s.offsets)] for s in present.values()):
            assert time.monotonic() < deadline, "the reader must say when it is idle"
            time.sleep(0.05)
        assert reader.node_of(0) is not None
    finally:
        reader.stop()


def test_a_frame_larger_than_frame_max_is_refused_clearly(settings: Settings) -> None:
    options = connect_options(settings)
    tiny = ConnectOptions(options.username, options.password, options.vhost, frame_max=64)
    host, port = settings.stream_addresses[0]
    # The broker's answer to the peer properties (its product, version...) is over 64 bytes.
    with pytest.raises(FrameTooLarge, match="exceeds frame_max 64"):
        asyncio.run(StreamConnection(host, port, tiny, "frame-max-test").open())


def test_a_deleted_stream_fails_its_partition_only_the_others_read_on(settings: Settings) -> None:
    publish(settings, outgoing(synthetic_events(400, users=40, seed=5)))
    tails = asyncio.run(read_tail_offsets(settings))
    doomed = next(p for p, tail in tails.items() if tail >= 0)
    reader = StreamReader(settings, name="friendship-stream deleted-stream-test")
    reader.start()
    try:
        sinks = {p: Sink() for p in range(settings.partitions)}
        for partition, sink in sinks.items():
            reader.subscribe(partition, sink)
        _wait(lambda: all(sinks[p].next_offset > tails[p] for p in sinks), "the first reads")
        # The broker tells the reader's connection (MetadataUpdate) that the stream is gone.
        connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        try:
            connection.channel().queue_delete(stream_name(doomed))
        finally:
            connection.close()
        assert sinks[doomed].failed.wait(60), "the deleted stream's partition must be told"
        assert isinstance(sinks[doomed].failures[0], StreamDoesNotExist)
        before = sum(len(s.offsets) for p, s in sinks.items() if p != doomed)
        publish(settings, outgoing(synthetic_events(400, users=40, seed=6)))
        _wait(
            lambda: sum(len(s.offsets) for p, s in sinks.items() if p != doomed) >= before + 400,
            "the other partitions reading on",
        )
        assert all(not s.failures for p, s in sinks.items() if p != doomed)
        assert all(s.offsets == sorted(set(s.offsets)) for s in sinks.values())
    finally:
        reader.stop()


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
