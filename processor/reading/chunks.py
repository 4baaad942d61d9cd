"""Stream chunks into log records: the one place live processing and replay turn the chunks of
``Deliver`` frames into entries (``chunk_entries``: CRC checked, sub-entry batches unpacked) and
entries (AMQP 1.0 messages, or sub-entry batches that cannot be unpacked) into ``LogRecord``
values. Pure: no I/O.

The chunk format is the stream protocol's (``deps/rabbitmq_stream/docs/PROTOCOL.adoc`` and
``osiris`` in rabbitmq-server): a header (magic and version, chunk type, entries, records,
timestamp, epoch, first offset, CRC-32 of the data, data and trailer lengths), then the entries.
An entry is a 4-byte size and a message, or, with the top bit of its first byte set, a
sub-entry batch: codec, record count, sizes, then the (maybe compressed) records.

A readable message becomes a record with its body and the routing key it was published with
(``x-routing-key``). ``deliver_records`` is the read path's one pass from a ``Deliver`` frame to
its records: each message in the layout RabbitMQ writes for an AMQP 0.9.1 publish (message
annotations with ``x-routing-key`` first, properties, maybe application properties, one ``data``
section ending the entry) is read at fixed places with a handful of byte comparisons on the
frame itself, its body copied once; anything else takes the general section walk
(``amqp_body.read_message``), which gives the same record.

An entry that is not a readable message, and a sub-entry batch the reader
cannot unpack, become records that carry an ``error``: the batch dead-letters them and the
checkpoint moves past every offset they cover, so one bad entry never stops its partition.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from processor.reading.amqp_body import ROUTING_KEY_ANNOTATION, read_message
from processor.reading.errors import AmqpFormatError, StreamProtocolError
from processor.reading.log_record import LogRecord

#: Deliver v1 after the subscription id: magic/version, chunk type, entries, records, timestamp,
#: epoch, first offset, CRC, data length, trailer length, reserved.
_CHUNK: Final = struct.Struct(">BBHIqQQIIII")
_CHUNK_DATA_AT: Final = 5 + _CHUNK.size
_UINT32: Final = struct.Struct(">I")
_SUBENTRY: Final = struct.Struct(">HII")  # records, uncompressed size, size
#: The known layout's pieces (``_known_layout``): message annotations as a map8 whose first key
#: is ``x-routing-key`` with a str8 value; properties as a list8 or list32; application
#: properties as a map8 or map32; the ``data`` section as vbin8 or vbin32.
_ANNOTATIONS_MAP8: Final = b"\x00Sr\xc1"
_ROUTING_KEY_FIRST: Final = (
    b"\xa3" + bytes([len(ROUTING_KEY_ANNOTATION)]) + ROUTING_KEY_ANNOTATION + b"\xa1"
)
_KEY_AT: Final = 6 + len(_ROUTING_KEY_FIRST)
#: Section descriptors (a described section: 0x00, smallulong 0x53, the section's code), and the
#: type codes of the sizes read after them.
_PROPERTIES: Final = b"\x00Ss"
_APPLICATION: Final = b"\x00St"
_DATA: Final = b"\x00Su"
_SIZE8_COMPOUND: Final = (0xC0, 0xC1)  # list8, map8
_SIZE32_COMPOUND: Final = (0xD0, 0xD1)  # list32, map32
_VBIN8: Final = 0xA0
_VBIN32: Final = 0xB0
#: Sub-entry compression codecs of the stream protocol (only 0 and 1 are read here).
_CODECS: Final = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


@dataclass(frozen=True, slots=True)
class UnreadableEntry:
    """A sub-entry batch of a chunk that cannot be unpacked (unknown codec, failed
    decompression, a malformed header): it stands for ``records`` offsets.

    Attributes:
        raw: the sub-entry's bytes as stored, header included.
        records: how many offsets it covers (from its header, or the rest of the chunk when
            the header itself is unreadable).
        reason: why it cannot be read.
    """

    raw: bytes
    records: int
    reason: str


#: One item of a chunk: a message (its AMQP 1.0 bytes, one offset) or an unreadable sub-entry
#: batch (``UnreadableEntry.records`` offsets).
ChunkEntry = memoryview | UnreadableEntry

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


def _known_layout(frame: bytes, offset: int, start: int, stop: int) -> LogRecord | None:
    """The record of the message ``frame[start:stop]`` when it has the layout RabbitMQ writes
    for an AMQP 0.9.1 publish, else None (the caller takes the general walk).

    Each section's size comes from its header; the message is taken only when its one
    ``data`` section ends exactly at ``stop`` (so every size read lies inside the message and
    the body is the one the general walk finds) and the routing key lies inside the
    annotations. Never raises.
    """
    starts = frame.startswith
    if not (starts(_ANNOTATIONS_MAP8, start) and starts(_ROUTING_KEY_FIRST, start + 6)):
        return None
    try:
        key_at = start + _KEY_AT
        key_end = key_at + 1 + frame[key_at]
        pos = start + 5 + frame[start + 4]  # after the annotations map8
        if key_end > pos:
            return None
        pos = _after_section(frame, _after_section(frame, pos, _PROPERTIES), _APPLICATION)
        code = frame[pos + 3] if starts(_DATA, pos) else None
        if code == _VBIN32:
            body_start = pos + 8
            body_end = body_start + _UINT32.unpack_from(frame, pos + 4)[0]
        elif code == _VBIN8:
            body_start = pos + 5
            body_end = body_start + frame[pos + 4]
        else:
            return None
        if body_end != stop:
            return None
        key = frame[key_at + 1 : key_end].decode("utf-8")
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return LogRecord(offset, frame[body_start:stop], None, key)


def _after_section(frame: bytes, pos: int, descriptor: bytes) -> int:
    """After the section at ``pos`` when it is ``descriptor``'s and a list or map (an 8-bit or
    a 32-bit size), else ``pos`` (an optional section that is not there).

    Raises:
        IndexError, struct.error: the frame ends inside the size.
    """
    if not frame.startswith(descriptor, pos):
        return pos
    code = frame[pos + 3]
    if code in _SIZE8_COMPOUND:
        return pos + 5 + frame[pos + 4]
    if code in _SIZE32_COMPOUND:
        return pos + 8 + int(_UINT32.unpack_from(frame, pos + 4)[0])
    return pos


def deliver_records(frame: bytes) -> tuple[int, int, list[LogRecord]]:
    """Split a ``Deliver`` (v1) frame body into its records in one pass. Pure.

    The same records as ``chunk_entries`` then ``chunk_records`` (the tests hold the two
    equal), without a view and a walk per message for the layout RabbitMQ writes.

    Args:
        frame: the frame after its size field (key, version, subscription id, chunk).

    Returns:
        ``(subscription id, first offset, records)``: the chunk's records in offset order,
        unreadable entries and sub-entry batches as records with an ``error``.

    Raises:
        StreamProtocolError: a CRC mismatch, a chunk type other than user data or a
            truncated chunk (the chunk as a whole cannot be trusted).
    """
    subscription_id = frame[4]
    (_, chunk_type, entries, records, _, _, first_offset, crc, data_length, _, _) = (
        _CHUNK.unpack_from(frame, 5)
    )
    end = _CHUNK_DATA_AT + data_length
    if len(frame) < end:
        raise StreamProtocolError("a chunk ends before its data length")
    if chunk_type != 0:
        raise StreamProtocolError(f"chunk type {chunk_type} is not user data")
    view = memoryview(frame)
    if zlib.crc32(view[_CHUNK_DATA_AT:end]) != crc:
        raise StreamProtocolError(f"chunk at offset {first_offset}: CRC mismatch")
    out: list[LogRecord] = []
    offset = first_offset
    pos = _CHUNK_DATA_AT
    unpack_size = _UINT32.unpack_from
    for _ in range(entries):
        if pos >= end:
            break
        if frame[pos] & 0x80 == 0:  # a simple entry: size, then one message
            start = pos + 4
            if start > end:
                raise StreamProtocolError(f"chunk at offset {first_offset}: an entry size is cut")
            pos = start + unpack_size(frame, pos)[0]
            stop = pos if pos <= end else end
            record = _known_layout(frame, offset, start, stop)
            if record is None:
                record = entry_record(offset, view[start:stop])
            out.append(record)
            offset += 1
            continue
        batch: list[ChunkEntry] = []
        data = view[_CHUNK_DATA_AT:end]
        _, after = _read_subentry(
            data, pos - _CHUNK_DATA_AT, max(records - (offset - first_offset), 1), batch
        )
        pos = _CHUNK_DATA_AT + after
        for entry in batch:
            record = entry_record(offset, entry)
            out.append(record)
            offset = record.last_offset + 1
    if offset - first_offset != records:
        raise StreamProtocolError(
            f"chunk at offset {first_offset}: {offset - first_offset} of {records} records"
        )
    return subscription_id, first_offset, out


def records_span(first_offset: int, records: Sequence[LogRecord]) -> int:
    """How many offsets a chunk's records cover (0 for none)."""
    return records[-1].last_offset + 1 - first_offset if records else 0


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


