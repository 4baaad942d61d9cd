"""``infra/services.sh`` decisions, tested without installing, stopping or restarting anything.

Each test runs the real script with a PATH of its own: the basic tools it needs, plus small
stubs (``apt-get``, ``sudo``, ``docker``, ``id``, ``rabbitmq-*``) that record how they were
called and never do more. The ports it checks point at closed ports, so the machine's own
servers are invisible to it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "services.sh"
BASIC_TOOLS = ("bash", "env", "cat", "grep", "sed", "sort", "head", "ls", "printf", "sleep")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Machine:
    """A PATH with only the basic tools and the stubs a test adds; ``calls`` logs stub calls."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.calls = root / "calls.log"
        self.calls.touch()
        for tool in BASIC_TOOLS:
            found = shutil.which(tool)
            assert found is not None, tool
            (self.bin / tool).symlink_to(found)

    def stub(self, name: str, exit_code: int = 0, output: str = "") -> None:
        script = self.bin / name
        script.write_text(
            "#!/bin/bash\n"
            f'echo "{name} $*" >> {self.calls}\n'
            + (f"echo '{output}'\n" if output else "")
            + f"exit {exit_code}\n"
        )
        script.chmod(0o755)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": str(self.bin),
            "HOME": str(self.bin.parent),
            "SERVICES_AMQP_PORT": str(_closed_port()),
            "SERVICES_STREAM_PORT": str(_closed_port()),
            "SERVICES_MANAGEMENT_PORT": str(_closed_port()),
            "SERVICES_POSTGRES_PORT": str(_closed_port()),
        }
        return subprocess.run(
            [str(self.bin / "bash"), str(SCRIPT), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def called(self) -> list[str]:
        """Calls of the stubs, but ``id`` (asked for the user, harmless)."""
        return [c for c in self.calls.read_text().splitlines() if not c.startswith("id ")]


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_root_with_apt_installs_both_servers_with_apt_get(machine: Machine) -> None:
    machine.stub("id", output="0")
    machine.stub("apt-get")
    result = machine.run("--plan")
    assert result.returncode == 0, result.stderr
    assert "installing rabbitmq-server postgresql with apt-get" in result.stderr
    assert "plan: apt-get update; apt-get install -y rabbitmq-server postgresql" in result.stderr
    assert machine.called() == []  # a plan changes nothing


def test_sudo_without_a_password_counts_as_allowed(machine: Machine) -> None:
    machine.stub("id", output="1000")
    machine.stub("sudo")
    machine.stub("apt-get")
    result = machine.run("--plan")
    assert result.returncode == 0, result.stderr
    assert "with apt-get" in result.stderr
    assert machine.called() == ["sudo -n true"]


def test_no_privilege_and_no_docker_stops_with_the_exact_commands(machine: Machine) -> None:
    machine.stub("id", output="1000")
    machine.stub("sudo", exit_code=1)  # asks for a password
    machine.stub("apt-get")
    result = machine.run()
    assert result.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y rabbitmq-server postgresql" in (
        result.stderr
    )
    assert "docker compose -f infra/compose.yaml up -d" in result.stderr
    assert "RabbitMQ 3.9 or newer" in result.stderr
    assert not any(call.startswith("apt-get") for call in machine.called())


def test_a_docker_engine_runs_the_compose_file(machine: Machine) -> None:
    machine.stub("id", output="1000")
    machine.stub("docker")  # `docker info` answers: an engine runs
    result = machine.run("--plan")
    assert result.returncode == 0, result.stderr
    assert "from infra/compose.yaml (Docker)" in result.stderr
    assert "plan: docker compose -f" in result.stderr


def test_a_broker_whose_plugins_cannot_be_enabled_online_is_not_restarted(
    machine: Machine, tmp_path: Path
) -> None:
    # The broker "runs" (its AMQP port answers); enabling the plugins online fails.
    machine.stub("id", output="0")
    machine.stub("rabbitmq-server")
    machine.stub("rabbitmqctl")
    machine.stub("rabbitmq-plugins", exit_code=1)
    machine.stub("pg_ctlcluster")
    with socket.socket() as amqp, socket.socket() as postgres:
        for server in (amqp, postgres):
            server.bind(("127.0.0.1", 0))
            server.listen()
        env_ports = {
            "SERVICES_AMQP_PORT": str(amqp.getsockname()[1]),
            "SERVICES_POSTGRES_PORT": str(postgres.getsockname()[1]),
        }
        env = {
            "PATH": str(machine.bin),
            "HOME": str(tmp_path),
            "SERVICES_STREAM_PORT": str(_closed_port()),
            "SERVICES_MANAGEMENT_PORT": str(_closed_port()),
            **env_ports,
        }
        result = subprocess.run(
            [str(machine.bin / "bash"), str(SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "infra/services.sh --allow-restart" in result.stderr
    calls = machine.called()
    assert any(call.startswith("rabbitmq-plugins enable") for call in calls)
    assert not any("stop" in call for call in calls), calls
    assert not any(call.startswith("rabbitmq-server") for call in calls), calls


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("rabbitmqctl", "psql")),
    reason="needs the machine's RabbitMQ and PostgreSQL",
)
def test_on_this_machine_the_script_is_quick_and_safe_to_run_twice() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICES_")}
    for _ in range(2):
        result = subprocess.run(
            ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "are ready" in result.stderr
        assert "restart" not in result.stderr
