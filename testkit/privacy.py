"""Finding children's data in what processes wrote (docs/contract.md: logs at INFO and above
name no child and carry no payload). Test support, shared by the integration and fault tests."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

#: The personal values the tests' events carry: synthetic users (``user-00042``), their
#: conversations (``c-17``) and adjustment reasons, the integration tests' children
#: (``kid-...``) and conversations (``conv-...``), the demo's children (``child-025``) and the
#: Topical-Chat conversation ids (``t_`` + a UUID).
PERSONAL: Final = re.compile(
    r"(?<![\w.:@-])("
    r"user-\d{5}|c-\d+|kid-[\w.:@-]+|conv-[\w.:@-]+|child-\d{3}|"
    r"t_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r")(?![\w.:@-])|adjusted by test \d+"
)


#: Shortest input value looked for as such (shorter ones, ``c1`` or ``probe``, are words a log
#: may hold for other reasons; ``PERSONAL`` covers the tests' usual shapes of any length).
INPUT_MIN_CHARS: Final = 6
#: Most input values kept per test (a Hypothesis test makes thousands; the first are kept).
INPUT_MAX_VALUES: Final = 5_000
_INPUTS: set[str] = set()


def record_inputs(*values: object) -> None:
    """Remember personal values of an event a test made (its ``user_id``, conversation id,
    ``reason``), so the running test's log check looks for them exactly (``leaks``)."""
    for value in values:
        if (
            isinstance(value, str)
            and len(value) >= INPUT_MIN_CHARS
            and len(_INPUTS) < (INPUT_MAX_VALUES)
        ):
            _INPUTS.add(value)


def _inputs_pattern() -> re.Pattern[str] | None:
    if not _INPUTS:
        return None
    choices = "|".join(re.escape(v) for v in sorted(_INPUTS, key=len, reverse=True))
    return re.compile(rf"(?<![\w.:@-])(?:{choices})(?![\w.:@-])")


def leaks(texts: Mapping[str, str], pattern: re.Pattern[str] = PERSONAL) -> list[str]:
    """Every line of ``texts`` (source name -> text) where ``pattern`` finds personal data, or
    where a value of the running test's inputs (``record_inputs``) stands as a word."""
    inputs = _inputs_pattern()
    found = []
    for source, text in texts.items():
        for number, line in enumerate(text.splitlines(), start=1):
            match = pattern.search(line) or (inputs.search(line) if inputs else None)
            if match:
                found.append(f"{source}:{number}: {match.group(0)!r} in {line[:200]!r}")
    return found


def log_files(folder: Path) -> dict[str, str]:
    """The ``*.log`` files under ``folder``, by path."""
    return {str(p): p.read_text(errors="replace") for p in sorted(folder.rglob("*.log"))}


#: What commands the tests ran wrote to stderr (their logs), as ``(source, text)``; the guard
#: checks and clears it after each test (``record_output``).
_OUTPUTS: list[tuple[str, str]] = []


def record_output(source: str, text: str) -> None:
    """Keep a command's log output (stderr) for the running test's ``no_personal_data`` check."""
    _OUTPUTS.append((source, text))


#: The tests' own HTTP client logs every URL it requests (``/v1/users/kid-1/...``): that is the
#: caller's log, not the product's.
TEST_CLIENT_LOGGERS: Final = ("httpx", "httpcore")


class _Records(logging.Handler):
    """Every record at INFO and above that this process logged, formatted as a log file has it
    (message and any traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(TEST_CLIENT_LOGGERS):
            self.lines.append(self.format(record))


@contextmanager
def no_personal_data(tmp_path: Path) -> Iterator[None]:
    """Around one test: afterwards, nothing logged at INFO or above (by this process, by the
    processes that wrote ``*.log`` files under ``tmp_path``, by the commands that
    ``record_output`` saw) names a child or carries a payload (docs/contract.md, "Access").

    Raises:
        AssertionError: the first 20 lines that do, with where they were.
    """
    root = logging.getLogger()
    records, level = _Records(), root.level
    root.addHandler(records)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    _OUTPUTS.clear()
    _INPUTS.clear()
    try:
        yield
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    texts = log_files(tmp_path)
    texts["this process's log records"] = "\n".join(records.lines)
    for number, (source, text) in enumerate(_OUTPUTS):
        texts[f"{source} #{number}"] = text
    _OUTPUTS.clear()
    found = leaks(texts)
    _INPUTS.clear()
    assert not found, "personal data in the logs:\n" + "\n".join(found[:20])
