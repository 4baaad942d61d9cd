"""Errors of declaring the topology and publishing events."""

from __future__ import annotations

from collections.abc import Sequence

from processor.errors import ProcessorError


class PublishingError(ProcessorError):
    """Root of the errors of ``processor.publishing``."""


class TopologyError(PublishingError):
    """The broker refused or could not be reached to declare the exchange and streams."""


class PublishError(PublishingError):
    """Events were not confirmed by the broker (nack, unroutable, or connection lost).

    Attributes:
        failed: number of events in the call that were not confirmed.
        unconfirmed: those events, in publish order, when the publisher knows them (a
            ``processor.publishing.publisher.OutgoingEvent`` each); publishing them again is
            safe (the processor applies an ``event_id`` once).
    """

    def __init__(self, message: str, failed: int, unconfirmed: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.failed = failed
        self.unconfirmed = list(unconfirmed)


class PublisherClosed(PublishError):
    """The publisher's connection closed before the events were sent, and it may not reconnect
    by itself; nothing was published."""


class BrokerUnreachable(PublishError):
    """No broker node accepted a connection; nothing was published.

    Attributes:
        reasons: ``("host:port", reason)`` for each node tried, in the order tried.
    """

    def __init__(self, reasons: Sequence[tuple[str, str]]) -> None:
        self.reasons = list(reasons)
        tried = "; ".join(f"{address}: {reason}" for address, reason in self.reasons)
        if len(self.reasons) == 1:
            message = f"cannot connect to the broker at {tried}"
        else:
            message = f"cannot connect to any of the {len(self.reasons)} broker nodes: {tried}"
        super().__init__(message, 0)


class FileUnreadable(PublishingError):
    """The file to publish does not exist, is a directory, or cannot be read."""
