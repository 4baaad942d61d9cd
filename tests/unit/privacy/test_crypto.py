"""Encrypting an event's ``data``: what round-trips, and what must not open."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import stat
from pathlib import Path

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.privacy.crypto import (
    SCHEME,
    decrypt_event,
    encrypt_event,
    envelope_of,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from processor.privacy.errors import DecryptionFailed, KeyMissing
from processor.privacy.keys import DIGEST_MEMO_SIZE, Keys, init_keys, load_keys
from processor.settings import Settings
from tests.strategies import TURN_RECORDED, make_event


def event(user: str = "kid-1", event_id: str | None = None) -> bytes:
    data = {"conversation_id": "c", "topic": "space", "speaker": "child", "sentiment": "sad"}
    return make_event(TURN_RECORDED, user, "2024-03-01T10:00:00.1234567+02:00", data, event_id)


def test_data_is_encrypted_and_the_envelope_stays_readable() -> None:
    body = event()
    sealed = encrypt_event(body, new_data_key())
    original, envelope = json.loads(body), json.loads(sealed)
    assert envelope["data"]["encryption"] == SCHEME
    assert b"space" not in sealed and b"sad" not in sealed
    for name in ("event_id", "type", "user_id", "occurred_at"):
        assert envelope[name] == original[name]
    assert envelope_of(sealed) == (original["event_id"], "kid-1")
    assert envelope_of(body) is None


def test_decrypting_gives_back_the_exact_bytes_of_data() -> None:
    key = new_data_key()
    body = (
        b'{"event_id":"e","type":"t","user_id":"u","occurred_at":"x",'
        b'"data":{"b": 1.50 ,"a":"\\u00e9"}}'
    )
    opened = decrypt_event(encrypt_event(body, key), key)
    assert json.loads(opened) == json.loads(body)
    assert b'{"b": 1.50 ,"a":"\\u00e9"}' in opened


@pytest.mark.parametrize("field", ["event_id", "user_id"])
def test_a_ciphertext_moved_to_another_event_or_child_does_not_open(field: str) -> None:
    key = new_data_key()
    sealed = json.loads(encrypt_event(event(), key))
    sealed[field] = "someone-else"
    with pytest.raises(DecryptionFailed):
        decrypt_event(json.dumps(sealed).encode(), key)


def test_another_key_does_not_open() -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_event(encrypt_event(event(), new_data_key()), new_data_key())


def test_a_wrapped_data_key_is_bound_to_its_child_and_its_kek() -> None:
    kek, other_kek, key = secrets.token_bytes(32), secrets.token_bytes(32), new_data_key()
    wrapped = wrap_data_key(kek, key, "kid-1")
    assert unwrap_data_key(kek, wrapped, "kid-1") == key
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(kek, wrapped, "kid-2")
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(other_kek, wrapped, "kid-1")


def test_init_keys_creates_private_files_once_and_load_keys_reads_them(tmp_path: Path) -> None:
    settings = Settings(secrets_dir=str(tmp_path / "secrets"))
    created = init_keys(settings)
    assert sorted(p.name for p in created) == ["hash.key", "kek.key"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in created)
    first = load_keys(settings)
    assert init_keys(settings) == []
    again = load_keys(settings)
    assert (again.hash_key, again.kek) == (first.hash_key, first.kek)
    assert repr(first.hash_key) not in repr(first) and repr(first.kek) not in repr(first)


def test_missing_keys_say_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(KeyMissing, match="just services"):
        load_keys(Settings(secrets_dir=str(tmp_path)))


def test_user_refs_are_stable_short_and_keyed() -> None:
    keys = Keys(secrets.token_bytes(32), secrets.token_bytes(32))
    other = Keys(secrets.token_bytes(32), secrets.token_bytes(32))
    assert keys.user_ref("kid-1") == keys.user_ref("kid-1")
    assert len(keys.user_ref("kid-1")) == 16
    assert keys.user_ref("kid-1") != other.user_ref("kid-1")
    assert "kid-1" not in keys.user_ref("kid-1")


def test_encrypting_then_decrypting_gives_back_every_byte_of_the_event() -> None:
    key = new_data_key()
    body = (
        b'{ "event_id" : "e-1",  "user_id":"u", "future": {"data": {"x": 1}},\n'
        b'  "data" : {"topic": "space", "n": 1.50} , "type":"t", "occurred_at": "x" }'
    )
    sealed = encrypt_event(body, key)
    assert sealed.startswith(b'{ "event_id" : "e-1",  "user_id":"u", "future": {"data": {"x": 1}}')
    assert b"space" not in sealed
    assert decrypt_event(sealed, key) == body


@pytest.mark.parametrize("first_name", ['"data"', '"d\\u0061ta"'])
def test_a_body_with_data_twice_keeps_no_clear_text_of_either(first_name: str) -> None:
    """The decoder keeps the last ``data``; the sealed body must not keep the first in clear."""
    key = new_data_key()
    body = (
        b'{"event_id":"e-2","type":"friendship.adjusted","user_id":"u",'
        + first_name.encode()
        + b':{"delta":1,"reason":"my secret diary"},"occurred_at":"x",'
        b'"data":{"delta":1,"reason":"kept"}}'
    )
    sealed = encrypt_event(body, key)
    assert b"secret diary" not in sealed and b"kept" not in sealed
    assert json.loads(decrypt_event(sealed, key))["data"] == {"delta": 1, "reason": "kept"}


def test_a_plain_data_with_an_unknown_encryption_field_stays_plain() -> None:
    data = {
        "conversation_id": "c",
        "topic": "space",
        "speaker": "child",
        "sentiment": "sad",
        "encryption": SCHEME,
    }
    body = make_event(TURN_RECORDED, "kid-1", "2024-03-01T10:00:00Z", data)
    assert envelope_of(body) is None


@hypothesis.settings(max_examples=200, deadline=None)
@given(user_id=st.text(max_size=140), hash_key=st.binary(min_size=32, max_size=64))
def test_a_childs_digest_stays_the_hmac_sha256_erasures_were_recorded_with(
    user_id: str, hash_key: bytes
) -> None:
    # Erasure records hold this digest: a change would let an erased child's events apply.
    keys = Keys(hash_key, secrets.token_bytes(32))
    expected = hmac.new(hash_key, b"user\0" + user_id.encode(), hashlib.sha256).digest()
    assert keys.user_digest(user_id) == expected
    assert keys.batch_user_digest(user_id) == expected
    assert keys.batch_user_digest(user_id) == expected  # remembered, still the same
    other = Keys(secrets.token_bytes(32), secrets.token_bytes(32))
    assert other.batch_user_digest(user_id) != expected  # remembered per key, never shared


def test_the_remembered_digests_stay_bounded() -> None:
    keys = Keys(secrets.token_bytes(32), secrets.token_bytes(32))
    digests = {f"kid-{i}": keys.batch_user_digest(f"kid-{i}") for i in range(DIGEST_MEMO_SIZE + 10)}
    assert len(keys._digests) <= DIGEST_MEMO_SIZE
    assert all(keys.batch_user_digest(user) == digest for user, digest in digests.items())


def test_only_the_batch_path_keeps_a_childs_id_next_to_its_digest() -> None:
    # The API and the CLI erase children: their Keys must not hold an erased child's id.
    keys = Keys(secrets.token_bytes(32), secrets.token_bytes(32))
    keys.user_digest("kid-erased")
    keys.user_ref("kid-erased")
    assert "kid-erased" not in keys._digests
