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


class PartitionCountMismatch(ApplyError):
    """The database holds checkpoints for more partitions than configured (``PARTITIONS``)."""


class OffsetsOutOfOrder(ApplyError):
    """A batch's offsets do not strictly increase after the checkpoint: it is refused whole.

    Offsets may have holes (RabbitMQ gives an offset to the chunk that opens each stream
    segment, which consumers never see); they never go backwards or repeat.
    """


class CheckpointMissing(ApplyError):
    """The partition has no checkpoint row: ``ensure_checkpoints`` was not run for it."""
