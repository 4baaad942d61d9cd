"""``processor run`` with several member processes on one machine (``PROCESSOR_PROCESSES``).

One Python process applies batches on one core at most (the GIL). On a machine with more cores,
``processor run`` starts ``PROCESSOR_PROCESSES`` ordinary member processes (``auto``: one per CPU
core, at most one per partition) and supervises them. Each child is the same ``processor run``
as a process started by hand (README "Many processes, on one machine or many"): its own member
id, heartbeat, leases and stream connection; they share the partitions through the leases.

The supervisor itself opens no connection. It:

- forwards SIGINT and SIGTERM to every child (each finishes its batch in flight and exits 0);
- stops the others (SIGTERM) when one child exits, and then exits with the first non-zero
  status of a child (1 for a child killed by a signal), else 0;
- gives child ``k`` (0-based) the metrics port ``PROCESSOR_METRICS_PORT + k``; ``0`` (any free
  port) and ``off`` are passed on as they are;
- on Linux, asks the kernel to send each child SIGTERM when the supervisor dies
  (``PR_SET_PDEATHSIG``), so a supervisor killed with SIGKILL leaves no member behind.

Children run with stdin on ``/dev/null`` and stay in the supervisor's process group, so Ctrl-C in
a terminal and ``just down`` (which signals the group) reach them too. A child ignores SIGINT
until ``processor run`` has installed its handlers, so a Ctrl-C while it imports stops it through
the forwarded SIGTERM, without a traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from processor import tuning
from processor.errors import ExitCode
from processor.settings import ENV_METRICS_PORT, ENV_PROCESSES, Settings

log = logging.getLogger(__name__)

#: Seconds between two checks of the children's exit status.
POLL_S: Final = 0.2
#: Seconds a child may take to stop after SIGTERM before it is killed: the shutdown timeout of
#: its batches, plus the time to leave the group.
CHILD_STOP_TIMEOUT_S: Final = tuning.SHUTDOWN_TIMEOUT_S + 15.0
#: Exit statuses of a child stopped before it had installed its signal handlers (killed by the
#: forwarded signal, or ``ExitCode.INTERRUPTED``): a clean stop when the supervisor asked for it.
_STOPPED_WHILE_STARTING: Final = frozenset(
    {-signal.SIGTERM, -signal.SIGINT, int(ExitCode.INTERRUPTED)}
)
#: ``prctl`` option that sets the signal a child gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG: Final = 1


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU limit of this process's cgroup in whole cores, rounded up (a container's
    ``--cpus`` or a Kubernetes CPU limit: cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``
    over ``cpu.cfs_period_us``); None when there is none or it cannot be read."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        limit, length = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    if limit <= 0 or length <= 0:  # v1 writes -1 for no limit
        return None
    return max(1, math.ceil(limit / length))


def cpu_count() -> int:
    """CPU cores this process may use: its affinity mask (where the OS has one), lowered to its
    cgroup's CPU limit (``cgroup_cpu_limit``); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit is not None else cores)


def process_count(requested: int | None, partitions: int, cpus: int) -> int:
    """How many member processes ``processor run`` starts.

    Args:
        requested: ``PROCESSOR_PROCESSES`` (None = ``auto``).
        partitions: the partition count; more members than partitions would idle.
        cpus: CPU cores available (``cpu_count()``).

    Returns:
        ``requested`` when it is set; for ``auto`` the number of cores, at most the partition
        count, so 1 on a single core.
    """
    if requested is not None:
        return requested
    return max(1, min(cpus, partitions))


def child_metrics_port(port: int | None, index: int) -> str:
    """``PROCESSOR_METRICS_PORT`` of child ``index`` (0-based): ``port + index``; ``0`` (any free
    port) and ``off`` (None) unchanged."""
    if port is None:
        return "off"
    return str(port + index) if port > 0 else "0"


def _prepare_child() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In the child, between fork and exec: ignore SIGINT until the member installs its own
    handler, and on Linux take SIGTERM when the supervisor dies.

    A Ctrl-C on a terminal signals the supervisor and its members at once. A member still
    importing would die of it with a traceback; ignoring it there is quiet, and the supervisor
    forwards SIGTERM anyway. Python keeps an ignored SIGINT ignored at start-up (it only installs
    ``default_int_handler`` over ``SIG_DFL``), and ``processor run`` sets its handler later.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    """Starts ``count`` ``processor run`` member processes and supervises them until they end.

    Args:
        settings: the run's settings (the metrics port of each child comes from it).
        count: member processes to start (>= 2; with 1, run the processor in this process).
        arguments: extra ``processor run`` arguments for every child (``--threads 4``).
        env: the children's base environment (default: this process's).
    """

    def __init__(
        self,
        settings: Settings,
        count: int,
        arguments: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.count = count
        self.arguments = list(arguments)
        self._env = dict(os.environ if env is None else env)
        self._children: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()

    def _start_child(self, index: int) -> subprocess.Popen[bytes]:
        env = dict(self._env)
        env[ENV_PROCESSES] = "1"
        env[ENV_METRICS_PORT] = child_metrics_port(self.settings.metrics_port, index)
        return subprocess.Popen(
            [sys.executable, "-m", "processor", "run", *self.arguments],
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_prepare_child,  # noqa: PLW1509 - the supervisor starts no threads
        )

    def stop(self) -> None:
        """Ask every child to finish its batches in flight and exit (SIGTERM); idempotent."""
        first = not self._stopping.is_set()
        self._stopping.set()
        for child in self._children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        if first:
            log.info("stopping the %d member processes", len(self._children))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping the member processes", signal.Signals(signum).name)
        self.stop()

    def run(self) -> int:
        """Start the children, wait until every one has exited, and return the exit code.

        Returns:
            0 when every child exited 0; else the first non-zero status seen (1 for a child
            ended by a signal).
        """
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for index in range(self.count):
            if self._stopping.is_set():
                break
            self._children.append(self._start_child(index))
        if self._stopping.is_set():
            self.stop()  # a signal that came while the last child was starting
        log.info(
            "processor started %d member processes (pids %s), one per CPU core up to the "
            "partition count unless %s says otherwise",
            len(self._children),
            ", ".join(str(child.pid) for child in self._children),
            ENV_PROCESSES,
        )
        status = self._wait()
        log.info("processor stopped: every member process exited")
        return status

    def _wait(self) -> int:
        status: int = ExitCode.OK
        running = dict(enumerate(self._children))
        deadline: float | None = None
        while running:
            for index, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[index]
                if self._stopping.is_set() and code in _STOPPED_WHILE_STARTING:
                    code = 0
                if code != 0 and status == ExitCode.OK:
                    status = code if code > 0 else ExitCode.FAILURE
                if not self._stopping.is_set():
                    log.log(
                        logging.ERROR if code != 0 else logging.WARNING,
                        "member process %d (pid %d) exited with %d; stopping the others",
                        index,
                        child.pid,
                        code,
                    )
                    self.stop()
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
            if running and deadline is not None and time.monotonic() > deadline:
                for index, child in running.items():
                    log.error(
                        "member process %d (pid %d) still running %.0f s after SIGTERM: killed",
                        index,
                        child.pid,
                        CHILD_STOP_TIMEOUT_S,
                    )
                    child.kill()
                    child.wait()
                status = status or ExitCode.FAILURE
                break
            if running:
                time.sleep(POLL_S)
        return status
