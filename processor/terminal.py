"""Owning the terminal's Ctrl-C while a long-running command runs under a wrapper (``just``).

Ctrl-C sends SIGINT to every process of the terminal's foreground process group: to ``just``
as well as to the processor it started. ``just`` then waits for the processor's clean shutdown
but reports ``error: interrupted by SIGINT`` and exits 130 anyway, whatever the processor's
exit status ("regardless of whether a child process terminates successfully after just
receives a fatal signal, just halts execution", just's manual, *Signal Handling*).

A job-control shell avoids this by giving each job its own process group and making it the
foreground group. ``foreground_process_group`` does the same for this process: it moves into a
process group of its own and hands it the terminal, so Ctrl-C reaches only this process; the
wrapper sees a clean exit. On the way out it gives the terminal back to the previous group.
Without a terminal on stdin, or when this process already leads the foreground group (run by
a shell directly), it changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)


def _terminal_fd() -> int | None:
    """The file descriptor of stdin when it is a terminal, else None."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None
    return fd if os.isatty(fd) else None


def _hand_terminal_to(fd: int, group: int) -> bool:
    """Make ``group`` the foreground process group of terminal ``fd``; False when refused.

    A process outside the foreground group gets SIGTTOU for ``tcsetpgrp``; it is ignored for
    the call, as shells do.
    """
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, group)
    except OSError as exc:
        log.debug("could not hand the terminal to process group %d: %s", group, exc)
        return False
    finally:
        signal.signal(signal.SIGTTOU, previous)
    return True


@contextlib.contextmanager
def foreground_process_group() -> Iterator[None]:
    """Run the block as the terminal's foreground process group (see the module docstring)."""
    fd = _terminal_fd()
    if fd is None:
        yield
        return
    try:
        foreground = os.tcgetpgrp(fd)
    except OSError:
        yield
        return
    own_group = os.getpgrp()
    if foreground != own_group or own_group == os.getpid():
        # Not in the foreground (nothing to take), or already leading it (a shell's job).
        yield
        return
    try:
        os.setpgid(0, 0)
    except OSError as exc:
        log.debug("could not start a process group of its own: %s", exc)
        yield
        return
    moved = _hand_terminal_to(fd, os.getpgrp())
    if not moved:
        # Back into the group that has the terminal, so Ctrl-C still reaches this process.
        with contextlib.suppress(OSError):
            os.setpgid(0, own_group)
    try:
        yield
    finally:
        if moved:
            _hand_terminal_to(fd, foreground)
