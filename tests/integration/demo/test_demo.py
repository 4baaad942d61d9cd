"""``just demo`` and ``just down`` as a new user runs them, again and again.

Each cycle runs ``python -m processor demo`` then ``python -m processor down`` as separate
processes, in a working directory of the test's own (``.run/`` lives there), on the test's own
vhost, database and API port. The first-run failure this guards against was intermittent (one
demo in five): the demo took its just-started API for a stranger.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from demo import background
from demo.background import read_record
from processor.settings import Settings
from testkit.privacy import leaks
from testkit.tls import TestCA
from tests.integration.support import run_command, settings_env

#: demo + down cycles per test run.
CYCLES = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _command(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_command(args, env, cwd=cwd)


def _totals(stdout: str) -> dict[str, str]:
    """The summary table's rows (users, events applied, dead letters) and the level counts."""
    rows = dict(
        re.findall(r"[│┃] (users \(children\)|events applied|dead letters) *│ (\d+)", stdout)
    )
    levels = dict(
        re.findall(r"│ (stranger|acquaintance|buddy|friend|best_friend) +│ +(\d+) │", stdout)
    )
    return rows | {f"level {name}": count for name, count in levels.items()}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"


def _wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def demo_env(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The demo's environment: the test's vhost and database, and a free API port.

    The test runs in ``tmp_path`` too, so ``read_record`` finds the demo's ``.run/``; whatever
    the demo left running is stopped afterwards, even when the test failed.
    """
    monkeypatch.chdir(tmp_path)
    env = settings_env(settings.with_overrides(api_port=_free_port()))
    env["SECRETS_DIR"] = str(tmp_path / "secrets")  # principals.json: the keys are inline
    env["TERM"] = "dumb"
    env["COLUMNS"] = "100"
    yield env
    for name in ("api", "processor"):
        background.stop(name, timeout_s=10)


def test_demo_then_down_again_and_again_same_totals_nothing_left_running(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    port = int(demo_env["API_PORT"])
    totals = []
    for cycle in range(CYCLES):
        demo = _command(["demo"], demo_env, tmp_path)
        assert demo.returncode == 0, f"cycle {cycle}: {demo.stdout}\n{demo.stderr}"
        assert "DemoError" not in demo.stderr
        totals.append(_totals(demo.stdout))
        assert totals[-1]["events applied"] == "36750", demo.stdout
        assert totals[-1]["users (children)"] == "200", demo.stdout
        found = leaks({"demo stdout": demo.stdout, "demo stderr": demo.stderr})
        assert not found, "the demo printed personal data:\n" + "\n".join(found[:20])
        records = [read_record(name) for name in ("processor", "api")]
        pids = [record.pid for record in records if record is not None]
        assert len(pids) == 2, f"cycle {cycle}: the demo's pid records: {records}"
        assert _port_open(port)
        if cycle > 0:  # the console wraps lines: compare with whitespace collapsed
            assert "Every event was already applied by an earlier run" in " ".join(
                demo.stdout.split()
            )

        down = _command(["down"], demo_env, tmp_path)
        assert down.returncode == 0, down.stderr
        assert "stopped the background api and processor" in down.stderr
        for pid in pids:
            assert _wait_gone(pid), f"cycle {cycle}: pid {pid} still runs after `down`"
        assert not _port_open(port), f"cycle {cycle}: the API port still answers after `down`"
    assert all(t == totals[0] for t in totals), totals
    again = _command(["down"], demo_env, tmp_path)
    assert again.returncode == 0
    assert "nothing to stop" in again.stderr


def test_the_demo_runs_again_after_one_of_its_children_was_erased(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    first = _command(["demo"], demo_env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    erased = _command(["erase", "child-025"], demo_env, tmp_path)
    assert erased.returncode == 0, erased.stderr
    _command(["down"], demo_env, tmp_path)
    again = _command(["demo"], demo_env, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "events of erased children left out" in " ".join(again.stdout.split())
    totals = _totals(again.stdout)
    assert totals["users (children)"] == "199", again.stdout
    assert int(totals["events applied"]) < int(_totals(first.stdout)["events applied"])


def test_demo_refuses_an_api_port_held_by_a_process_it_did_not_start(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    port = int(demo_env["API_PORT"])
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        demo = _command(["demo"], demo_env, tmp_path)
    try:
        assert demo.returncode == 1
        assert f"127.0.0.1:{port} is already in use by a process the demo did not start" in (
            demo.stderr
        )
        assert read_record("api") is None
    finally:
        down = _command(["down"], demo_env, tmp_path)
    assert down.returncode == 0


def test_the_demo_serves_its_api_over_https_and_prints_curl_lines_that_verify_it(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.server()
    demo_env |= {"API_TLS_CERT_FILE": str(server.cert), "API_TLS_KEY_FILE": str(server.key)}
    port = demo_env["API_PORT"]
    try:
        demo = _command(["demo"], demo_env, tmp_path)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        flat = " ".join(demo.stdout.split())
        assert f"curl --cacert {server.cert} " in flat
        assert f"https://127.0.0.1:{port}/v1/stats" in flat
        verified = ssl.create_default_context(cafile=ca.ca_file)
        assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=verified).status_code == 200
    finally:
        down = _command(["down"], demo_env, tmp_path)
    assert down.returncode == 0, down.stderr
    assert not _port_open(int(port))


def test_the_demo_with_two_member_processes_prints_both_metrics_urls_and_down_stops_all(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    env = demo_env | {"PROCESSOR_PROCESSES": "2"}  # what `auto` starts on a 2-core machine
    demo = _command(["demo"], env, tmp_path)
    assert demo.returncode == 0, f"{demo.stdout}\n{demo.stderr}"
    assert _totals(demo.stdout)["events applied"] == "36750", demo.stdout
    log = background.log_file("processor").read_text()
    started = re.search(r"started 2 member processes \(pids (\d+), (\d+)\)", log)
    assert started is not None, log
    members = [int(pid) for pid in started.groups()]
    assert demo.stdout.count("(the processor's own metrics: friendship_processor_*)") == 2
    record = read_record("processor")
    assert record is not None
    down = _command(["down"], env, tmp_path)
    assert down.returncode == 0, down.stderr
    for pid in [record.pid, *members]:
        assert _wait_gone(pid), f"pid {pid} still runs after `down`"
