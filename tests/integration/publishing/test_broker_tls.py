"""Publishing to a TLS-only RabbitMQ node of the test's own (``testkit.rabbit_nodes``): amqps
with the test CA, a broker certificate from another CA refused clearly, and ``EXTERNAL`` login
with a client certificate. The machine's broker is not involved."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.publishing.errors import BrokerUnreachable, TopologyError
from processor.publishing.publisher import AsyncPublisher, publish_events
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from testkit.rabbit_nodes import RabbitCluster, rabbit_cluster
from testkit.tls import TestCA
from tests.integration.support import outgoing, run_command, settings_env, synthetic_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """One RabbitMQ node that listens with TLS only (AMQPS and streams), its certificate signed
    by a test CA; EXTERNAL login by a client certificate's common name is enabled."""
    folder = tmp_path_factory.mktemp("tls-node")
    with rabbit_cluster(folder, nodes=1, tls=TestCA(folder / "ca"), tls_only=True) as cluster:
        yield cluster


@pytest.fixture
def tls_settings(tls_node: RabbitCluster) -> Iterator[Settings]:
    """A fresh vhost on the TLS node (``amqps://``, the test CA as ``BROKER_TLS_CA_FILE``)."""
    with tls_node.settings() as settings:
        yield settings


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _logged(cluster: RabbitCluster, settings: Settings) -> int:
    """Messages in the vhost's partition streams (rabbitmqctl on the test's node)."""
    text = cluster.ctl("list_queues", "-p", settings.amqp.vhost, "name", "messages", "-q")
    return sum(
        int(line.split()[1])
        for line in text.splitlines()
        if line.startswith("events.p") and len(line.split()) == 2
    )


def test_publishing_over_amqps_verifies_the_broker_with_the_ca_file(
    tls_node: RabbitCluster, tls_settings: Settings
) -> None:
    assert tls_settings.amqp_tls
    assert tls_settings.broker_tls_ca_file
    port = tls_settings.amqp.port
    failing_over = tls_settings.with_overrides(
        amqp_addresses_raw=f"127.0.0.1:{_closed_port()},127.0.0.1:{port}"
    )
    declare_topology(failing_over)
    events = outgoing(synthetic_events(200, users=20, seed=21))
    assert asyncio.run(publish_events(failing_over, events)) == 200
    # The node has no plain listener: every confirm above came over TLS.
    deadline = time.monotonic() + 60
    while _logged(tls_node, tls_settings) != len(events):
        assert time.monotonic() < deadline, "the streams never showed the 200 events"
        time.sleep(0.2)


def test_a_broker_certificate_from_another_ca_is_refused_with_a_clear_error(
    tls_settings: Settings, tmp_path: Path
) -> None:
    stranger = TestCA(tmp_path / "stranger")
    wrong = tls_settings.with_overrides(broker_tls_ca_file=str(stranger.ca_file))
    events = outgoing(synthetic_events(5, users=1, seed=22))
    with pytest.raises(BrokerUnreachable) as raised:
        asyncio.run(AsyncPublisher(wrong).connect())
    message = str(raised.value)
    assert (
        f"127.0.0.1:{tls_settings.amqp.port}: the broker's TLS certificate was refused" in message
    )
    assert "BROKER_TLS_CA_FILE" in message
    with pytest.raises(TopologyError, match="TLS certificate was refused"):
        declare_topology(wrong)
    result = run_command(["topology"], settings_env(wrong))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "TLS certificate was refused" in result.stderr
    assert events  # nothing was published: the connection never opened


def test_external_logs_in_with_the_client_certificate(
    tls_node: RabbitCluster, tls_settings: Settings
) -> None:
    assert tls_node.tls is not None
    common_name = f"fs-publisher-{secrets.token_hex(4)}"
    client = tls_node.tls.client(common_name, stem=common_name)
    tls_node.ctl("add_user", common_name, secrets.token_hex(16))
    try:
        tls_node.ctl("clear_password", common_name)  # the certificate is its only login
        tls_node.ctl(
            "set_permissions", "-p", tls_settings.amqp.vhost, common_name, ".*", ".*", ".*"
        )
        declare_topology(tls_settings)
        url = urllib.parse.urlsplit(tls_settings.amqp_url)
        external = tls_settings.with_overrides(
            # The URL's user and password are not used with EXTERNAL: wrong ones prove it.
            amqp_url=f"amqps://nobody:wrong@{url.hostname}:{url.port}{url.path}",
            broker_sasl_mechanism="EXTERNAL",
            broker_tls_cert_file=str(client.cert),
            broker_tls_key_file=str(client.key),
        )
        events = outgoing(synthetic_events(50, users=5, seed=23))

        async def publish_and_list() -> list[str]:
            publisher = AsyncPublisher(external)
            try:
                assert await publisher.publish(events) == 50
                listing = await asyncio.to_thread(
                    tls_node.ctl, "list_connections", "user", "auth_mechanism", "ssl", "-q"
                )
            finally:
                await publisher.close()
            return listing.splitlines()

        connections = asyncio.run(publish_and_list())
        assert any(c.split() == [common_name, "EXTERNAL", "true"] for c in connections), connections
        without_certificate = external.with_overrides(
            broker_tls_cert_file="", broker_tls_key_file="", broker_sasl_mechanism="PLAIN"
        )
        with pytest.raises(BrokerUnreachable, match="refused the login"):
            asyncio.run(AsyncPublisher(without_certificate).connect())
    finally:
        tls_node.ctl("delete_user", common_name)
