"""Stream protocol chunks as the broker sends them in ``Deliver`` frames (no broker needed)."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from processor.reading.chunks import UnreadableEntry, chunk_entries, chunk_records, chunk_span
from processor.reading.errors import StreamProtocolError


def deliver_frame(
    first_offset: int,
    entries: list[bytes],
    *,
    sub_batch: list[bytes] | None = None,
    gzipped: bool = False,
    codec: int | None = None,
    packed_override: bytes | None = None,
    after: tuple[bytes, ...] = (),
    subscription_id: int = 3,
    crc: int | None = None,
) -> bytes:
    """A ``Deliver`` v1 frame (after its size field) as RabbitMQ sends it.

    ``codec`` flags the sub-entry batch with that compression (its bytes stay uncompressed);
    ``packed_override`` replaces its bytes; ``after`` are simple entries after the batch.
    """
    data = b"".join(struct.pack(">I", len(e)) + e for e in entries)
    entry_count, records = len(entries), len(entries)
    if sub_batch is not None:
        inner = b"".join(struct.pack(">I", len(m)) + m for m in sub_batch)
        packed = gzip.compress(inner) if gzipped else inner
        if packed_override is not None:
            packed = packed_override
        kind = 0x80 | ((codec if codec is not None else (1 if gzipped else 0)) << 4)
        data += bytes([kind]) + struct.pack(">HII", len(sub_batch), len(inner), len(packed))
        data += packed
        entry_count += 1
        records += len(sub_batch)
    for entry in after:
        data += struct.pack(">I", len(entry)) + entry
        entry_count += 1
        records += 1
    chunk = struct.pack(
        ">BBHIqQQIIII",
        0x50,
        0,
        entry_count,
        records,
        1_700_000_000_000,
        1,
        first_offset,
        zlib.crc32(data) if crc is None else crc,
        len(data),
        0,
        0,
    )
    return struct.pack(">HHB", 0x0008, 1, subscription_id) + chunk + data


def test_simple_entries_come_out_in_order_with_the_chunk_offset() -> None:
    subscription, first, entries = chunk_entries(deliver_frame(41, [b"a", b"bb", b"ccc"]))
    assert (subscription, first) == (3, 41)
    assert [bytes(e) for e in entries] == [b"a", b"bb", b"ccc"]


@pytest.mark.parametrize("gzipped", [False, True])
def test_sub_entry_batches_are_unpacked_after_the_simple_entries(gzipped: bool) -> None:
    frame = deliver_frame(7, [b"one"], sub_batch=[b"two", b"three"], gzipped=gzipped)
    _, first, entries = chunk_entries(frame)
    assert first == 7
    assert [bytes(e) for e in entries] == [b"one", b"two", b"three"]


def test_a_corrupt_chunk_is_refused() -> None:
    with pytest.raises(StreamProtocolError, match="CRC"):
        chunk_entries(deliver_frame(0, [b"payload"], crc=12345))


def test_a_truncated_chunk_is_refused() -> None:
    frame = deliver_frame(0, [b"payload"])
    with pytest.raises(StreamProtocolError, match="ends before"):
        chunk_entries(frame[:-2])


@pytest.mark.parametrize(
    ("codec", "packed", "reason"),
    [
        (4, None, "sub-entry compression 4 (zstd) is not supported"),
        (2, None, "sub-entry compression 2 (snappy) is not supported"),
        (1, b"not gzip at all", "gzip decompression failed"),
        (0, b"\x00\x00\x00\x09abc", "record 0 of the sub-entry batch ends outside it"),
    ],
)
def test_an_unreadable_sub_entry_batch_is_one_entry_for_all_its_offsets(
    codec: int, packed: bytes | None, reason: str
) -> None:
    # Regression: an unsupported codec raised for the whole chunk, and the reader reconnected
    # and raised again forever, stopping every partition of the connection.
    frame = deliver_frame(
        10,
        [b"before"],
        sub_batch=[b"m1", b"m2", b"m3"],
        codec=codec,
        packed_override=packed,
        after=(b"after",),
    )
    _, first, entries = chunk_entries(frame)
    assert first == 10
    assert bytes(entries[0]) == b"before"  # type: ignore[arg-type]
    unreadable = entries[1]
    assert isinstance(unreadable, UnreadableEntry)
    assert unreadable.records == 3
    assert reason in unreadable.reason
    assert unreadable.raw[0] & 0x80  # the raw sub-entry, header included
    assert bytes(entries[2]) == b"after"  # type: ignore[arg-type]
    assert chunk_span(entries) == 5

    records = list(chunk_records(first, entries))
    assert [(r.offset, r.last_offset) for r in records] == [(10, 10), (11, 13), (14, 14)]
    assert records[1].error is not None
    assert "3 records from offset 11" in records[1].error
    assert reason in records[1].error


def test_a_malformed_sub_entry_header_covers_the_rest_of_the_chunk() -> None:
    frame = bytearray(deliver_frame(0, [b"ok"], sub_batch=[b"m1", b"m2"]))
    # The batch's size field (after kind and records/uncompressed size) claims more bytes.
    size_at = 5 + struct.calcsize(">BBHIqQQIIII") + 4 + 2 + 1 + 2 + 4
    struct.pack_into(">I", frame, size_at, 10_000)
    data_at = 5 + struct.calcsize(">BBHIqQQIIII")
    data = bytes(frame[data_at:])
    struct.pack_into(">I", frame, 5 + struct.calcsize(">BBHIqQQ"), zlib.crc32(data))
    _, _, entries = chunk_entries(bytes(frame))
    assert bytes(entries[0]) == b"ok"  # type: ignore[arg-type]
    assert isinstance(entries[1], UnreadableEntry)
    assert entries[1].records == 2
    assert "malformed" in entries[1].reason
