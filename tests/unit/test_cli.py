"""Exit codes and error lines of ``python -m processor`` that need no services."""

from __future__ import annotations

import argparse

import pytest

from processor import cli
from processor.settings import Settings


def test_ctrl_c_while_a_command_starts_is_exit_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: Ctrl-C during the imports of `run` printed a 40-line traceback.
    def interrupted(_settings: Settings, _args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_migrate", interrupted)
    assert cli.main(["migrate"]) == cli.ExitCode.INTERRUPTED == 130
    assert "Traceback" not in capsys.readouterr().err


def test_a_missing_file_is_one_line_without_a_class_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert cli.main(["publish", "/nonexistent/events.jsonl"]) == cli.ExitCode.FAILURE
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["no such file: /nonexistent/events.jsonl"]
