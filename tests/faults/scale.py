"""The size knob of the fault suite: a short version for CI, a long one behind ``FAULTS_LONG=1``.

``just faults`` runs the long version (several minutes); ``just test`` runs the short one.
"""

from __future__ import annotations

import os
from typing import Final, TypeVar

T = TypeVar("T")

#: True when the long version was asked for (``FAULTS_LONG=1``).
LONG: Final = os.environ.get("FAULTS_LONG", "") not in ("", "0")


def size(short: T, long: T) -> T:
    """``long`` under ``FAULTS_LONG=1``, else ``short``."""
    return long if LONG else short
