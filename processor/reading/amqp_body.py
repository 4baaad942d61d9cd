"""Extract the application body from a stream entry (an AMQP 1.0 encoded message).

Messages published over AMQP 0.9.1 are stored in a stream as AMQP 1.0 messages: a sequence of
described sections (header, annotations, properties, application properties, then one or more
``data`` sections holding the body bytes). Decoding every section with a generic AMQP codec costs
far more than the rest of the processing of an event, so this module walks the sections by their
encoded sizes and returns the concatenated ``data`` sections. The read path tries
``chunks.deliver_records``'s fixed-place read of the broker's own layout first and comes here
for anything else. Source of the encoding: OASIS AMQP
1.0, part 1 (types) and part 3 (message format, section 3.2).
"""

from __future__ import annotations

from typing import Final

from processor.reading.errors import AmqpFormatError

_DESCRIBED: Final = 0x00
_SMALL_ULONG: Final = 0x53
_ULONG: Final = 0x80
_MESSAGE_ANNOTATIONS_SECTION: Final = 0x72
_DATA_SECTION: Final = 0x75
_MAP8: Final = 0xC1
_MAP32: Final = 0xD1
_AMQP_VALUE_SECTION: Final = 0x77
#: The annotation RabbitMQ writes with the routing key of an AMQP 0.9.1 publish.
ROUTING_KEY_ANNOTATION: Final = b"x-routing-key"
#: How RabbitMQ 3.9+ starts a converted message: message annotations as a map8, whose first
#: entry is ``x-routing-key`` (symbol) with a str8 value. Checked as bytes first (fast path).
_MAP8_FIRST_ROUTING_KEY: Final = (
    b"\xa3" + bytes([len(ROUTING_KEY_ANNOTATION)]) + (ROUTING_KEY_ANNOTATION) + b"\xa1"
)


#: Bytes after the type code for fixed-width AMQP types, by the code's high nibble.
_FIXED_WIDTH: Final = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}
#: Bytes of the size prefix of variable-width, compound and array types, by high nibble.
_SIZE_WIDTH: Final = {0xA: 1, 0xC: 1, 0xE: 1, 0xB: 4, 0xD: 4, 0xF: 4}


def _skip_value(buf: bytes | memoryview, pos: int) -> int:
    """Position just after the encoded AMQP value starting at ``pos``."""
    code = buf[pos]
    pos += 1
    if code == _DESCRIBED:
        return _skip_value(buf, _skip_value(buf, pos))
    nibble = code >> 4
    fixed = _FIXED_WIDTH.get(nibble)
    if fixed is not None:
        return pos + fixed
    size_width = _SIZE_WIDTH.get(nibble)
    if size_width is None:
        raise AmqpFormatError(f"unknown AMQP type code 0x{code:02x} at byte {pos - 1}")
    return pos + size_width + int.from_bytes(buf[pos : pos + size_width], "big")


def _string_at(buf: bytes | memoryview, pos: int) -> tuple[str | None, int]:
    """A str8/str32/sym8/sym32 value at ``pos`` (None for any other type), and the next position.

    Raises:
        AmqpFormatError: the bytes are not UTF-8.
    """
    code = buf[pos]
    if code in (0xA1, 0xA3):
        size, start = buf[pos + 1], pos + 2
    elif code in (0xB1, 0xB3):
        size, start = int.from_bytes(buf[pos + 1 : pos + 5], "big"), pos + 5
    else:
        return None, _skip_value(buf, pos)
    try:
        return bytes(buf[start : start + size]).decode("utf-8"), start + size
    except UnicodeDecodeError as exc:
        raise AmqpFormatError(f"annotation at byte {pos} is not UTF-8") from exc


