"""Stream chunks into log records: the one place live processing and replay turn entries
(AMQP 1.0 messages, or sub-entry batches that cannot be unpacked) into ``LogRecord`` values.

A readable message becomes a record with its body and the routing key it was published with
(``x-routing-key``). An entry that is not a readable message, and a sub-entry batch the reader
cannot unpack, become records that carry an ``error``: the batch dead-letters them and the
checkpoint moves past every offset they cover, so one bad entry never stops its partition.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from processor.amqp_body import AmqpFormatError, read_message
from processor.wire import ChunkEntry, UnreadableEntry
from projections.batch import LogRecord

#: The reason prefix of an entry that is not an AMQP 1.0 message.
NOT_A_MESSAGE = "stream entry is not an AMQP 1.0 message"


def unreadable_reason(exc: AmqpFormatError) -> str:
    """The dead-letter reason of an entry that is not an AMQP 1.0 message."""
    return f"{NOT_A_MESSAGE}: {exc}"


def entry_record(offset: int, entry: ChunkEntry) -> LogRecord:
    """The log record of one chunk item at ``offset`` (never raises: bad entries carry an
    ``error``)."""
    if isinstance(entry, UnreadableEntry):
        return LogRecord(
            offset,
            entry.raw,
            f"unreadable stream entry ({entry.records} records from offset {offset}): "
            f"{entry.reason}",
            records=entry.records,
        )
    try:
        body, routing_key = read_message(entry)
    except AmqpFormatError as exc:
        return LogRecord(offset, bytes(entry), unreadable_reason(exc))
    return LogRecord(offset, body, routing_key=routing_key)


def chunk_records(first_offset: int, entries: Sequence[ChunkEntry]) -> Iterator[LogRecord]:
    """The records of a chunk in offset order, starting at ``first_offset``."""
    offset = first_offset
    for entry in entries:
        record = entry_record(offset, entry)
        offset = record.last_offset + 1
        yield record


def chunk_span(entries: Sequence[ChunkEntry]) -> int:
    """How many offsets a chunk's items cover."""
    return sum(entry.records if isinstance(entry, UnreadableEntry) else 1 for entry in entries)
