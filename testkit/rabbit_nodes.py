"""RabbitMQ nodes of their own for tests: a 1- to 3-node cluster driven by ``infra/cluster.sh``.

There is one implementation: every method here runs the script users run (``up``, ``down``,
``env``, ``status``, ``kill N``, ``stop N``, ``start N``, ``ctl N ...``), so the tests test it.

    with rabbit_cluster(tmp_path, nodes=3) as cluster:
        with cluster.settings() as settings:      # a fresh vhost and database on it
            ...
            cluster.kill(2)                       # SIGKILL node 2's Erlang VM
            cluster.start(2)                      # back in the cluster when this returns

With ``tls=TestCA(...)`` the nodes also listen with TLS (AMQPS and streams; ``tls_only=True``:
only with TLS) and ``settings()`` points at the TLS listeners with the CA file. The machine's
broker is never touched; the nodes run as the ``rabbitmq`` user when the tests run as root.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from processor.privacy.keys import new_key
from processor.settings import Settings
from projections.database import drop_database, migrate
from testkit.tls import TestCA

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "cluster.sh"
PORTS_PER_CLUSTER = 40  # infra/cluster.sh: BASE .. BASE+39
UP_TIMEOUT_S = 600.0
NODE_TIMEOUT_S = 300.0


class ClusterError(RuntimeError):
    """``infra/cluster.sh`` failed; the message holds the command and the end of its output."""


@dataclass(frozen=True)
class Node:
    """One node as ``infra/cluster.sh status`` reports it (ports on 127.0.0.1; the TLS ports
    are None without TLS)."""

    number: int
    name: str
    running: bool
    amqp_port: int
    stream_port: int
    management_port: int
    dist_port: int
    amqps_port: int | None
    streams_port: int | None


def parse_env(text: str) -> dict[str, str]:
    """The variables of ``infra/cluster.sh env``'s ``export NAME=VALUE`` lines.

    Raises:
        ValueError: a non-empty line is not an ``export`` of one variable.
    """
    variables: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        words = shlex.split(line)
        if len(words) != 2 or words[0] != "export" or "=" not in words[1]:
            raise ValueError(f"not an export line: {line!r}")
        name, _, value = words[1].partition("=")
        variables[name] = value
    return variables


def parse_status(text: str) -> tuple[dict[str, str], tuple[Node, ...]]:
    """``infra/cluster.sh status`` as (the cluster line's ``key=value`` pairs plus ``name``,
    the nodes in order).

    Raises:
        ValueError: a line is neither a ``cluster`` nor a ``node`` line.
    """
    cluster: dict[str, str] = {}
    nodes: list[Node] = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "cluster":
            cluster = {"name": words[1], **dict(word.split("=", 1) for word in words[2:])}
        elif words[0] == "node":
            ports = dict(word.split("=", 1) for word in words[4:])

            def tls_port(value: str) -> int | None:
                return None if value == "-" else int(value)

            nodes.append(
                Node(
                    number=int(words[1]),
                    name=words[2],
                    running=words[3] == "running",
                    amqp_port=int(ports["amqp"]),
                    stream_port=int(ports["stream"]),
                    management_port=int(ports["management"]),
                    dist_port=int(ports["dist"]),
                    amqps_port=tls_port(ports["amqps"]),
                    streams_port=tls_port(ports["streams"]),
                )
            )
        else:
            raise ValueError(f"unexpected status line: {line!r}")
    return cluster, tuple(nodes)


def postgres_server_url() -> str:
    """The machine's PostgreSQL server URL without a database name (``TEST_POSTGRES_URL``,
    default ``postgresql://postgres@127.0.0.1:5432``): the cluster tests' databases live there."""
    return os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


