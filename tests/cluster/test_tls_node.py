"""``infra/cluster.sh`` with ``CLUSTER_TLS_DIR`` and ``CLUSTER_TLS_ONLY=1``: one node that
listens only with TLS (AMQPS and streams), checked with the product's own clients, with
``PLAIN`` and, on AMQP, with a client certificate (``EXTERNAL``, user = the certificate's common
name)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator

import pytest

from processor.publishing.topology import declare_topology
from processor.reading.probes import read_tail_offsets
from processor.settings import stream_name
from testkit.rabbit_nodes import RabbitCluster, rabbit_cluster
from testkit.tls import TestCA


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, tls_ca: TestCA) -> Iterator[RabbitCluster]:
    with rabbit_cluster(
        tmp_path_factory.mktemp("tls-node"), nodes=1, tls=tls_ca, tls_only=True
    ) as running:
        yield running


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def test_a_tls_only_node_has_no_plain_listener_and_a_verified_certificate(
    tls_node: RabbitCluster, tls_ca: TestCA
) -> None:
    node = tls_node.node(1)
    assert refused(node.amqp_port) and refused(node.stream_port)
    assert node.amqps_port is not None and node.streams_port is not None
    context = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    for port in (node.amqps_port, node.streams_port):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert tls_node.amqp_url.startswith(f"amqps://guest:guest@127.0.0.1:{node.amqps_port}/")
    assert tls_node.stream_addresses_raw == f"127.0.0.1:{node.streams_port}"


def test_the_product_declares_and_probes_over_tls(tls_node: RabbitCluster, tls_ca: TestCA) -> None:
    client = tls_ca.client("guest")
    with tls_node.settings(partitions=2) as settings:
        assert settings.amqp_tls and settings.stream_tls_enabled
        assert declare_topology(settings) == [stream_name(0), stream_name(1)]
        assert asyncio.run(read_tail_offsets(settings)) is not None
        external = settings.with_overrides(
            broker_sasl_mechanism="EXTERNAL",
            broker_tls_cert_file=str(client.cert),
            broker_tls_key_file=str(client.key),
        )
        assert declare_topology(external) == [stream_name(0), stream_name(1)]
        # Not EXTERNAL on the stream port: RabbitMQ 3.10.8's stream plugin crashes the
        # connection on it (rabbitmq-server pull request 8488 fixed it in later releases).
