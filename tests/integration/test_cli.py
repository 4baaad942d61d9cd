"""The command line as a new user meets it: messages, exit codes and a clean Ctrl-C.

Every command runs as a real process (``python -m processor ...`` or ``just ...``) against the
test's own vhost and database.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import pytest

from processor.privacy.crypto import envelope_of
from processor.privacy.erasure import erase_user
from processor.privacy.keys import load_keys
from processor.settings import Settings
from projections.database import connect
from tests.integration.support import (
    count,
    drain,
    processor_process,
    read_stream_bodies,
    run_command,
    settings_env,
)

ROOT = Path(__file__).resolve().parents[2]
JUST = shutil.which("just", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


def cli(
    settings: Settings, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m processor ARGS`` for ``settings``; stdout and stderr captured."""
    environment = settings_env(settings)
    environment.update(env or {})
    return run_command(args, environment, timeout_s=timeout)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _event(user: str, delta: int = 1) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "friendship.adjusted",
        "user_id": user,
        "occurred_at": "2024-05-01T10:00:00Z",
        "data": {"delta": delta, "reason": "cli test"},
    }


def test_declaring_the_topology_logs_no_broker_warning(settings: Settings) -> None:
    # A fresh vhost: the partition-count probe asks for streams that do not exist yet.
    result = cli(settings.with_overrides(partitions=16), "topology")
    fresh = cli(settings, "topology")
    for run in (result, fresh):
        assert run.returncode == 0, run.stderr
        assert "WARNING" not in run.stderr
        assert "NOT_FOUND" not in run.stderr
        assert "topology ready" in run.stderr


def test_a_wrong_broker_port_is_one_line_with_host_port_and_reason(settings: Settings) -> None:
    port = _closed_port()
    url = settings.amqp_url.replace(f":{settings.amqp.port}/", f":{port}/")
    result = cli(settings, "topology", env={"AMQP_URL": url})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot connect to the broker at 127.0.0.1:{port}: connection refused" in lines[0]
    assert "Traceback" not in result.stderr


def test_status_says_when_partitions_differs_from_the_broker(settings: Settings) -> None:
    result = cli(settings, "status", env={"PARTITIONS": "8"})
    assert result.returncode == 1
    assert "the broker has 16 partition streams" in result.stderr
    assert "PARTITIONS=8" in result.stderr
    assert "set PARTITIONS=16" in result.stderr
    assert "partition" not in result.stdout  # no table of 8 of the 16


def test_publish_of_a_missing_file_fails_before_connecting(settings: Settings) -> None:
    url = settings.amqp_url.replace(f":{settings.amqp.port}/", f":{_closed_port()}/")
    result = cli(settings, "publish", "/nonexistent/events.jsonl", env={"AMQP_URL": url})
    assert result.returncode == 1
    assert "no such file: /nonexistent/events.jsonl" in result.stderr
    assert "broker" not in result.stderr


def test_publish_names_every_invalid_line_up_to_a_bound(settings: Settings, tmp_path: Path) -> None:
    lines = [json.dumps(_event("cli-user"))]
    lines += ['{"event_id": "x"}'] * 3  # lines 2-4
    lines += ["not json"]  # line 5
    lines += [json.dumps(_event("cli-user") | {"type": "nope"})] * 30  # lines 6-35
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = cli(settings, "publish", str(path))

    assert result.returncode == 1
    assert "34 invalid lines, nothing published" in result.stderr
    for number in (2, 3, 4, 5, 6, 21):
        assert f"{path}:{number}: " in result.stderr
    assert f"{path}:22: " not in result.stderr  # the first 20 are named
    assert "and 14 more invalid lines" in result.stderr
    # Every problem of a line, not only the first: line 2 lacks type, user_id, occurred_at...
    line_2 = next(line for line in result.stderr.splitlines() if f"{path}:2: " in line)
    assert "type: missing" in line_2 and "user_id: missing" in line_2
    assert count(settings, "SELECT count(*) FROM dead_letters") == 0


