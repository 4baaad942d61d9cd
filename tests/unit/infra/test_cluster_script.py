"""infra/cluster.sh's decisions that need no running node: its parameters, the layout of ports
and names, the ``env`` and ``status`` output of a cluster folder written as ``up`` leaves it,
and testkit.rabbit_nodes's parsing of them. Real nodes: tests/integration/infra and
tests/cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from processor.settings import Settings
from testkit.rabbit_nodes import free_base_port, parse_env, parse_status

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "infra" / "cluster.sh"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("CLUSTER_")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def saved_cluster(folder: Path, nodes: int = 3, base: int = 30000, tls_dir: str = "") -> Path:
    """A cluster folder as ``up`` leaves it (no node running)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cluster.env").write_text(
        f"NODES={nodes}\nBASE_PORT={base}\nTLS_DIR='{tls_dir}'\nTLS_ONLY={1 if tls_dir else 0}\n"
    )
    return folder


def test_env_points_the_product_at_every_node(tmp_path: Path) -> None:
    folder = saved_cluster(tmp_path / "c")
    result = run("env", CLUSTER_NAME="fs-u", CLUSTER_DIR=str(folder))
    assert result.returncode == 0, result.stderr
    variables = parse_env(result.stdout)
    assert variables == {
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:30000/%2F",
        "AMQP_ADDRESSES": "127.0.0.1:30000,127.0.0.1:30010,127.0.0.1:30020",
        "STREAM_ADDRESSES": "127.0.0.1:30001,127.0.0.1:30011,127.0.0.1:30021",
        "STREAM_PORT": "30001",
        "STREAM_REPLICATION_FACTOR": "3",
    }
    settings = Settings.from_env(variables)
    assert settings.amqp_addresses == (
        ("127.0.0.1", 30000),
        ("127.0.0.1", 30010),
        ("127.0.0.1", 30020),
    )
    assert settings.stream_addresses[2] == ("127.0.0.1", 30021)
    assert settings.stream_replication_factor == 3


def test_env_with_tls_points_at_the_tls_listeners_with_the_ca(tmp_path: Path) -> None:
    folder = saved_cluster(tmp_path / "c", nodes=1, tls_dir=str(tmp_path / "ca"))
    result = run("env", CLUSTER_DIR=str(folder))
    assert result.returncode == 0, result.stderr
    variables = parse_env(result.stdout)
    assert variables["AMQP_URL"] == "amqps://guest:guest@127.0.0.1:30004/%2F"
    assert variables["STREAM_ADDRESSES"] == "127.0.0.1:30005"
    assert variables["STREAM_TLS"] == "1"
    assert variables["BROKER_TLS_CA_FILE"] == f"{folder}/tls/ca.pem"
    settings = Settings.from_env(variables)
    assert settings.amqp_tls and settings.stream_tls_enabled


def test_status_lists_each_node_with_its_own_ports_and_name(tmp_path: Path) -> None:
    folder = saved_cluster(tmp_path / "c", nodes=2, base=31000)
    result = run("status", CLUSTER_NAME="fs-u", CLUSTER_DIR=str(folder))
    assert result.returncode == 0, result.stderr
    cluster, nodes = parse_status(result.stdout)
    assert cluster["name"] == "fs-u" and cluster["nodes"] == "2" and cluster["tls"] == "0"
    assert [node.name for node in nodes] == ["fs-u-1@localhost", "fs-u-2@localhost"]
    assert not any(node.running for node in nodes)
    second = nodes[1]
    assert (second.amqp_port, second.stream_port, second.management_port, second.dist_port) == (
        31010,
        31011,
        31012,
        31013,
    )
    assert second.amqps_port is None and second.streams_port is None
    machine = {5672, 5552, 15672, 25672}
    assert not machine & {port for node in nodes for port in (node.amqp_port, node.dist_port)}


def test_the_saved_parameters_win_over_the_environment(tmp_path: Path) -> None:
    folder = saved_cluster(tmp_path / "c", nodes=1, base=30000)
    result = run("env", CLUSTER_DIR=str(folder), CLUSTER_NODES="3", CLUSTER_BASE_PORT="40000")
    assert parse_env(result.stdout)["AMQP_ADDRESSES"] == "127.0.0.1:30000"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("kill", "4"), {}, "node number 4: 1..3"),
        (("start", "x"), {}, "node number x"),
        (("stop",), {}, "node number (none)"),
        (("status",), {"CLUSTER_NODES": "4"}, "CLUSTER_NODES=4"),
        (("status",), {"CLUSTER_BASE_PORT": "80"}, "CLUSTER_BASE_PORT=80"),
        (("status",), {"CLUSTER_TLS_ONLY": "1"}, "CLUSTER_TLS_ONLY=1 needs CLUSTER_TLS_DIR"),
        (("status",), {"CLUSTER_NAME": "a b"}, "CLUSTER_NAME=a b"),
    ],
)
def test_bad_parameters_stop_with_a_message(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    folder = tmp_path / "c"
    if args[0] != "status":
        saved_cluster(folder)
    result = run(*args, CLUSTER_DIR=str(folder), **env)
    assert result.returncode == 1
    assert message in result.stderr


def test_commands_on_a_missing_cluster_say_so(tmp_path: Path) -> None:
    for command in (("env",), ("status",), ("kill", "1"), ("ctl", "1", "status")):
        result = run(*command, CLUSTER_DIR=str(tmp_path / "none"))
        assert result.returncode == 1
        assert "no cluster at" in result.stderr


def test_down_leaves_a_folder_it_did_not_make_alone(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious").write_text("x")
    result = run("down", CLUSTER_DIR=str(folder))
    assert result.returncode == 1 and (folder / "precious").exists()
    assert run("down", CLUSTER_DIR=str(tmp_path / "none")).returncode == 0


def test_an_unknown_command_prints_the_usage() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "Usage: infra/cluster.sh COMMAND" in result.stderr and "kill N" in result.stderr


def test_parse_env_refuses_other_lines() -> None:
    assert parse_env("export A='x y'\n\nexport B=2\n") == {"A": "x y", "B": "2"}
    with pytest.raises(ValueError, match="not an export line"):
        parse_env("A=1")


def test_a_free_base_port_has_forty_free_ports_away_from_the_machine_broker() -> None:
    base = free_base_port()
    assert base >= 20000 and base + 40 <= 32000
    assert not base <= 25672 < base + 40


def test_the_script_is_shellcheck_clean() -> None:
    beside = Path(sys.executable).with_name("shellcheck")
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing: pip install -e '.[dev]' brings it"
    result = subprocess.run(
        [shellcheck, str(SCRIPT)], capture_output=True, text=True, check=False, env=os.environ
    )
    assert result.returncode == 0, result.stdout
