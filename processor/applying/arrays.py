"""One-dimensional PostgreSQL arrays in binary form, built a column at a time.

A batch's statements send their rows as arrays (``unnest``): one parameter per column, a
thousand or more elements each. psycopg's generic list dumper packs them element by element in
Python (about 250 ns per element, some 25 elements per applied event); these builders pack a
whole column with a few calls that loop in C (40-180 ns per element). Each returns a ``bytes``
subclass naming its SQL type, and ``register`` tells a connection to send it as that type,
byte for byte (``%b`` placeholders; registered with psycopg's global adapters on import).

A value outside its column's range raises ``struct.error`` here, before anything is sent, where
the server would have answered ``DataError`` (which a batch isolates as a dead letter): the
values come from the fold, whose bounds (docs/contract.md; ``projections.fold``) keep every
column far inside its type, so no event can reach that error.

The format is ``array_send``/``array_recv``'s (PostgreSQL ``src/backend/utils/adt/
arrayfuncs.c``; "Binary format" of the protocol's data types): the number of dimensions, a
has-null flag, the element type's oid, then per dimension its length and lower bound (1), then
each element as its length in bytes (-1 for NULL) and its binary form (``int8send``,
``float8send``, ``boolsend``, ``textsend``, ``byteasend``, ``timestamptz_send``: microseconds
since 2000-01-01 UTC, through psycopg's own timestamp dumper). Integers and floats are
big-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final, TypeVar

from psycopg import adapters as global_adapters
from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format

_HEADER: Final = struct.Struct(">iiiii")  # ndim, has null, element oid, length, lower bound
_EMPTY: Final = struct.Struct(">iii")  # ndim 0, no null, element oid
_LENGTH: Final = struct.Struct(">i")
_NULL: Final = _LENGTH.pack(-1)
#: The packed length of each short element, so a column's lengths cost one lookup each.
_PACKED_LENGTHS: Final = tuple(_LENGTH.pack(n) for n in range(4096))

# Element oids (PostgreSQL ``pg_type.dat``), and the array types' own.
_BOOL, _BYTEA, _INT8, _INT2, _INT4, _TEXT = 16, 17, 20, 21, 23, 25
_FLOAT8, _TIMESTAMPTZ = 701, 1184


class _BinaryArray(bytes):
    """A one-dimensional array in PostgreSQL's binary form (``array_send``)."""

    #: The oid of the array type (``pg_type.typarray`` of the element type).
    ARRAY_OID: int = 0


_Kind = TypeVar("_Kind", bound=_BinaryArray)


class BoolArray(_BinaryArray):
    """``boolean[]``."""

    ARRAY_OID = 1000


class ByteaArray(_BinaryArray):
    """``bytea[]``."""

    ARRAY_OID = 1001


class SmallintArray(_BinaryArray):
    """``smallint[]``."""

    ARRAY_OID = 1005


class IntegerArray(_BinaryArray):
    """``integer[]``."""

    ARRAY_OID = 1007


class TextArray(_BinaryArray):
    """``text[]``."""

    ARRAY_OID = 1009


class BigintArray(_BinaryArray):
    """``bigint[]``."""

    ARRAY_OID = 1016


class Float8Array(_BinaryArray):
    """``double precision[]``."""

    ARRAY_OID = 1022


class TimestamptzArray(_BinaryArray):
    """``timestamp with time zone[]``."""

    ARRAY_OID = 1185


def _fixed_width(
    kind: type[_Kind], element_oid: int, code: str, size: int, values: Sequence[object]
) -> _Kind:
    """An array of fixed-width elements packed by ``struct`` code ``code`` (``size`` bytes)."""
    count = len(values)
    if not count:
        return kind(_EMPTY.pack(0, 0, element_oid))
    if None in values:
        element = struct.Struct(">" + code)
        parts = [_HEADER.pack(1, 1, element_oid, count, 1)]
        for value in values:
            parts.append(_NULL if value is None else _PACKED_LENGTHS[size] + element.pack(value))
        return kind(b"".join(parts))
    lengths_and_values: list[object] = [size] * (2 * count)
    lengths_and_values[1::2] = values
    header = _HEADER.pack(1, 0, element_oid, count, 1)
    return kind(header + struct.pack(">" + ("i" + code) * count, *lengths_and_values))


def _variable_width(
    kind: type[_Kind], element_oid: int, encoded: Sequence[bytes | bytearray | None]
) -> _Kind:
    """An array of elements already in their binary form (None: NULL)."""
    count = len(encoded)
    if not count:
        return kind(_EMPTY.pack(0, 0, element_oid))
    has_null = None in encoded
    parts: list[bytes | bytearray] = [b""] * (2 * count + 1)
    parts[0] = _HEADER.pack(1, int(has_null), element_oid, count, 1)
    if has_null:
        for index, item in enumerate(encoded):
            parts[2 * index + 1] = _NULL if item is None else _packed_length(len(item))
            parts[2 * index + 2] = b"" if item is None else item
        return kind(b"".join(parts))
    try:
        parts[1::2] = map(_PACKED_LENGTHS.__getitem__, map(len, encoded))  # type: ignore[arg-type]
    except IndexError:  # an element of 4 KiB or more: pack its length on its own
        parts[1::2] = [_packed_length(len(item)) for item in encoded if item is not None]
    parts[2::2] = encoded  # type: ignore[assignment]  # no None here: has_null is false
    return kind(b"".join(parts))


