"""Exit codes and error lines of ``python -m processor`` that need no services."""

from __future__ import annotations

import argparse
import subprocess
import sys

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


def test_a_processor_starts_without_loading_sqlalchemy_alembic_or_rich() -> None:
    # Every processor process imports what `run` needs; these three cost about 0.25 s of CPU
    # per start and are only needed to migrate, rebuild a fold version, or print tables.
    probe = (
        "import sys; from processor import cli; cli.build_parser(); import processor.runtime; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'alembic', 'rich'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
