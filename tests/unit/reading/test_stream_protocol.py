"""The stream client's protocol tables and pure decoders (no broker needed)."""

from __future__ import annotations

import struct

import pytest

from processor.reading.client import (
    RESPONSE_CODES,
    Broker,
    StreamMetadata,
    candidates,
    negotiate,
    parse_metadata,
    protocol_error,
)
from processor.reading.errors import (
    AccessRefused,
    AuthenticationFailed,
    FrameTooLarge,
    StreamDoesNotExist,
    StreamNotAvailable,
    StreamProtocolError,
)


def test_every_response_code_of_the_protocol_has_its_name() -> None:
    assert set(RESPONSE_CODES) == set(range(0x01, 0x14))
    assert RESPONSE_CODES[0x06] == "stream not available"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0x02, StreamDoesNotExist),
        (0x06, StreamNotAvailable),
        (0x08, AuthenticationFailed),
        (0x0C, AccessRefused),
        (0x10, AccessRefused),
        (0x0E, FrameTooLarge),
        (0x0F, StreamProtocolError),
    ],
)
def test_codes_a_caller_acts_on_have_their_own_error_type(
    code: int, kind: type[StreamProtocolError]
) -> None:
    error = protocol_error(code, "subscribe to events.p003")
    assert type(error) is kind
    assert error.code == code
    assert RESPONSE_CODES[code] in str(error) and "events.p003" in str(error)


def _string(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def test_a_metadata_answer_gives_brokers_leaders_and_replicas() -> None:
    brokers = [(0, "node-a", 5552), (1, "node-b", 5553), (2, "node-c", 5554)]
    frame = struct.pack(">HHI", 0x800F, 1, 7) + struct.pack(">i", len(brokers))
    for reference, host, port in brokers:
        frame += struct.pack(">H", reference) + _string(host) + struct.pack(">I", port)
    frame += struct.pack(">i", 2)
    frame += _string("events.p000") + struct.pack(">HHi", 1, 0, 2) + struct.pack(">HH", 1, 2)
    frame += _string("gone") + struct.pack(">HHi", 2, 0xFFFF, 0)
    metadata = parse_metadata(frame)
    a, b, c = (Broker(r, h, p) for r, h, p in brokers)
    assert metadata.brokers == (a, b, c)
    p000 = metadata.streams["events.p000"]
    assert (p000.leader, p000.replicas) == (a, (b, c))
    assert p000.members == (b, c, a)
    gone = metadata.streams["gone"]
    assert gone.leader is None and isinstance(gone.error(), StreamDoesNotExist)
    with pytest.raises(StreamProtocolError, match="cut short"):
        parse_metadata(frame[:-3])


def test_reading_prefers_the_least_loaded_replica_and_the_leader_last() -> None:
    a, b, c = Broker(0, "a", 1), Broker(1, "b", 2), Broker(2, "c", 3)
    stream = StreamMetadata("s", 1, a, (b, c))
    assert candidates(stream) == [b.address, c.address, a.address]
    assert candidates(stream, {b.address: 3, c.address: 1}) == [c.address, b.address, a.address]
    assert candidates(StreamMetadata("s", 1, a, ())) == [a.address]


def test_tune_takes_the_lower_non_zero_value() -> None:
    assert negotiate(10, 60) == 10
    assert negotiate(0, 60) == 60
    assert negotiate(30, 0) == 30
    assert negotiate(0, 0) == 0