def _unpack_subentry(kind: int, batch: memoryview, count: int) -> list[memoryview]:
    """The records of one sub-entry batch (after decompression).

    Raises:
        ValueError: an unknown codec, a failed decompression or records that do not fit.
    """
    compression = (kind & 0x70) >> 4
    if compression == 1:
        try:
            batch = memoryview(zlib.decompress(batch, wbits=31))
        except zlib.error as exc:
            raise ValueError(f"gzip decompression failed ({exc})") from exc
    elif compression != 0:
        name = _CODECS.get(compression, "unknown")
        raise ValueError(f"sub-entry compression {compression} ({name}) is not supported")
    out: list[memoryview] = []
    inner = 0
    for _ in range(count):
        if inner + 4 > len(batch):
            raise ValueError(f"the sub-entry batch ends after {len(out)} of {count} records")
        (length,) = _UINT32.unpack_from(batch, inner)
        if inner + 4 + length > len(batch):
            raise ValueError(f"record {len(out)} of the sub-entry batch ends outside it")
        out.append(batch[inner + 4 : inner + 4 + length])
        inner += 4 + length
    return out


def chunk_entries(frame: bytes | memoryview) -> tuple[int, int, list[ChunkEntry]]:
    """Split a ``Deliver`` (v1) frame body into its messages. Pure.

    Args:
        frame: the frame after its size field (key, version, subscription id, chunk).

    Returns:
        ``(subscription id, first offset, entries)``: the chunk's first offset and its items in
        offset order (sub-entry batches unpacked). A sub-entry batch that cannot be unpacked
        is one ``UnreadableEntry`` for all its offsets, to be dead-lettered: it stops neither
        the chunk nor its partition.

    Raises:
        StreamProtocolError: a CRC mismatch, a chunk type other than user data or a
            truncated chunk (the chunk as a whole cannot be trusted).
    """
    view = memoryview(frame)
    subscription_id = view[4]
    (_, chunk_type, entries, records, _, _, first_offset, crc, data_length, _, _) = (
        _CHUNK.unpack_from(view, 5)
    )
    data = view[_CHUNK_DATA_AT : _CHUNK_DATA_AT + data_length]
    if len(data) != data_length:
        raise StreamProtocolError("a chunk ends before its data length")
    if chunk_type != 0:
        raise StreamProtocolError(f"chunk type {chunk_type} is not user data")
    if zlib.crc32(data) != crc:
        raise StreamProtocolError(f"chunk at offset {first_offset}: CRC mismatch")
    out: list[ChunkEntry] = []
    covered = 0
    pos = 0
    for _ in range(entries):
        if pos >= data_length:
            break
        if data[pos] & 0x80 == 0:  # a simple entry: size, then one message
            (size,) = _UINT32.unpack_from(data, pos)
            out.append(data[pos + 4 : pos + 4 + size])
            covered += 1
            pos += 4 + size
            continue
        count, pos = _read_subentry(data, pos, max(records - covered, 1), out)
        covered += count
    if covered != records:
        raise StreamProtocolError(f"chunk at offset {first_offset}: {covered} of {records} records")
    return subscription_id, first_offset, out


