"""Decoding invalid records: what a dead letter keeps of a body that is not an event."""

from __future__ import annotations

from processor.applying.decode import readable_ids


def test_a_broken_body_still_names_its_ids_so_an_erasure_finds_it() -> None:
    cut_short = b'{"event_id": "e-1", "user_id": "kid-\\u00e9", "data": {'
    assert readable_ids(cut_short) == ("e-1", "kid-\u00e9")
    assert readable_ids(b'{"user_id": 7, "event_id": "e-2"') == ("e-2", None)
    assert readable_ids(b"not json at all") == (None, None)


def test_a_whole_body_is_read_as_json_not_searched() -> None:
    nested = b'{"data": {"user_id": "inner"}, "user_id": "outer", "event_id": "e-3"}'
    assert readable_ids(nested) == ("e-3", "outer")
    assert readable_ids(b'["user_id", "x"]') == (None, None)
