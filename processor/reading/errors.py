"""Errors of the read path: the stream protocol, the log's start, and stalled reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from processor.errors import ProcessorError
from processor.settings import stream_name


class ReadError(ProcessorError):
    """Root of the errors of ``processor.reading``."""


class StreamProtocolError(ReadError):
    """The broker refused a request, closed the connection, or sent a frame this reader rejects.

    Attributes:
        code: the stream protocol's response code when the broker answered one (see
            ``processor.reading.client.RESPONSE_CODES``), else None.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StreamDoesNotExist(StreamProtocolError):
    """The stream does not exist on the broker (response code 0x02): retrying will not help;
    the partition's owner must stop (its topology was not declared, or the stream was deleted)."""


class StreamNotAvailable(StreamProtocolError):
    """The stream exists but has no member able to serve now (code 0x06, or a ``MetadataUpdate``
    after its member went away): retry later, on a member the metadata names."""


class AuthenticationFailed(StreamProtocolError):
    """The broker refused the login (codes 0x08, 0x09, 0x0b): wrong credentials or certificate."""


class SaslMechanismUnavailable(StreamProtocolError):
    """The broker does not offer the SASL mechanism ``BROKER_SASL_MECHANISM`` names (code 0x07,
    or absent from the ``SaslHandshake`` answer).

    Attributes:
        offered: the mechanisms the broker offers.
    """

    def __init__(self, message: str, offered: tuple[str, ...] = (), code: int | None = 7) -> None:
        super().__init__(message, code)
        self.offered = offered


class AccessRefused(StreamProtocolError):
    """The user may not do this: the virtual host (code 0x0c) or the stream (code 0x10)."""


class FrameTooLarge(StreamProtocolError):
    """A frame is larger than the negotiated ``frame_max`` (ours or the broker's, code 0x0e)."""


class ReadDeadlineExceeded(StreamProtocolError, TimeoutError):
    """No frame came from the broker for the read deadline (``STREAM_READ_DEADLINE_S``, about two
    heartbeats), or an answer did not come in time: the connection is taken as dead (a silent,
    half-open connection) and given up."""


class BrokerCertificateRejected(ReadError, ConnectionError):
    """TLS to a stream port failed: the broker's certificate is not signed by a trusted CA
    (``BROKER_TLS_CA_FILE``) or does not name the host connected to."""


class BrokerUnreachable(ReadError, ConnectionError):
    """No first-contact address (``STREAM_ADDRESSES``) could be connected to; the message lists
    each address tried with its error."""


class AmqpFormatError(ReadError):
    """A stream entry is not a readable AMQP 1.0 message (it is dead-lettered, not raised on)."""


@dataclass(frozen=True)
class MissingRange:
    """Offsets ``first..last`` (inclusive) of a partition that the log no longer holds."""

    partition: int
    first: int
    last: int

    def describe(self) -> str:
        """``partition 3 (events.p003): offsets 0..1841``."""
        return (
            f"partition {self.partition} ({stream_name(self.partition)}): "
            f"offsets {self.first}..{self.last}"
        )


class LogTruncated(ReadError):
    """The log no longer holds offsets that must be applied: retention removed them.

    Live processing stops the partition (the others go on) and replay refuses to rebuild,
    because going on would skip events silently. Holes inside a stream are not this: RabbitMQ
    gives an offset to each segment's header chunk, which consumers never see.

    Attributes:
        missing: each truncated partition's missing offsets, in partition order.
    """

    def __init__(self, missing: Sequence[MissingRange]) -> None:
        self.missing = tuple(sorted(missing, key=lambda m: m.partition))
        ranges = "; ".join(m.describe() for m in self.missing)
        super().__init__(
            f"the log is truncated: {ranges} are gone (retention removed them); "
            "refusing to skip them"
        )

    @property
    def partitions(self) -> tuple[int, ...]:
        """The truncated partitions."""
        return tuple(m.partition for m in self.missing)


class LogStartUnknown(ReadError):
    """Where a partition's log starts could not be learnt from the broker, so whether offsets
    from ``expected`` are still there is unknown; the caller stops and tries again instead of
    guessing."""

    def __init__(self, partition: int, expected: int, cause: str) -> None:
        super().__init__(
            f"partition {partition}: could not check whether offsets from {expected} are still "
            f"in the log ({cause}); retrying"
        )
        self.partition = partition
        self.expected = expected


class ReadStalled(ReadError):
    """No record arrived from the broker for too long while records were still expected."""
