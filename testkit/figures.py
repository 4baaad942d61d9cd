"""The figures table a test suite prints at its end (fault scenarios, cluster scenarios)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def print_figures(
    terminalreporter: pytest.TerminalReporter, title: str, table: str, env_name: str
) -> None:
    """Print ``table`` (Markdown) under a ``title`` rule at the end of the session, and write
    it to the file named by the environment variable ``env_name`` when that is set."""
    terminalreporter.write_sep("=", title)
    terminalreporter.write_line(table)
    target = os.environ.get(env_name)
    if target:
        Path(target).write_text(table + "\n")
        terminalreporter.write_line(f"(written to {target})")
