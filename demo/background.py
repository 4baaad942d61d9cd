"""Starting, tracking and stopping the demo's background processes (processor, API).

The demo leaves the processor and the API running so that the printed URLs answer; ``just down``
stops them. Each process has a record file ``.run/NAME.pid`` and a log ``.run/NAME.log`` in the
working directory.

A process is identified by its pid **and its start time** (field 22 of ``/proc/PID/stat``, in
clock ticks since boot), both read right after the fork. The start time is set by the kernel at
fork and never changes, so it tells a reused pid from ours at any moment of the process's life.
The command line (``/proc/PID/cmdline``) is not used: it reads empty for a few milliseconds
after ``subprocess.Popen`` returns (measured here: 261 of 300 reads right after ``Popen``,
7 ms median, 18 ms at most), which once made the demo take its own just-started API for a
stranger, delete its record and report "the API exited". A record file is removed only when
its process is known to be gone (no such pid, another start time, or a zombie).

Each process leads a session of its own (``start_new_session``), so ``stop`` signals the whole
process group: anything it started stops with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from demo.errors import BackgroundError

RUN_DIR: Final = Path(".run")
#: Log lines quoted when a background process died.
LOG_TAIL_LINES: Final = 15
#: Seconds ``stop`` waits after SIGKILL for the process to be gone.
KILL_WAIT_S: Final = 5.0
_POLL_S: Final = 0.05


@dataclass(frozen=True)
class ProcessRecord:
    """What ``.run/NAME.pid`` holds: enough to recognise the process later.

    Attributes:
        pid: the process id.
        start_ticks: the process's start time in clock ticks since boot (``/proc/PID/stat``
            field 22), or None where ``/proc`` is absent (then the pid alone identifies it).
        command: the argument vector it was started with (for people reading the file).
    """

    pid: int
    start_ticks: int | None
    command: tuple[str, ...] = ()


@dataclass
class BackgroundProcess:
    """A background process: its record, and the ``Popen`` handle when this process started it.

    The handle gives the exit status of a child that died; a process started by an earlier
    command (no handle) is judged by its record alone.
    """

    name: str
    record: ProcessRecord
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id."""
        return self.record.pid

    def alive(self) -> bool:
        """True while the process runs (a zombie counts as gone)."""
        if self.popen is not None:
            return self.popen.poll() is None
        return _alive(self.record)

    def exit_description(self) -> str:
        """How it ended, e.g. ``"exited with code 1"`` or ``"was killed by SIGKILL"``.

        Only a process this one started knows its exit status; others say ``"exited"``.
        """
        code = self.popen.poll() if self.popen is not None else None
        if code is None:
            return "exited"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def death_report(self) -> str:
        """One paragraph for an error message: how it ended and the tail of its log."""
        tail = log_tail(self.name)
        quoted = "\n".join(f"    {line}" for line in tail) if tail else "    (empty log)"
        return (
            f"the {self.name} (pid {self.pid}) {self.exit_description()}; "
            f"last lines of {log_file(self.name)}:\n{quoted}"
        )


def _record_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def log_file(name: str) -> Path:
    """Where a background process writes its log."""
    return RUN_DIR / f"{name}.log"


def log_tail(name: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of the named process's log (empty when there is no log)."""
    try:
        text = log_file(name).read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start_ticks)`` from ``/proc/PID/stat``, or None when there is no such process.

    The second field (the command name) is in parentheses and may itself hold spaces or
    parentheses, so the fields are counted from the last ``)``.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    return fields[0], int(fields[19])


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def _alive(record: ProcessRecord) -> bool:
    """True when the process of ``record`` is still running (not reused, not a zombie).

    A zombie is not reaped here: its parent (a ``Popen`` of this process, or init) collects
    its exit status.
    """
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Another user's process: a reused pid, unless its start time says otherwise below.
        if record.start_ticks is None:
            return False
    if not _has_proc():
        return True
    stat = _proc_stat(record.pid)
    if stat is None:
        return False
    state, start_ticks = stat
    if record.start_ticks is not None and start_ticks != record.start_ticks:
        return False
    return state not in ("Z", "X")


