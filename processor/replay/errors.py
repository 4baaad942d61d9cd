"""The replay's errors: one root (``ReplayError``, a ``ProcessorError``) and named failures.

Every one of them leaves the live projections untouched: a failed verify or swap drops its shadow
schema and rolls its transaction back, so live processing goes on as if replay never ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from processor.errors import ProcessorError


class ReplayError(ProcessorError):
    """Root of every error raised on purpose by ``processor.replay``."""


@dataclass(frozen=True)
class MissingRange:
    """Offsets ``first..last`` (inclusive) of a partition that the log no longer holds."""

    partition: int
    first: int
    last: int


class LogIncomplete(ReplayError):
    """The log does not start at offset 0 in some partitions (retention truncated it).

    A rebuild from such a log would silently miss those events, so replay refuses. There is no
    snapshot to continue from: raise the retention (``STREAM_MAX_AGE``,
    ``STREAM_MAX_LENGTH_BYTES``) before the log is needed again.

    Attributes:
        missing: the missing offset range of each truncated partition.
    """

    def __init__(self, missing: Sequence[MissingRange]) -> None:
        ranges = "; ".join(
            f"partition {m.partition} (events.p{m.partition:03d}): offsets {m.first}..{m.last}"
            for m in missing
        )
        super().__init__(
            f"the log is truncated, replay would skip events and refuses to rebuild: {ranges} "
            "are gone (retention removed them)"
        )
        self.missing = tuple(missing)


class ReplayStalled(ReplayError):
    """No record arrived from the broker for too long while records were still expected."""


class LiveMovedBackwards(ReplayError):
    """A live checkpoint is below the offset the shadow already reached (someone reset it)."""


class SchemaDrift(ReplayError):
    """The live tables differ from ``projections.tables`` (columns or indexes): swapping the
    shadow in would lose what the migrations added. The message lists the differences."""


class SwapRefused(ReplayError):
    """The swap could not take its locks in time or another replay is swapping; nothing changed."""
