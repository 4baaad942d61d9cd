"""Starting and stopping the demo's background processes (processor, API) with pid files.

The demo leaves the processor and the API running so that the printed URLs answer; ``just down``
stops them. Pid and log files live in ``.run/`` of the working directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

RUN_DIR: Final = Path(".run")


class BackgroundError(RuntimeError):
    """A background process did not start or did not stop in time (names its log file)."""


def _pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def log_file(name: str) -> Path:
    """Where a background process writes its log."""
    return RUN_DIR / f"{name}.log"


def running_pid(name: str) -> int | None:
    """The pid of the named background process when it is alive, else None."""
    path = _pid_file(name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    except PermissionError:
        return None
    if not _is_ours(pid):
        # The pid was reused by an unrelated process: the file is stale.
        path.unlink(missing_ok=True)
        return None
    return pid


def _is_ours(pid: int) -> bool:
    """True when ``pid`` runs ``python -m processor`` (checked through /proc where it exists)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        arguments = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"processor" in arguments


def start(name: str, args: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``python -m processor ARGS`` detached, logging to ``.run/NAME.log``; returns its pid.

    An already running process of that name is kept (its pid is returned).
    """
    existing = running_pid(name)
    if existing is not None:
        return existing
    RUN_DIR.mkdir(exist_ok=True)
    with log_file(name).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "processor", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    _pid_file(name).write_text(str(process.pid))
    return process.pid


def stop(name: str, timeout_s: float = 30.0) -> bool:
    """SIGTERM the named process and wait for it to exit; True when one was running.

    Raises:
        BackgroundError: it is still alive after ``timeout_s`` seconds.
    """
    pid = running_pid(name)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _pid_file(name).unlink(missing_ok=True)
            return True
        time.sleep(0.1)
    raise BackgroundError(f"{name} (pid {pid}) did not stop; see {log_file(name)}")
