"""Errors of applying batches: fencing, the partition count, and records out of order."""

from __future__ import annotations

from processor.errors import ProcessorError


class ApplyError(ProcessorError):
    """Root of the errors of ``processor.applying``."""


class CheckpointConflict(ApplyError):
    """The partition's checkpoint is not where this owner left it, or another owner took the
    lease since (a higher lease epoch): the transaction is rolled back and the caller has lost
    the partition (a zombie owner is fenced).

    Attributes:
        partition: the partition.
        expected: the committed offset the owner resumed from.
        found: the committed offset the row holds (None: no row, or it moved meanwhile).
    """

    def __init__(self, partition: int, expected: int, found: int | None, detail: str = "") -> None:
        super().__init__(
            f"partition {partition}: checkpoint is {found}, this owner expected {expected}"
            f"{detail}; another owner took over, nothing applied"
        )
        self.partition = partition
        self.expected = expected
        self.found = found


class FoldVersionChanged(CheckpointConflict):
    """The partition's projections are at another fold version than the batch folds with: a
    rebuild with a new rule was swapped in (``processor.versions``). Nothing was applied; the
    owner lets the partition go, and whoever takes it next folds with the version it finds.

    Attributes:
        live_version: the fold version the row holds now.
        batch_version: the version the batch folded with.
    """

    def __init__(self, partition: int, offset: int, live_version: int, batch_version: int) -> None:
        ApplyError.__init__(
            self,
            f"partition {partition}: the projections are at fold version {live_version} now, "
            f"this owner folds with {batch_version}; nothing applied",
        )
        self.partition, self.expected, self.found = partition, offset, offset
        self.live_version = live_version
        self.batch_version = batch_version


class PartitionCountMismatch(ApplyError):
    """The database holds checkpoints for more partitions than configured (``PARTITIONS``)."""


class OffsetsOutOfOrder(ApplyError):
    """A batch's offsets do not strictly increase after the checkpoint: it is refused whole.

    Offsets may have holes (RabbitMQ gives an offset to the chunk that opens each stream
    segment, which consumers never see); they never go backwards or repeat.
    """


class CheckpointMissing(ApplyError):
    """The partition has no checkpoint row: ``ensure_checkpoints`` was not run for it."""


class EventIdFormMismatch(ApplyError):
    """The database answered an event id in another form than the batch keyed it by (the
    batch's keys are PostgreSQL's ``uuid::text``: lower-case 8-4-4-4-12). Refused whole rather
    than risk applying a duplicate as new: a broken invariant, not bad input."""
