"""The cluster itself: three nodes of their own, joined; a killed node comes back; partition
streams get a member on every node (``STREAM_REPLICATION_FACTOR``)."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse

import pika

from processor.publishing.topology import declare_topology
from processor.settings import Settings, stream_name
from testkit.rabbit_nodes import RabbitCluster
from tests.cluster.support import ClusterReport, Row

PARTITIONS = 16


def running_nodes(cluster: RabbitCluster, node: int) -> list[str]:
    status = json.loads(cluster.ctl("cluster_status", "--formatter", "json", node=node))
    return sorted(status["running_nodes"])


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_three_nodes_of_its_own_run_as_one_cluster(cluster: RabbitCluster) -> None:
    names = [node.name for node in cluster.nodes]
    assert len(names) == 3 and all(node.running for node in cluster.nodes)
    assert not any(name.startswith("rabbit@") for name in names)
    for node in cluster.nodes:
        assert running_nodes(cluster, node.number) == sorted(names)
        assert answers(node.amqp_port) and answers(node.stream_port)
    settings = Settings.from_env(cluster.variables)
    assert [port for _, port in settings.amqp_addresses] == [n.amqp_port for n in cluster.nodes]
    assert [port for _, port in settings.stream_addresses] == [n.stream_port for n in cluster.nodes]
    assert settings.stream_replication_factor == 3


def test_a_killed_node_is_back_in_the_cluster_after_start(
    cluster: RabbitCluster, cluster_report: ClusterReport
) -> None:
    cluster.kill(3)
    assert not cluster.node(3).running
    assert not answers(cluster.node(3).amqp_port)
    assert cluster.node(3).name not in running_nodes(cluster, 1)
    started = time.monotonic()
    cluster.start(3)
    back_s = time.monotonic() - started
    assert cluster.node(3).running
    names = sorted(node.name for node in cluster.nodes)
    assert running_nodes(cluster, 1) == names and running_nodes(cluster, 3) == names
    cluster_report.add(
        Row("a killed node started again", notes=f"back in the cluster in {back_s:.0f} s")
    )


def test_every_partition_stream_has_a_member_on_each_node(
    cluster: RabbitCluster, cluster_settings: Settings
) -> None:
    streams = cluster.streams(cluster_settings.amqp.vhost)
    assert sorted(streams) == [stream_name(p) for p in range(PARTITIONS)]
    everyone = sorted(node.name for node in cluster.nodes)
    for name, (leader, members) in streams.items():
        assert sorted(members) == everyone, name
        assert leader in members


def test_a_replication_factor_of_one_means_one_member(cluster: RabbitCluster) -> None:
    with cluster.settings(stream_replication_factor=1, partitions=4) as settings:
        declare_topology(settings)
        streams = cluster.streams(settings.amqp.vhost)
        assert len(streams) == 4
        assert all(len(members) == 1 for _, members in streams.values())


def test_existing_streams_of_another_factor_are_accepted_as_they_are(
    cluster: RabbitCluster,
) -> None:
    with cluster.settings(partitions=4) as settings:
        # Streams made before the setting existed (no x-initial-cluster-size), and one made
        # with another factor: declaring the topology again must neither fail nor change them.
        url = urllib.parse.urlsplit(settings.amqp_url)
        connection = pika.BlockingConnection(pika.URLParameters(url.geturl()))
        try:
            channel = connection.channel()
            for partition in range(3):
                channel.queue_declare(
                    stream_name(partition), durable=True, arguments={"x-queue-type": "stream"}
                )
            channel.queue_declare(
                stream_name(3),
                durable=True,
                arguments={"x-queue-type": "stream", "x-initial-cluster-size": 2},
            )
        finally:
            connection.close()
        before = cluster.streams(settings.amqp.vhost)
        assert declare_topology(settings) == [stream_name(p) for p in range(4)]
        assert declare_topology(settings.with_overrides(stream_replication_factor=1))
        after = cluster.streams(settings.amqp.vhost)
        assert {n: sorted(m) for n, (_, m) in after.items()} == {
            n: sorted(m) for n, (_, m) in before.items()
        }
        assert len(after[stream_name(3)][1]) == 2


def test_streams_declared_while_a_node_is_down_still_get_a_member_there(
    cluster: RabbitCluster,
) -> None:
    with cluster.settings(partitions=4) as settings:
        cluster.kill(3)
        try:
            declare_topology(settings)
            streams = cluster.streams(settings.amqp.vhost)
        finally:
            cluster.start(3)
        down = cluster.node(3).name
        assert len(streams) == 4
        for name, (leader, members) in streams.items():
            assert leader != down, name
            assert len(members) == 3, (name, members)
