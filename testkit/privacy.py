"""Finding children's data in what processes wrote (docs/contract.md: logs at INFO and above
name no child and carry no payload). Test support, shared by the integration and fault tests."""

from __future__ import annotations

import re
from collections.abc import Mapping
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


def leaks(texts: Mapping[str, str], pattern: re.Pattern[str] = PERSONAL) -> list[str]:
    """Every line of ``texts`` (source name -> text) where ``pattern`` finds personal data."""
    found = []
    for source, text in texts.items():
        for number, line in enumerate(text.splitlines(), start=1):
            match = pattern.search(line)
            if match:
                found.append(f"{source}:{number}: {match.group(0)!r} in {line[:200]!r}")
    return found


def log_files(folder: Path) -> dict[str, str]:
    """The ``*.log`` files under ``folder``, by path."""
    return {str(p): p.read_text(errors="replace") for p in sorted(folder.rglob("*.log"))}
