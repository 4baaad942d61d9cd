"""The replay reader's stream protocol frames (no broker needed)."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from processor.wire import StreamProtocolError, chunk_entries


def deliver_frame(
    first_offset: int,
    entries: list[bytes],
    *,
    sub_batch: list[bytes] | None = None,
    gzipped: bool = False,
    subscription_id: int = 3,
    crc: int | None = None,
) -> bytes:
    """A ``Deliver`` v1 frame (after its size field) as RabbitMQ sends it."""
    data = b"".join(struct.pack(">I", len(e)) + e for e in entries)
    entry_count, records = len(entries), len(entries)
    if sub_batch is not None:
        inner = b"".join(struct.pack(">I", len(m)) + m for m in sub_batch)
        packed = gzip.compress(inner) if gzipped else inner
        kind = 0x80 | ((1 if gzipped else 0) << 4)
        data += bytes([kind]) + struct.pack(">HII", len(sub_batch), len(inner), len(packed))
        data += packed
        entry_count += 1
        records += len(sub_batch)
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
