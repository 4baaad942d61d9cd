"""Background process tracking (``demo.background``): the demo's processor and API.

These start real (small) processes; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo import background

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test in its own working directory (``.run/`` is relative); stop what it left."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path / ".run"
    for record in (tmp_path / ".run").glob("*.pid"):
        background.stop(record.stem, timeout_s=5)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie of this test process still answers kill(0): reap it.
    finished, _ = os.waitpid(pid, os.WNOHANG)
    return finished == pid


def test_a_just_started_process_is_running_at_once_every_time() -> None:
    # Regression: /proc/PID/cmdline reads empty for milliseconds after Popen returns, which
    # made the demo take its own API for a stranger and delete its pid file.
    for round_ in range(40):
        name = f"sleeper{round_}"
        started = background.spawn(name, SLEEPER)
        assert background.running_pid(name) == started.pid
        assert started.alive()
        assert background.stop(name, timeout_s=5)


def test_a_record_names_pid_start_time_and_command(run_dir: Path) -> None:
    started = background.spawn("sleeper", SLEEPER)
    data = json.loads((run_dir / "sleeper.pid").read_text())
    assert data["pid"] == started.pid
    assert isinstance(data["start_ticks"], int)
    assert data["command"] == list(SLEEPER)


def test_a_reused_pid_is_not_taken_for_ours(run_dir: Path) -> None:
    # A record whose pid now belongs to another process (another start time) is stale.
    other = background.spawn("other", SLEEPER)
    record = background.read_record("other")
    assert record is not None and record.start_ticks is not None
    stale = {"pid": other.pid, "start_ticks": record.start_ticks - 1, "command": []}
    (run_dir / "stale.pid").write_text(json.dumps(stale))
    assert background.running_pid("stale") is None
    assert not (run_dir / "stale.pid").exists()
    assert background.running_pid("other") == other.pid


def test_a_process_that_died_says_how_and_quotes_its_log() -> None:
    crasher = background.spawn(
        "crasher",
        (sys.executable, "-c", "import sys; print('cannot bind the port'); sys.exit(3)"),
    )
    deadline = time.monotonic() + 30
    while crasher.alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    report = crasher.death_report()
    assert "exited with code 3" in report
    assert "cannot bind the port" in report
    assert background.running_pid("crasher") is None


def test_a_killed_process_names_its_signal() -> None:
    victim = background.spawn("victim", SLEEPER)
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim.alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "killed by SIGKILL" in victim.death_report()


def test_a_zombie_is_not_running() -> None:
    # Not reaped by its parent (this test): /proc says Z, and that is not "running".
    short = background.spawn("short", (sys.executable, "-c", "pass"))
    deadline = time.monotonic() + 30
    while background.running_pid("short") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _gone(short.pid)


def test_stop_ends_the_whole_process_group(run_dir: Path) -> None:
    parent = background.spawn(
        "parent",
        (
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ),
    )
    log = background.log_file("parent")
    deadline = time.monotonic() + 30
    while not log.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child_pid = int(log.read_text().split()[0])
    assert background.stop("parent", timeout_s=10)
    assert parent.popen is not None
    assert parent.popen.wait(timeout=10) is not None
    deadline = time.monotonic() + 30
    while True:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the child of the stopped process is still alive"
        time.sleep(0.05)
    assert not (run_dir / "parent.pid").exists()


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    stubborn = background.spawn(
        "stubborn",
        (
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ),
    )
    log = background.log_file("stubborn")
    deadline = time.monotonic() + 30
    while "ready" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert background.stop("stubborn", timeout_s=0.5)
    assert stubborn.popen is not None
    assert stubborn.popen.wait(timeout=10) == -signal.SIGKILL


def test_stop_of_nothing_running_says_so() -> None:
    assert background.stop("nothing") is False


def test_an_old_bare_pid_record_is_still_read(run_dir: Path) -> None:
    started = background.spawn("sleeper", SLEEPER)
    (run_dir / "sleeper.pid").write_text(f"{started.pid}\n")
    assert background.running_pid("sleeper") == started.pid
