"""Errors of declaring the topology and publishing events."""

from __future__ import annotations

from processor.errors import ProcessorError


class PublishingError(ProcessorError):
    """Root of the errors of ``processor.publishing``."""


class TopologyError(PublishingError):
    """The broker refused or could not be reached to declare the exchange and streams."""


class PublishError(PublishingError):
    """Events were not confirmed by the broker (nack, unroutable, or connection lost).

    Attributes:
        failed: number of events in the call that were not confirmed.
    """

    def __init__(self, message: str, failed: int) -> None:
        super().__init__(message)
        self.failed = failed


class FileUnreadable(PublishingError):
    """The file to publish does not exist, is a directory, or cannot be read."""