def _routing_key(buf: bytes | memoryview, pos: int) -> str | None:
    """The ``x-routing-key`` of the message-annotations map at ``pos``, or None."""
    code = buf[pos]
    if code == _MAP8:  # size, count, then the pairs
        count, pos = buf[pos + 2], pos + 3
    elif code == _MAP32:
        count, pos = int.from_bytes(buf[pos + 5 : pos + 9], "big"), pos + 9
    else:
        return None
    for _ in range(count // 2):
        key, pos = _string_at(buf, pos)
        if key == ROUTING_KEY_ANNOTATION.decode():
            value, pos = _string_at(buf, pos)
            return value
        pos = _skip_value(buf, pos)
    return None


def read_message(entry: bytes | memoryview) -> tuple[bytes, str | None]:
    """The body bytes of one stream entry and the routing key it was published with.

    Args:
        entry: one AMQP 1.0 encoded message as stored in the stream.

    Returns:
        ``(body, routing_key)``: the body as in ``message_body``; the ``x-routing-key``
        message annotation that RabbitMQ keeps for an AMQP 0.9.1 publish, or None for an entry
        written straight to the stream without one.

    Raises:
        AmqpFormatError: the entry is not a sequence of described AMQP 1.0 sections.
    """
    routing_key: str | None = None
    try:
        if entry[:4] == b"\x00Sr\xc1" and entry[6 : 6 + len(_MAP8_FIRST_ROUTING_KEY)] == (
            _MAP8_FIRST_ROUTING_KEY
        ):
            value_at = 6 + len(_MAP8_FIRST_ROUTING_KEY)
            size = entry[value_at]
            raw = bytes(entry[value_at + 1 : value_at + 1 + size])
            routing_key = raw.decode("utf-8")
        elif entry[:3] == b"\x00Sr":
            routing_key = _routing_key(entry, 3)
    except (IndexError, UnicodeDecodeError) as exc:
        raise AmqpFormatError("unreadable message annotations") from exc
    return message_body(entry), routing_key


def message_body(entry: bytes | memoryview) -> bytes:
    """The body bytes of one stream entry.

    Args:
        entry: one AMQP 1.0 encoded message as stored in the stream.

    Returns:
        The concatenation of its ``data`` sections (the AMQP 0.9.1 body as published); for an
        ``amqp-value`` body holding binary or a string, those bytes.

    Raises:
        AmqpFormatError: the entry is not a sequence of described AMQP 1.0 sections.
    """
    buf = entry
    pos = 0
    end = len(buf)
    parts: list[bytes] = []
    try:
        while pos < end:
            if buf[pos] != _DESCRIBED:
                raise AmqpFormatError(f"expected a described section at byte {pos}")
            pos += 1
            descriptor_code = buf[pos]
            if descriptor_code == _SMALL_ULONG:
                section = buf[pos + 1]
                pos += 2
            elif descriptor_code == _ULONG:
                section = int.from_bytes(buf[pos + 1 : pos + 9], "big")
                pos += 9
            else:
                raise AmqpFormatError(f"unsupported section descriptor 0x{descriptor_code:02x}")
            if section in (_DATA_SECTION, _AMQP_VALUE_SECTION):
                code = buf[pos]
                if code in (0xA0, 0xA1):  # vbin8, str8-utf8
                    size = buf[pos + 1]
                    parts.append(bytes(buf[pos + 2 : pos + 2 + size]))
                    pos += 2 + size
                    continue
                if code in (0xB0, 0xB1):  # vbin32, str32-utf8
                    size = int.from_bytes(buf[pos + 1 : pos + 5], "big")
                    parts.append(bytes(buf[pos + 5 : pos + 5 + size]))
                    pos += 5 + size
                    continue
                raise AmqpFormatError(f"body section holds type 0x{code:02x}, not bytes")
            pos = _skip_value(buf, pos)
    except IndexError as exc:
        raise AmqpFormatError("entry ends inside a section") from exc
    if pos != end:
        raise AmqpFormatError("entry ends inside a section")
    return parts[0] if len(parts) == 1 else b"".join(parts)