def _packed_length(length: int) -> bytes:
    return _PACKED_LENGTHS[length] if length < len(_PACKED_LENGTHS) else _LENGTH.pack(length)


def bigint_array(values: Sequence[int | None]) -> BigintArray:
    """``bigint[]`` of ``values`` (None: NULL).

    Raises:
        struct.error: a value is not an int or is outside -2**63 .. 2**63-1.
    """
    return _fixed_width(BigintArray, _INT8, "q", 8, values)


def integer_array(values: Sequence[int | None]) -> IntegerArray:
    """``integer[]`` of ``values`` (None: NULL).

    Raises:
        struct.error: a value is not an int or is outside -2**31 .. 2**31-1.
    """
    return _fixed_width(IntegerArray, _INT4, "i", 4, values)


def smallint_array(values: Sequence[int | None]) -> SmallintArray:
    """``smallint[]`` of ``values`` (None: NULL).

    Raises:
        struct.error: a value is not an int or is outside -32768 .. 32767.
    """
    return _fixed_width(SmallintArray, _INT2, "h", 2, values)


def float8_array(values: Sequence[float | None]) -> Float8Array:
    """``double precision[]`` of ``values`` (None: NULL; ints are converted).

    Raises:
        struct.error: a value is not a number.
    """
    return _fixed_width(Float8Array, _FLOAT8, "d", 8, values)


def bool_array(values: Sequence[bool | None]) -> BoolArray:
    """``boolean[]`` of ``values`` (None: NULL; any other value by its truth)."""
    return _fixed_width(BoolArray, _BOOL, "?", 1, values)


def text_array(values: Sequence[str | None]) -> TextArray:
    """``text[]`` of ``values`` (None: NULL), in UTF-8.

    Raises:
        AttributeError: a value is not a str (nor None).
        UnicodeEncodeError: a str holds a lone surrogate.
        psycopg.DataError: (from the server) a str holds a NUL character, which text cannot.
    """
    encoded = [None if value is None else value.encode() for value in values]
    return _variable_width(TextArray, _TEXT, encoded)


def bytea_array(values: Sequence[bytes | None]) -> ByteaArray:
    """``bytea[]`` of ``values`` (None: NULL).

    Raises:
        TypeError: a value is not bytes-like (nor None).
    """
    return _variable_width(ByteaArray, _BYTEA, list(values))


def _timestamp_dumper() -> Callable[[datetime], bytes | bytearray]:
    """psycopg's binary dumper of an aware ``datetime`` (its C one when installed)."""
    dumper_class = global_adapters.get_dumper(datetime, PyFormat.BINARY)
    dumper = dumper_class(datetime)
    return dumper.dump  # type: ignore[return-value]  # never None for a datetime


_DUMP_TIMESTAMP: Final = _timestamp_dumper()


def timestamptz_array(values: Sequence[datetime | None]) -> TimestamptzArray:
    """``timestamptz[]`` of aware ``values`` (None: NULL), to the microsecond.

    Raises:
        TypeError: a value is naive (no ``tzinfo``) or not a datetime.
    """
    if None in values:
        encoded = [None if value is None else _DUMP_TIMESTAMP(value) for value in values]
    else:
        encoded = list(map(_DUMP_TIMESTAMP, values))  # type: ignore[arg-type]
    return _variable_width(TimestamptzArray, _TIMESTAMPTZ, encoded)


class _ArrayDumper(Dumper):
    """Sends a ``_BinaryArray`` as it is, typed by its class."""

    format = Format.BINARY

    def dump(self, obj: object) -> bytes:
        return obj  # type: ignore[return-value]  # a bytes subclass


_KINDS: Final = (
    BoolArray,
    ByteaArray,
    SmallintArray,
    IntegerArray,
    TextArray,
    BigintArray,
    Float8Array,
    TimestamptzArray,
)
_DUMPERS: Final = {
    kind: type(f"{kind.__name__}Dumper", (_ArrayDumper,), {"oid": kind.ARRAY_OID})
    for kind in _KINDS
}


def register(context: AdaptContext) -> None:
    """Teach ``context`` (a connection, or psycopg's global ``adapters``) to send the arrays
    built here, in binary, as their own types. Safe to call again.

    Done for the global map when this module is imported: connections opened after that see
    it (``processor.applying.postgres`` imports this module before any connection is made; a
    connection opened earlier keeps psycopg's copy-on-write map and needs its own call). psycopg
    also files each dumper under its array oid, so a binary ``COPY`` told ``set_types`` of one
    of these types would expect these classes, not lists (nothing here uses ``set_types``).
    """
    for kind, dumper in _DUMPERS.items():
        context.adapters.register_dumper(kind, dumper)


register(global_adapters)


__all__ = [
    "BigintArray",
    "BoolArray",
    "ByteaArray",
    "Float8Array",
    "IntegerArray",
    "SmallintArray",
    "TextArray",
    "TimestamptzArray",
    "bigint_array",
    "bool_array",
    "bytea_array",
    "float8_array",
    "integer_array",
    "register",
    "smallint_array",
    "text_array",
    "timestamptz_array",
]