def read_record(name: str) -> ProcessRecord | None:
    """The record of the named process, or None when there is none or it cannot be read.

    Also reads the older format (a bare pid), which then identifies the process by pid alone.
    """
    try:
        text = _record_file(name).read_text().strip()
    except OSError:
        return None
    try:
        if text.isdigit():
            return ProcessRecord(pid=int(text), start_ticks=None)
        data = json.loads(text)
        ticks = data.get("start_ticks")
        return ProcessRecord(
            pid=int(data["pid"]),
            start_ticks=int(ticks) if ticks is not None else None,
            command=tuple(str(part) for part in data.get("command", ())),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_record(name: str, record: ProcessRecord) -> None:
    RUN_DIR.mkdir(exist_ok=True)
    path = _record_file(name)
    partial = path.with_suffix(".pid.partial")
    partial.write_text(
        json.dumps(
            {"pid": record.pid, "start_ticks": record.start_ticks, "command": record.command}
        )
        + "\n"
    )
    partial.replace(path)


def find(name: str) -> BackgroundProcess | None:
    """The named background process when it is running, else None.

    A record whose process is gone is removed; a record that cannot be read is left alone
    (nothing is known about it).
    """
    record = read_record(name)
    if record is None:
        return None
    if not _alive(record):
        _record_file(name).unlink(missing_ok=True)
        return None
    return BackgroundProcess(name, record)


def running_pid(name: str) -> int | None:
    """The pid of the named background process when it is running, else None."""
    process = find(name)
    return process.pid if process is not None else None


def start(name: str, args: list[str], env: dict[str, str] | None = None) -> BackgroundProcess:
    """Start ``python -m processor ARGS`` detached, logging to ``.run/NAME.log``.

    An already running process of that name is kept and returned (without a ``Popen`` handle).

    Args:
        name: the record's name (``processor``, ``api``).
        args: arguments after ``python -m processor``.
        env: the child's environment (None: this process's).

    Raises:
        OSError: the interpreter could not be started or ``.run/`` cannot be written.
    """
    return spawn(name, (sys.executable, "-m", "processor", *args), env)


def spawn(
    name: str, command: Sequence[str], env: dict[str, str] | None = None
) -> BackgroundProcess:
    """Start ``command`` detached in a session of its own and record it as ``name``.

    See ``start``; this is the same for any command.

    Raises:
        OSError: the command could not be started or ``.run/`` cannot be written.
    """
    existing = find(name)
    if existing is not None:
        return existing
    RUN_DIR.mkdir(exist_ok=True)
    with log_file(name).open("ab") as log:
        popen = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    # /proc/PID/stat (unlike cmdline) is complete from the fork on: no window to race.
    stat = _proc_stat(popen.pid) if _has_proc() else None
    record = ProcessRecord(
        pid=popen.pid, start_ticks=stat[1] if stat else None, command=tuple(command)
    )
    _write_record(name, record)
    return BackgroundProcess(name, record, popen)


def _signal_group(record: ProcessRecord, signum: signal.Signals) -> None:
    """Send ``signum`` to the process's group (it leads one), or to the process alone."""
    try:
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, signum)
        else:
            os.kill(record.pid, signum)
    except ProcessLookupError:
        return


def _wait_gone(record: ProcessRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(record):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def stop(name: str, timeout_s: float = 30.0) -> bool:
    """Stop the named process and its process group; True when one was running.

    Sends SIGTERM (the processor finishes its batches in flight, the API its requests) and
    waits up to ``timeout_s`` seconds; then SIGKILL, and up to ``KILL_WAIT_S`` seconds more.

    Raises:
        BackgroundError: it is still alive after SIGKILL.
    """
    process = find(name)
    if process is None:
        return False
    record = process.record
    _signal_group(record, signal.SIGTERM)
    if not _wait_gone(record, timeout_s):
        _signal_group(record, signal.SIGKILL)
        if not _wait_gone(record, KILL_WAIT_S):
            raise BackgroundError(f"{name} (pid {record.pid}) did not stop; see {log_file(name)}")
    _record_file(name).unlink(missing_ok=True)
    return True
