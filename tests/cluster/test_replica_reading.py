"""Cluster-aware reading on the three-node cluster: the stream client's metadata names each
partition stream's leader and replicas as the cluster has them, the live reader reads partitions
from replicas (spread over the nodes), and a partition whose node is killed moves to another
node hosting it and goes on from its next offset: nothing skipped, nothing read twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Sequence

from processor.reading.client import read_metadata
from processor.reading.log_record import LogRecord
from processor.reading.probes import read_tail_offsets
from processor.reading.ranges import LogRange, read_log_ranges_into_memory
from processor.reading.reader import StreamReader
from processor.settings import Settings, stream_name
from testkit.rabbit_nodes import RabbitCluster
from tests.cluster.support import ClusterReport, Row
from tests.integration.support import outgoing, publish, synthetic_events


class Sink:
    """Collects a partition's offsets (any thread may read them)."""

    def __init__(self) -> None:
        self.next_offset = 0
        self.offsets: list[int] = []
        self.failures: list[Exception] = []
        self.lock = threading.Lock()

    def subscribed(self, start: int) -> None:
        pass

    def offer(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        with self.lock:
            self.offsets.extend(record.offset for record in records)
        self.next_offset = records[-1].last_offset + 1
        return None

    def reader_idle(self) -> None:
        pass

    def fail(self, error: Exception) -> None:
        self.failures.append(error)

    def last(self) -> int:
        with self.lock:
            return self.offsets[-1] if self.offsets else -1


def test_metadata_names_each_streams_leader_and_replicas_as_the_cluster_has_them(
    cluster: RabbitCluster, cluster_settings: Settings
) -> None:
    streams = [stream_name(p) for p in range(cluster_settings.partitions)]
    metadata = asyncio.run(read_metadata(cluster_settings, streams))
    ports = {node.stream_port: node.number for node in cluster.nodes}
    assert sorted(b.port for b in metadata.brokers) == sorted(ports)
    leaders = cluster.leaders(cluster_settings.amqp.vhost)
    for name in streams:
        found = metadata.streams[name]
        assert found.code == 1 and found.leader is not None
        assert len(found.replicas) == 2 and found.leader not in found.replicas
        assert ports[found.leader.port] == leaders[name], f"{name}: leader as rabbitmqctl says"


def test_partitions_are_read_from_replicas_and_a_killed_nodes_partitions_move(
    cluster: RabbitCluster, cluster_settings: Settings, cluster_report: ClusterReport
) -> None:
    settings = cluster_settings.with_overrides(stream_read_deadline_s=4.0)
    partitions = range(settings.partitions)
    first = synthetic_events(3_000, users=300, seed=71)
    publish(settings, outgoing(first))
    tails = asyncio.run(read_tail_offsets(settings))
    metadata = asyncio.run(read_metadata(settings, [stream_name(p) for p in partitions]))
    reader = StreamReader(settings, name="friendship-stream replica-test")
    reader.start()
    sinks = {p: Sink() for p in partitions}
    try:
        for partition, sink in sinks.items():
            reader.subscribe(partition, sink)
        _wait(lambda: all(sinks[p].last() >= tails[p] for p in partitions), "the first reads")
        placed = {p: reader.node_of(p) for p in partitions}
        for partition, address in placed.items():
            replicas = {b.address for b in metadata.streams[stream_name(partition)].replicas}
            assert address in replicas, f"partition {partition} is read from a replica"
        hosting_replicas = {
            b.address for found in metadata.streams.values() for b in found.replicas
        }
        assert set(placed.values()) == hosting_replicas, "spread over every replica's node"

        victim_address = placed[0]
        assert victim_address is not None
        victim = next(n.number for n in cluster.nodes if n.stream_port == victim_address[1])
        moved = [p for p, address in placed.items() if address == victim_address]
        killed_at = time.monotonic()
        cluster.kill(victim)
        second = synthetic_events(3_000, users=300, seed=72)
        publish(settings, outgoing(second))
        tails = asyncio.run(read_tail_offsets(settings))
        resumed: dict[int, float] = {}

        def all_read() -> bool:
            for p in partitions:
                if p not in resumed and sinks[p].last() >= tails[p]:
                    resumed[p] = time.monotonic() - killed_at
            return len(resumed) == len(sinks)

        _wait(all_read, "every partition read to its new tail after the kill")
        for partition in moved:
            now = reader.node_of(partition)
            assert now is not None and now != victim_address, f"partition {partition} moved"
    finally:
        reader.stop()
    expected = read_log_ranges_into_memory(
        settings, [LogRange(p, 0, tails[p]) for p in partitions if tails[p] >= 0]
    )
    for partition, sink in sinks.items():
        assert not sink.failures, sink.failures
        want = [r.offset for r in expected.get(partition, [])]
        assert sink.offsets == want, f"partition {partition}: skipped or read twice"
    moved_times = sorted(resumed[p] for p in moved)
    cluster_report.add(
        Row(
            "live reader: a node whose replicas serve partitions is killed",
            events=len(first) + len(second),
            lost=0,
            applied_twice=0,
            resume_median_s=moved_times[len(moved_times) // 2],
            resume_max_s=moved_times[-1],
            notes=(
                f"{len(moved)} of {len(sinks)} partitions moved off node {victim}; read "
                "deadline 4 s; times: kill -> every record up to the new tail received"
            ),
        )
    )


def _wait(condition: object, what: str, timeout_s: float = 180.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
