"""The processor's exception tree: one root, a few named failures, each carrying its cause."""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of every error raised on purpose by the processor package."""


class TopologyError(ProcessorError):
    """The broker refused or could not be reached to declare the exchange and streams."""


class PublishError(ProcessorError):
    """Events were not confirmed by the broker (nack, unroutable, or connection lost).

    Attributes:
        failed: number of events in the call that were not confirmed.
    """

    def __init__(self, message: str, failed: int) -> None:
        super().__init__(message)
        self.failed = failed


class LogTruncated(ProcessorError):
    """A partition's log no longer holds the offsets after its checkpoint (retention removed them).

    Attributes:
        partition: the partition.
        expected: the offset the owner needed next.
        first_available: the first offset the broker delivered.
    """

    def __init__(self, partition: int, expected: int, first_available: int) -> None:
        super().__init__(
            f"partition {partition}: the log was truncated, offsets "
            f"{expected}..{first_available - 1} are gone "
            f"(first available {first_available}); refusing to skip them"
        )
        self.partition = partition
        self.expected = expected
        self.first_available = first_available


class LogStartUnknown(ProcessorError):
    """The start of a partition's log could not be checked after a hole at the subscription's
    first record; the owner stops the partition and tries again instead of guessing."""

    def __init__(self, partition: int, expected: int, cause: str) -> None:
        super().__init__(
            f"partition {partition}: could not check whether offsets from {expected} are still "
            f"in the log ({cause}); retrying"
        )
        self.partition = partition
        self.expected = expected
