"""The replay's errors: one root (``ReplayError``, a ``ProcessorError``) and named failures.

Every one of them leaves the live projections untouched: a failed verify or swap drops its shadow
schema and rolls its transaction back, so live processing goes on as if replay never ran.
"""

from __future__ import annotations

from typing import ClassVar

from processor.errors import ExitCode, ProcessorError


class ReplayError(ProcessorError):
    """Root of every error raised on purpose by ``processor.replay``."""


class LiveMovedBackwards(ReplayError):
    """A live checkpoint is below the offset the shadow already reached (someone reset it)."""


class SchemaDrift(ReplayError):
    """The live tables differ from ``projections.tables`` (columns or indexes): swapping the
    shadow in would lose what the migrations added. The message lists the differences."""


class SwapRefused(ReplayError):
    """The swap could not take its locks in time or another replay is swapping; nothing changed."""


class FoldVersionNotKnown(ReplayError):
    """Live is at a fold version the code's rules (``FOLD_RULES``) do not hold: a verify would
    compare the live tables with another rule's results."""

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE
