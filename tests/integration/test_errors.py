"""``processor.errors.loggable``: what a log line may say about a failure (real PostgreSQL
errors)."""

from __future__ import annotations

import psycopg
import pytest

from processor.errors import ConfigurationError, loggable


def database_error(sql: str) -> psycopg.Error:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE kids (user_id text PRIMARY KEY, n smallint)")
        conn.execute("INSERT INTO kids VALUES ('kid-secret', 1)")
        try:
            conn.execute(sql)
        except psycopg.Error as exc:
            return exc
    raise AssertionError("the statement did not fail")


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO kids VALUES ('kid-secret', 2)",  # DETAIL: Key (user_id)=(kid-secret)
        "DO $$ BEGIN RAISE EXCEPTION 'poison %', 'kid-secret'; END $$",
        "SELECT 'kid-secret'::uuid",  # invalid input syntax for type uuid: "kid-secret"
    ],
)
def test_a_database_error_that_may_quote_values_is_named_by_class_and_sqlstate(sql: str) -> None:
    text = loggable(database_error(sql))
    assert "kid-secret" not in text
    assert "SQLSTATE" in text


def test_an_error_that_names_objects_keeps_its_first_line() -> None:
    text = loggable(database_error("SELECT * FROM no_such_table_here"))
    assert "no_such_table_here" in text and "42P01" in text


def test_our_errors_keep_their_words_and_others_only_their_class() -> None:
    assert loggable(ConfigurationError("PARTITIONS=0 must be >= 1")) == (
        "ConfigurationError: PARTITIONS=0 must be >= 1"
    )
    assert loggable(KeyError("kid-secret")) == "KeyError"