def test_publish_allow_invalid_says_how_many_will_be_dead_lettered(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(_event("cli-user")), "not json", json.dumps(_event("cli-user")), "{}"]
    path.write_text("\n".join(lines) + "\n")

    result = cli(settings, "publish", str(path), "--allow-invalid")

    assert result.returncode == 0, result.stderr
    assert "published 4 events" in result.stderr
    assert "2 of them are invalid lines, published as they are" in result.stderr
    assert "dead-letters them" in result.stderr
    assert f"{path}:2: " in result.stderr
    assert f"{path}:4: " in result.stderr


def test_publish_encrypts_every_event_and_refuses_an_erased_childs(
    settings: Settings, tmp_path: Path
) -> None:
    with connect(settings.database_url) as conn:
        erase_user(conn, "cli-gone", load_keys(settings))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(_event("cli-kid")) + "\n" + json.dumps(_event("cli-gone")) + "\n")
    refused = cli(settings, "publish", str(mixed))
    assert refused.returncode == 1
    assert "lines 2 are events of erased children; nothing published" in refused.stderr
    assert published_bodies(settings) == []

    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(_event("cli-kid", delta)) for delta in (5, 7)) + "\n")
    result = cli(settings, "publish", str(path))
    assert result.returncode == 0, result.stderr
    bodies = published_bodies(settings)
    assert len(bodies) == 2
    assert all(envelope_of(body) is not None and b"cli test" not in body for body in bodies)
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    assert count(settings, "SELECT score FROM friendships WHERE user_id = 'cli-kid'") == 12


def published_bodies(settings: Settings) -> list[bytes]:
    return [b for p in range(settings.partitions) for b in read_stream_bodies(settings, p)]


def _read_until(master: int, marker: bytes, timeout_s: float) -> bytes:
    """Read the pty until ``marker`` appeared or the child closed it; returns what was read."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            break
        if not chunk:
            break
        seen += chunk
    return seen


def _started_members(output: bytes) -> int:
    """How many member processes logged "processor NAME started:" in ``output``."""
    return len(re.findall(rb"processor \S+:\d+ started: ", output))


def _become_terminal_session() -> None:
    """In the child: take the pty on stdin as the controlling terminal, as a login shell does."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.skipif(JUST is None, reason="just is installed with the dev extra")
@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_stops_just_run_processor_cleanly(settings: Settings, processes: int) -> None:
    # Ctrl-C on a terminal signals the whole foreground group: just too, which then said
    # "error: interrupted by SIGINT" and exited 130 after the processor's clean shutdown.
    # With two member processes, the supervisor's group has the terminal and both stop.
    assert JUST is not None
    master, slave = pty.openpty()
    env = settings_env(settings.with_overrides(processes=processes))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    process = subprocess.Popen(
        [JUST, "run-processor"],
        cwd=ROOT,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_become_terminal_session,  # noqa: PLW1509 - no threads start before exec
    )
    os.close(slave)
    try:
        output = _read_until(master, b"lease taken", timeout_s=120)
        assert b"lease taken" in output, output.decode(errors="replace")
        # Every member installs its handlers before it logs "started": a Ctrl-C before the
        # last member got there is the start-up case, tested in test_supervisor.py.
        while _started_members(output) < processes:
            more = _read_until(master, b" started: ", timeout_s=120)
            assert more, output.decode(errors="replace")
            output += more
        os.write(master, b"\x03")  # Ctrl-C, through the terminal's line discipline
        output += _read_until(master, b"processor-never-prints-this", timeout_s=60)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert text.count("received SIGINT: finishing the batches in flight") == processes, text
    assert len(re.findall(r"processor \S+:\d+ stopped:", text)) == processes, text
    if processes > 1:
        assert "processor stopped: every member process exited" in text
    assert "error: interrupted" not in text
    assert code == 0, text
