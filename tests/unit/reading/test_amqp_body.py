"""Extracting the published body from AMQP 1.0 stream entries, checked against rstream's codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rstream import AMQPMessage, amqp_decoder

from processor.reading.amqp_body import message_body, read_message
from processor.reading.errors import AmqpFormatError

# A real entry as RabbitMQ 3.10 stores a message published over AMQP 0.9.1 (message
# annotations, properties with message_id and content type, application properties, data).
REAL_ENTRY = (
    b"\x00Sr\xc1@\x06\xa3\rx-routing-key\xa1\x07probe.s\xa3\nx-exchange\xa1\x00"
    b"\xa3\x15x-basic-delivery-modeP\x02\x00Ss\xc0#\r\xa1\x03abc@@@@@\xa3\x10application/json"
    b'@@@@@@\x00St\xc1\x07\x02\xa1\x01k\xa1\x01v\x00Su\xa0\x07{"a":1}'
)


def test_the_body_of_a_real_broker_entry() -> None:
    assert message_body(REAL_ENTRY) == b'{"a":1}'
    assert amqp_decoder(REAL_ENTRY).body == b'{"a":1}'


@given(st.binary(max_size=70_000))
def test_any_body_round_trips_through_the_amqp_encoding(body: bytes) -> None:
    entry = bytes(AMQPMessage(body=body, application_properties={"key": "value"}))
    assert message_body(entry) == body


@pytest.mark.parametrize(
    "entry",
    [b"\x01\x02", b"\x00Su\xa0\x09short", b"\x00Su\x71\x00\x00\x00\x01", b"\x00\xa3\x01x"],
    ids=["not-described", "truncated-data", "body-not-binary", "symbol-descriptor"],
)
def test_malformed_entries_raise_a_format_error(entry: bytes) -> None:
    with pytest.raises(AmqpFormatError):
        message_body(entry)


def test_the_routing_key_of_a_real_broker_entry_is_read() -> None:
    assert read_message(REAL_ENTRY) == (b'{"a":1}', "probe.s")


@given(
    st.text(min_size=0, max_size=300).filter(lambda key: len(key.encode()) <= 255),
    st.binary(max_size=2_000),
)
def test_the_routing_key_annotation_round_trips(key: str, body: bytes) -> None:
    # Written by rstream's encoder (an independent codec): the fast path and the general map
    # walk must agree with it, whatever the key's length and position.
    routing_first = {"x-routing-key": key, "x-exchange": "e"}
    first = bytes(AMQPMessage(body=body, message_annotations=routing_first))
    later = bytes(AMQPMessage(body=body, message_annotations=dict(reversed(routing_first.items()))))
    assert read_message(first) == (body, key)
    assert read_message(later) == (body, key)


def test_an_entry_without_annotations_has_no_routing_key() -> None:
    assert read_message(bytes(AMQPMessage(body=b"{}"))) == (b"{}", None)