def _read_subentry(data: memoryview, pos: int, rest: int, out: list[ChunkEntry]) -> tuple[int, int]:
    """Append the records of the sub-entry batch at ``pos`` to ``out``.

    Args:
        data: the chunk's data.
        pos: where the batch starts (its first byte has the top bit set).
        rest: offsets the chunk still owes: what a batch with an untrustworthy header covers.
        out: the chunk's entries so far.

    Returns:
        ``(offsets covered, position after the batch)``; after an untrustworthy header the
        rest of the chunk is one ``UnreadableEntry`` and the position is the chunk's end.
    """
    header_end = pos + 1 + _SUBENTRY.size
    if header_end <= len(data):
        count, _, size = _SUBENTRY.unpack_from(data, pos + 1)
    else:
        count = size = 0
    if header_end > len(data) or header_end + size > len(data) or count == 0:
        reason = f"a sub-entry batch header at byte {pos} of the chunk is malformed"
        out.append(UnreadableEntry(bytes(data[pos:]), rest, reason))
        return rest, len(data)
    try:
        out.extend(_unpack_subentry(data[pos], data[header_end : header_end + size], count))
    except ValueError as exc:
        out.append(UnreadableEntry(bytes(data[pos : header_end + size]), count, str(exc)))
    return count, header_end + size
