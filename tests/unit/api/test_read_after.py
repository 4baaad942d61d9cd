"""The ``after`` and ``wait_s`` parameters of read-your-writes (docs/contract.md §6.2). Pure."""

from __future__ import annotations

import uuid

import pytest

from processor.api.read_after import (
    DEFAULT_WAIT_S,
    MAX_AFTER_IDS,
    MAX_WAIT_S,
    AfterIds,
    AfterInvalid,
    AfterToken,
    TokenMalformed,
    new_token_id,
    parse_after,
    token_text,
    wait_seconds,
)


def test_a_token_round_trips_and_is_small_and_fixed_in_size() -> None:
    token_id = new_token_id()
    token = token_text(token_id)
    assert token.startswith("rw_") and len(token) == 35
    assert parse_after(token) == AfterToken(token_id)
    assert parse_after(token.upper().replace("RW_", "rw_")) == AfterToken(token_id)
    assert new_token_id() != token_id


@pytest.mark.parametrize("raw", ["rw_", "rw_xyz", "rw_" + "a" * 31, "rw_" + "a" * 33, "rw_a,b"])
def test_a_malformed_token_is_told_apart_from_a_list(raw: str) -> None:
    with pytest.raises(TokenMalformed):
        parse_after(raw)


def test_event_ids_keep_their_spelling_and_lose_repeats() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4()).upper()
    assert parse_after(f"{a}, {b},{a}") == AfterIds((a, b))


def test_up_to_100_ids_are_taken_and_101_refused() -> None:
    ids = [str(uuid.uuid4()) for _ in range(MAX_AFTER_IDS + 1)]
    parsed = parse_after(",".join(ids[:MAX_AFTER_IDS]))
    assert isinstance(parsed, AfterIds) and len(parsed.event_ids) == MAX_AFTER_IDS
    with pytest.raises(AfterInvalid, match="at most 100"):
        parse_after(",".join(ids))


@pytest.mark.parametrize("raw", ["", " ", ",", "not-an-id", f"{uuid.uuid4()},", "x" * 10_000])
def test_a_list_with_a_bad_item_is_refused_without_echoing_it(raw: str) -> None:
    with pytest.raises(AfterInvalid) as caught:
        parse_after(raw)
    assert "not-an-id" not in str(caught.value) and "xxxx" not in str(caught.value)


def test_wait_s_defaults_with_after_and_needs_after() -> None:
    assert wait_seconds("rw_x", None) == DEFAULT_WAIT_S
    assert wait_seconds("rw_x", 0.0) == 0.0
    assert wait_seconds("rw_x", MAX_WAIT_S) == MAX_WAIT_S
    with pytest.raises(AfterInvalid, match="needs after"):
        wait_seconds(None, 1.0)
    for bad in (-0.1, MAX_WAIT_S + 0.1, float("nan"), float("inf")):
        with pytest.raises(AfterInvalid):
            wait_seconds("rw_x", bad)
