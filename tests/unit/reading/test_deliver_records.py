"""``deliver_records``: the one-pass read of a ``Deliver`` frame gives exactly the records of the
general path (``chunk_entries`` then ``chunk_records``), for the broker's layout (read at fixed
places) and for anything else (the general section walk)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rstream import AMQPMessage

from processor.reading.chunks import (
    _known_layout,
    chunk_entries,
    chunk_records,
    deliver_records,
    records_span,
)
from processor.reading.errors import StreamProtocolError
from processor.reading.log_record import LogRecord
from tests.unit.reading.test_amqp_body import REAL_ENTRY
from tests.unit.reading.test_client import deliver_frame

# An entry as RabbitMQ 3.10 stores the product publisher's message (no headers, so no
# application properties; a body of 256 bytes or more is a vbin32).
PRODUCT_ENTRY = (
    b"\x00Sr\xc1I\x06\xa3\rx-routing-key\xa1\nuser-00183\xa3\nx-exchange\xa1\x06events"
    b"\xa3\x15x-basic-delivery-modeP\x02\x00Ss\xc0D\r\xa1$42445c25-7694-4b40-9d6e-27afc4d175f2"
    b'@@@@@\xa3\x10application/json@@@@@@\x00Su\xb0\x00\x00\x00\x0e{"user_id": 1}'
)


def general(frame: bytes) -> tuple[int, int, list[LogRecord]]:
    """The records the general path gives for ``frame``."""
    subscription, first, entries = chunk_entries(frame)
    return subscription, first, list(chunk_records(first, entries))


def broker_entry(key: bytes, body: bytes, *, headers: bool = False, long: bool = False) -> bytes:
    """An entry in the broker's layout: annotations (routing key first), properties, maybe
    application properties, one data section (vbin8 or vbin32)."""
    pairs = b"\xa3\rx-routing-key\xa1" + bytes([len(key)]) + key + b"\xa3\nx-exchange\xa1\x06events"
    out = b"\x00Sr\xc1" + bytes([len(pairs) + 1, 4]) + pairs
    props = b"@\xa1\x03abc@@@@@\xa3\x10application/json"
    if long:
        out += b"\x00Ss\xd0" + struct.pack(">II", len(props) + 4, 9) + props
    else:
        out += b"\x00Ss\xc0" + bytes([len(props) + 1, 9]) + props
    if headers:
        out += b"\x00St\xc1\x07\x02\xa1\x01k\xa1\x01v"
    if len(body) < 256 and not long:
        return out + b"\x00Su\xa0" + bytes([len(body)]) + body
    return out + b"\x00Su\xb0" + struct.pack(">I", len(body)) + body


def test_the_product_publishers_entry_is_read_at_fixed_places() -> None:
    frame = PRODUCT_ENTRY
    record = _known_layout(frame, 7, 0, len(frame))
    assert record == LogRecord(7, b'{"user_id": 1}', None, "user-00183")
    assert deliver_records(deliver_frame(7, [PRODUCT_ENTRY])) == general(
        deliver_frame(7, [PRODUCT_ENTRY])
    )


def test_a_real_broker_entry_with_headers_is_read_at_fixed_places() -> None:
    record = _known_layout(REAL_ENTRY, 0, 0, len(REAL_ENTRY))
    assert record == LogRecord(0, b'{"a":1}', None, "probe.s")


@pytest.mark.parametrize(
    "entry",
    [
        bytes(AMQPMessage(body=b"{}")),  # no annotations
        bytes(
            AMQPMessage(body=b"{}", message_annotations={"x-exchange": "e", "x-routing-key": "k"})
        ),
        PRODUCT_ENTRY + b"\x00Su\xa0\x01x",  # two data sections: the walk joins them
        PRODUCT_ENTRY[:-3],  # cut short
        b"\x01garbage",
    ],
    ids=["no-annotations", "key-second", "two-data-sections", "cut-short", "not-amqp"],
)
def test_other_layouts_take_the_general_walk_with_the_same_result(entry: bytes) -> None:
    assert _known_layout(entry, 0, 0, len(entry)) is None
    frame = deliver_frame(3, [entry])
    assert deliver_records(frame) == general(frame)


def test_sub_entry_batches_and_simple_entries_mix_in_offset_order() -> None:
    frame = deliver_frame(
        10,
        [PRODUCT_ENTRY, b"\x01bad"],
        sub_batch=[broker_entry(b"k", b"1"), broker_entry(b"k", b"2")],
        after=(REAL_ENTRY,),
    )
    subscription, first, records = deliver_records(frame)
    assert (subscription, first, records) == general(frame)
    assert [r.offset for r in records] == [10, 11, 12, 13, 14]
    assert records_span(first, records) == 5
    assert records[1].error is not None


def test_an_unreadable_sub_entry_batch_covers_its_offsets() -> None:
    frame = deliver_frame(0, [PRODUCT_ENTRY], sub_batch=[b"a", b"b", b"c"], codec=3)
    assert deliver_records(frame) == general(frame)
    _, first, records = deliver_records(frame)
    assert [(r.offset, r.records) for r in records] == [(0, 1), (1, 3)]
    assert records_span(first, records) == 4


def test_a_corrupt_chunk_is_refused_as_a_whole() -> None:
    with pytest.raises(StreamProtocolError, match="CRC"):
        deliver_records(deliver_frame(0, [PRODUCT_ENTRY], crc=1))
    with pytest.raises(StreamProtocolError):
        deliver_records(deliver_frame(0, [PRODUCT_ENTRY])[:-2])


def test_an_empty_chunk_spans_no_offsets() -> None:
    assert records_span(5, []) == 0


@given(
    st.lists(
        st.tuples(
            st.text(max_size=40).filter(lambda k: len(k.encode()) <= 255),
            st.binary(max_size=600),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=0, max_value=2**40),
)
def test_broker_layout_entries_give_their_key_and_body(
    messages: list[tuple[str, bytes, bool, bool]], first: int
) -> None:
    entries = [broker_entry(k.encode(), b, headers=h, long=lg) for k, b, h, lg in messages]
    frame = deliver_frame(first, entries)
    _, got_first, records = deliver_records(frame)
    assert got_first == first
    assert records == [
        LogRecord(first + i, body, None, key) for i, (key, body, _, _) in enumerate(messages)
    ]
    assert records == general(frame)[2]


@given(
    st.sampled_from([PRODUCT_ENTRY, REAL_ENTRY, broker_entry(b"u", b"x" * 300, headers=True)]),
    st.lists(st.tuples(st.integers(min_value=0, max_value=400), st.integers(0, 255)), max_size=4),
    st.integers(min_value=0, max_value=400),
)
def test_damaged_entries_give_what_the_general_walk_gives(
    entry: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    damaged = bytearray(entry)
    for at, value in flips:
        if at < len(damaged):
            damaged[at] = value
    damaged = damaged[: max(1, len(damaged) - cut)] if cut % 3 == 0 else damaged
    frame = deliver_frame(0, [bytes(damaged), PRODUCT_ENTRY])
    assert deliver_records(frame) == general(frame)


@given(st.binary(max_size=300))
def test_any_bytes_give_what_the_general_walk_gives(entry: bytes) -> None:
    frame = deliver_frame(0, [entry, entry])
    assert deliver_records(frame) == general(frame)
