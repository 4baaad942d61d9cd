"""Errors of fold versions."""

from __future__ import annotations

from typing import ClassVar

from processor.errors import ExitCode, ProcessorError


class VersionsError(ProcessorError):
    """Root of the errors of ``processor.versions``."""


class FoldVersionUnknown(VersionsError):
    """The live projections are at a fold version this code cannot serve: newer than it
    knows, or older than the version before its current one. The processor stops before it
    writes (the message names both and what to do)."""

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE


class BuildCheckFailed(VersionsError):
    """A rebuilt shadow differs from the pure fold of the log with the same rule: it is not
    swapped in (the message names how many children differ, by ``user_ref``)."""
