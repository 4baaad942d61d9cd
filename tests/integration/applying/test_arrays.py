"""The binary arrays of ``processor.applying.arrays`` through the real server: each column is
received as its own type (no cast needed) and comes back as the values packed, on a plain
connection (importing the module registered them with psycopg's global adapters)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from processor.applying import arrays
from testkit.services import Services, isolated_settings

pytestmark = pytest.mark.integration

_EAST = timezone(timedelta(hours=9))
COLUMNS: list[tuple[Callable[[Sequence[Any]], bytes], str, list[Any]]] = [
    (arrays.bigint_array, "bigint[]", [1, None, -(2**63), 2**63 - 1]),
    (arrays.integer_array, "integer[]", [7, -(2**31), None]),
    (arrays.smallint_array, "smallint[]", [100, -100]),
    (arrays.float8_array, "double precision[]", [0.5, None, 86_400.0]),
    (arrays.bool_array, "boolean[]", [True, None, False]),
    (arrays.text_array, "text[]", ["child-1", None, "ünïcödé", "x" * 9000, ""]),
    (arrays.bytea_array, "bytea[]", [b"\x00\xff", None, b""]),
    (
        arrays.timestamptz_array,
        "timestamp with time zone[]",
        [
            datetime(2026, 12, 7, 20, 0, 0, 123_456, tzinfo=_EAST),
            None,
            datetime(1, 1, 1, tzinfo=UTC),
        ],
    ),
    (arrays.text_array, "text[]", []),
]


@pytest.mark.parametrize(("build", "sql_type", "values"), COLUMNS)
def test_the_server_receives_each_column_as_its_type_and_values(
    services: Services,
    build: Callable[[Sequence[Any]], bytes],
    sql_type: str,
    values: list[Any],
) -> None:
    with isolated_settings(services) as settings, psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT pg_typeof(%b)::text, %b", (build(values), build(values))
        ).fetchone()
    assert row is not None
    assert row[0] == sql_type
    assert row[1] == values


def test_unnest_of_the_columns_gives_the_rows(services: Services) -> None:
    with isolated_settings(services) as settings, psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT * FROM unnest(%b::text[], %b::bigint[]) AS r(user_id, n) ORDER BY n",
            (arrays.text_array(["a", "b", "c"]), arrays.bigint_array([3, 1, 2])),
        ).fetchall()
    assert rows == [("b", 1), ("c", 2), ("a", 3)]
