"""The cluster suite (``just test-cluster``): ONE three-node RabbitMQ cluster of its own per test
session (``infra/cluster.sh`` through ``testkit.rabbit_nodes``), each test on a fresh vhost and
database, the figures table printed at the end (``CLUSTER_REPORT=path`` also writes it).

``just test`` does not run this folder (its recipe passes ``--ignore=tests/cluster``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.publishing.topology import declare_topology
from processor.settings import Settings
from testkit.figures import print_figures
from testkit.rabbit_nodes import RabbitCluster, rabbit_cluster
from tests.cluster.support import ClusterReport, Row, render_table

_REPORT = pytest.StashKey[ClusterReport]()

#: Short timeouts, so a dead node is noticed quickly (the tests never assert durations).
FAST = {
    "stream_heartbeat_s": 2.0,
    "reconnect_backoff_s": 0.2,
    "reconnect_backoff_max_s": 2.0,
    "lease_interval_s": 0.5,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the three-node cluster (tests/cluster)")
    config.stash[_REPORT] = ClusterReport()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def cluster_report(request: pytest.FixtureRequest) -> ClusterReport:
    """Where a scenario records its figures."""
    return request.config.stash[_REPORT]


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RabbitCluster]:
    """Three RabbitMQ 3.10 nodes of their own, joined; stopped and removed after the session."""
    started = time.monotonic()
    with rabbit_cluster(tmp_path_factory.mktemp("cluster"), nodes=3) as running:
        request.config.stash[_REPORT].add(
            Row(
                "cluster up: 3 nodes started, joined, ready",
                notes=f"{time.monotonic() - started:.0f} s (`infra/cluster.sh up`)",
            )
        )
        yield running


@pytest.fixture(autouse=True)
def every_node_running_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that left a node down (it failed midway) does not spoil the next ones."""
    yield
    if "cluster" not in request.fixturenames:
        return
    running: RabbitCluster = request.getfixturevalue("cluster")
    for node in running.nodes:
        if not node.running:
            running.start(node.number)


@pytest.fixture
def cluster_settings(cluster: RabbitCluster) -> Iterator[Settings]:
    """Settings on a fresh vhost of the cluster (topology declared: 16 partition streams, 3
    members each) and a fresh database, with short stream timeouts."""
    with cluster.settings(**FAST) as settings:
        declare_topology(settings)
        yield settings


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None or not report.rows:
        return
    print_figures(terminalreporter, "cluster figures", render_table(report.rows), "CLUSTER_REPORT")