def _ports_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_base_port(count: int = PORTS_PER_CLUSTER) -> int:
    """A first port of ``count`` consecutive ports free on 127.0.0.1 now, in 20000..32000
    (below Linux's ephemeral range, away from the machine's broker ports).

    Raises:
        ClusterError: none found after 200 tries.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count, 10)
        if base <= 25672 < base + count:  # the machine node's distribution port
            continue
        if _ports_free(base, count):
            return base
    raise ClusterError(f"no {count} consecutive free ports found in 20000..32000")


class RabbitCluster:
    """A running cluster of ``infra/cluster.sh`` (see the module's docstring).

    Attributes:
        env: the environment the script runs with (CLUSTER_NAME, CLUSTER_DIR, ...).
        tls: the CA whose server certificate the nodes use, or None.
        variables: ``infra/cluster.sh env``'s variables (AMQP_URL, AMQP_ADDRESSES, ...).
    """

    def __init__(self, env: dict[str, str], tls: TestCA | None) -> None:
        self.env = env
        self.tls = tls
        self.variables: dict[str, str] = {}

    # --- the script -----------------------------------------------------------------------

    def run(self, *args: str, timeout: float = NODE_TIMEOUT_S) -> str:
        """``infra/cluster.sh ARGS...``'s standard output.

        Raises:
            ClusterError: it exited non-zero or ran longer than ``timeout`` seconds.
        """
        try:
            done = subprocess.run(
                ["bash", str(SCRIPT), *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"infra/cluster.sh {shlex.join(args)}: over {timeout}s") from exc
        if done.returncode != 0:
            raise ClusterError(
                f"infra/cluster.sh {shlex.join(args)} exited {done.returncode}: "
                f"{done.stderr[-2000:]}{done.stdout[-1000:]}"
            )
        return done.stdout

    def up(self) -> None:
        """Start (or complete) the cluster and read its ``env`` (see ``run`` for errors)."""
        self.run("up", timeout=UP_TIMEOUT_S)
        self.variables = parse_env(self.run("env"))

    def down(self) -> None:
        """Stop every node and remove the cluster's folder (see ``run`` for errors)."""
        self.run("down", timeout=UP_TIMEOUT_S)

    # --- what it is -----------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The cluster's folder (data, logs, config)."""
        return Path(self.env["CLUSTER_DIR"])

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node, in order, with its state now."""
        return parse_status(self.run("status"))[1]

    def node(self, n: int) -> Node:
        """Node ``n`` (1-based)."""
        return self.nodes[n - 1]

    def number_of(self, node_name: str) -> int:
        """The number of the node called ``node_name`` (``NAME-2@localhost`` -> 2).

        Raises:
            KeyError: no node of this cluster has that name.
        """
        for node in self.nodes:
            if node.name == node_name:
                return node.number
        raise KeyError(node_name)

    @property
    def amqp_url(self) -> str:
        """``AMQP_URL`` of ``env`` (node 1, default vhost; amqps with TLS)."""
        return self.variables["AMQP_URL"]

    @property
    def amqp_addresses_raw(self) -> str:
        """``AMQP_ADDRESSES``: every node's AMQP (or AMQPS) ``host:port``, comma-separated."""
        return self.variables["AMQP_ADDRESSES"]

    @property
    def stream_addresses_raw(self) -> str:
        """``STREAM_ADDRESSES``: every node's stream (TLS with TLS) ``host:port``."""
        return self.variables["STREAM_ADDRESSES"]

    @property
    def replication_factor(self) -> int:
        """``STREAM_REPLICATION_FACTOR``: the number of nodes."""
        return int(self.variables["STREAM_REPLICATION_FACTOR"])

    # --- changing it ----------------------------------------------------------------------

    def kill(self, n: int) -> None:
        """SIGKILL node ``n``'s Erlang VM (a crash); returns when it is gone."""
        self.run("kill", str(n))

    def stop(self, n: int) -> None:
        """Stop node ``n`` gracefully; returns when it is gone."""
        self.run("stop", str(n))

    def start(self, n: int) -> None:
        """Start node ``n``; returns when it runs and sees every running node of the cluster."""
        self.run("start", str(n))

    def restart(self, n: int) -> None:
        """Stop node ``n`` gracefully and start it again (back in the cluster on return)."""
        self.stop(n)
        self.start(n)

    def ctl(self, *args: str, node: int | None = None) -> str:
        """``rabbitmqctl ARGS...`` against node ``node`` (default: the first running one).

        Raises:
            ClusterError: rabbitmqctl failed, or no node runs.
        """
        if node is None:
            running = [each.number for each in self.nodes if each.running]
            if not running:
                raise ClusterError("no node of the cluster runs")
            node = running[0]
        return self.run("ctl", str(node), *args)

    def streams(self, vhost: str) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Every stream queue of ``vhost``: {name: (leader node name, member node names)}."""
        text = self.ctl(
            "list_queues", "-p", vhost, "name", "type", "leader", "members", "--formatter", "json"
        )
        found: dict[str, tuple[str, tuple[str, ...]]] = {}
        for row in json.loads(text or "[]"):
            if row.get("type") == "stream":
                found[row["name"]] = (str(row["leader"]), tuple(str(m) for m in row["members"]))
        return found

    def leaders(self, vhost: str) -> dict[str, int]:
        """{stream: number of the node hosting its leader} for the streams of ``vhost``."""
        return {name: self.number_of(leader) for name, (leader, _) in self.streams(vhost).items()}

    # --- a deployment on it ---------------------------------------------------------------

    @contextmanager
    def settings(self, **overrides: object) -> Iterator[Settings]:
        """``Settings`` for a fresh vhost on this cluster (every node's addresses, the
        replication factor, TLS when the cluster has it) and a fresh migrated database on the
        machine's PostgreSQL; both are deleted afterwards. ``overrides`` go to
        ``Settings.with_overrides``.

        Raises:
            ClusterError: the vhost could not be made (rabbitmqctl).
            psycopg.Error: the machine's PostgreSQL (``TEST_POSTGRES_URL``, default
                ``postgresql://postgres@127.0.0.1:5432``) refused or does not answer.
        """
        name = f"fs_cluster_{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", name)
        try:
            self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
            url = urllib.parse.urlsplit(self.amqp_url)
            settings = Settings(
                amqp_url=f"{url.scheme}://{url.netloc}/{urllib.parse.quote(name, safe='')}",
                stream_port=int(self.variables["STREAM_PORT"]),
                amqp_addresses_raw=self.amqp_addresses_raw,
                stream_addresses_raw=self.stream_addresses_raw,
                stream_replication_factor=self.replication_factor,
                stream_tls=True if self.variables.get("STREAM_TLS") == "1" else None,
                broker_tls_ca_file=self.variables.get("BROKER_TLS_CA_FILE", ""),
                database_url=f"{postgres_server_url()}/{name}",
                hash_key=new_key(),
                key_encryption_key=new_key(),
                metrics_port=0,
            ).with_overrides(**overrides)
            migrate(settings.database_url)
            try:
                yield settings
            finally:
                drop_database(settings.database_url)
        finally:
            self.ctl("delete_vhost", name)


@contextmanager
def rabbit_cluster(
    tmp_path: Path,
    nodes: int = 3,
    tls: TestCA | None = None,
    tls_only: bool = False,
    name: str | None = None,
) -> Iterator[RabbitCluster]:
    """A cluster of ``nodes`` (1..3) RabbitMQ nodes of its own, up and joined on entry,
    stopped and its folder removed on exit, also when the block fails (the nodes' logs are
    copied to ``tmp_path/cluster-logs`` first, for a failure's post-mortem). Ports: free ones,
    picked now; node names: ``fs-t<random>-N@localhost`` unless ``name``.

    ``tls``: the nodes also listen with TLS, with a server certificate of this CA for 127.0.0.1
    and localhost (made unless the CA's folder has ``server.pem``); ``tls_only``: only with TLS.
    The cluster's folder lives under the system's temporary folder, where the ``rabbitmq`` user
    can enter (pytest's ``tmp_path`` is private to root).

    Raises:
        ClusterError: the script failed (the message has its output; logs in tmp_path).
        ValueError: ``nodes`` is not 1..3, or ``tls_only`` without ``tls``.
    """
    if not 1 <= nodes <= 3:
        raise ValueError(f"nodes={nodes}: 1..3")
    if tls_only and tls is None:
        raise ValueError("tls_only needs tls")
    folder = Path(tempfile.mkdtemp(prefix="fs-cluster-"))
    env = dict(os.environ)
    for variable in [key for key in env if key.startswith("CLUSTER_")]:
        del env[variable]
    env.update(
        {
            "CLUSTER_NAME": name or f"fs-t{uuid.uuid4().hex[:8]}",
            "CLUSTER_DIR": str(folder),
            "CLUSTER_NODES": str(nodes),
            "CLUSTER_BASE_PORT": str(free_base_port()),
        }
    )
    if tls is not None:
        if not (tls.folder / "server.pem").exists():
            tls.server()
        env["CLUSTER_TLS_DIR"] = str(tls.folder)
        env["CLUSTER_TLS_ONLY"] = "1" if tls_only else "0"
    cluster = RabbitCluster(env, tls)
    try:
        cluster.up()
        yield cluster
    finally:
        _keep_logs(folder, tmp_path / "cluster-logs")
        try:
            cluster.down()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _keep_logs(folder: Path, target: Path) -> None:
    for log in folder.glob("node*/log/*.log"):
        destination = target / log.parent.parent.name
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, destination / log.name)
