"""The binary arrays a batch's statements send: each column, read back by psycopg's own binary
array loader (the same ``array_recv`` format the server parses), is the column that was packed.
A round trip through the server itself is in tests/integration/applying/test_arrays.py."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.adapt import Transformer
from psycopg.pq import Format

from processor.applying import arrays
from processor.applying.arrays import _BinaryArray

_TX = Transformer(psycopg.adapters)


def _loaded(packed: _BinaryArray) -> list[Any]:
    """The array as psycopg's binary loader of its type reads it."""
    loader = _TX.get_loader(packed.ARRAY_OID, Format.BINARY)
    return list(loader.load(packed))


_AWARE = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)

CASES: list[tuple[Callable[[Any], _BinaryArray], st.SearchStrategy[Any]]] = [
    (arrays.bigint_array, st.integers(-(2**63), 2**63 - 1)),
    (arrays.integer_array, st.integers(-(2**31), 2**31 - 1)),
    (arrays.smallint_array, st.integers(-(2**15), 2**15 - 1)),
    (arrays.float8_array, st.floats(allow_nan=False)),
    (arrays.bool_array, st.booleans()),
    (
        arrays.text_array,
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
    ),
    (arrays.bytea_array, st.binary()),
    (arrays.timestamptz_array, _AWARE),
]


@pytest.mark.parametrize(("build", "elements"), CASES, ids=lambda c: getattr(c, "__name__", ""))
@given(data=st.data())
def test_a_packed_column_reads_back_as_the_same_values(
    build: Callable[[Sequence[Any]], _BinaryArray],
    elements: st.SearchStrategy[Any],
    data: st.DataObject,
) -> None:
    values = data.draw(st.lists(st.none() | elements, max_size=40))
    assert _loaded(build(values)) == values


#: Each builder's element type and array type (PostgreSQL ``pg_type.dat``).
OIDS = [
    (arrays.bigint_array, 20, 1016),
    (arrays.integer_array, 23, 1007),
    (arrays.smallint_array, 21, 1005),
    (arrays.float8_array, 701, 1022),
    (arrays.bool_array, 16, 1000),
    (arrays.text_array, 25, 1009),
    (arrays.bytea_array, 17, 1001),
    (arrays.timestamptz_array, 1184, 1185),
]
_HEADER = struct.Struct(">iiiii")


@pytest.mark.parametrize(("build", "element_oid", "array_oid"), OIDS)
def test_the_header_names_one_dimension_its_length_the_null_flag_and_the_types(
    build: Callable[[Sequence[Any]], _BinaryArray], element_oid: int, array_oid: int
) -> None:
    # psycopg's loader reads neither the has-null flag nor the lower bound, and the server
    # checks the element oid against the parameter's type: these are pinned here.
    value = {20: 1, 23: 1, 21: 1, 701: 1.0, 16: True, 25: "a", 17: b"a"}.get(
        element_oid, datetime(2026, 1, 1, tzinfo=UTC)
    )
    with_null, without = build([value, None, value]), build([value])
    assert array_oid == type(with_null).ARRAY_OID
    assert _HEADER.unpack_from(with_null) == (1, 1, element_oid, 3, 1)
    assert _HEADER.unpack_from(without) == (1, 0, element_oid, 1, 1)
    assert struct.unpack_from(">iii", build([])) == (0, 0, element_oid)
    assert len(build([])) == 12


def test_whole_numbers_go_into_a_float_column() -> None:
    assert _loaded(arrays.float8_array([3, 0, -2])) == [3.0, 0.0, -2.0]


def test_an_element_of_four_kib_or_more_keeps_its_length() -> None:
    values = ["x" * 4096, "y", "z" * 70_000]
    assert _loaded(arrays.text_array(values)) == values
    assert _loaded(arrays.bytea_array([b"\x00" * 5000, b""])) == [b"\x00" * 5000, b""]


def test_an_empty_column_is_an_empty_array_of_its_type() -> None:
    packed = arrays.timestamptz_array([])
    assert _loaded(packed) == []
    assert isinstance(packed, arrays.TimestamptzArray)


def test_a_value_out_of_the_types_range_is_refused_not_wrapped() -> None:
    with pytest.raises(struct.error):
        arrays.smallint_array([32_768])
    with pytest.raises(struct.error):
        arrays.bigint_array([2**63])


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(TypeError):
        arrays.timestamptz_array([datetime(2026, 1, 1)])  # naive: the point of the test
