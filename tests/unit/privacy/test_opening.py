"""Opening a batch's encrypted records: each that does not open says why."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.privacy.crypto import (
    SCHEME,
    data_cipher,
    decrypt_event,
    encrypt_event,
    new_data_key,
    open_sealed,
    sealed_event,
    wrap_data_key,
)
from processor.privacy.errors import DecryptionFailed
from processor.privacy.keys import Keys
from processor.privacy.opening import NO_DATA_KEY, open_records, sealed_records
from processor.reading.log_record import LogRecord
from tests.strategies import ADJUSTED, make_event


def adjusted(user: str) -> bytes:
    return make_event(ADJUSTED, user, "2024-01-01T00:00:00Z", {"delta": 1, "reason": "r"})


def test_each_record_that_does_not_open_names_its_reason() -> None:
    keys = Keys(secrets.token_bytes(32), secrets.token_bytes(32))
    other_kek = secrets.token_bytes(32)
    good_key, other_key = new_data_key(), new_data_key()
    bodies = {
        "kid-good": adjusted("kid-good"),
        "kid-other-kek": adjusted("kid-other-kek"),
        "kid-no-key": adjusted("kid-no-key"),
    }
    records = [
        LogRecord(0, encrypt_event(bodies["kid-good"], good_key)),
        LogRecord(1, encrypt_event(bodies["kid-other-kek"], other_key)),
        LogRecord(2, encrypt_event(bodies["kid-no-key"], new_data_key())),
        LogRecord(3, adjusted("kid-plain")),
    ]
    wrapped = {
        "kid-good": (wrap_data_key(keys.kek, good_key, "kid-good"), keys.kek_id),
        "kid-other-kek": (wrap_data_key(other_kek, other_key, "kid-other-kek"), "another"),
    }
    opened = open_records(records, sealed_records(records), wrapped, keys)
    assert opened.plaintexts == {0: bodies["kid-good"]}
    assert opened.unopened == {
        1: "the data key does not open with this key-encryption key",
        2: NO_DATA_KEY,
    }
    assert opened.encrypted == {0, 1, 2}


def test_a_nonce_that_is_not_ascii_is_a_record_that_does_not_open() -> None:
    # It used to raise ValueError out of the batch (base64 refuses a non-ASCII str).
    keys = Keys(secrets.token_bytes(32), secrets.token_bytes(32))
    data_key = new_data_key()
    sealed = encrypt_event(adjusted("kid"), data_key)
    nonce = json.loads(sealed)["data"]["nonce"]
    broken = sealed.replace(nonce.encode(), "é".encode() + nonce[1:].encode())
    records = [LogRecord(0, broken)]
    wrapped = {"kid": (wrap_data_key(keys.kek, data_key, "kid"), keys.kek_id)}
    opened = open_records(records, sealed_records(records), wrapped, keys)
    assert opened.plaintexts == {}
    assert opened.unopened == {0: "not an encrypted event of scheme aes-256-gcm/1"}
    with pytest.raises(DecryptionFailed):
        decrypt_event(broken, data_key)


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id":"e","user_id":"u","data":{"a":1}}',
        b'{"event_id":"e","user_id":"u","data" : {"a": [1, 2,  3]} , "z": "data"}',
        b'{"event_id":"e","user_id":"u","x":{"data":1},"data":{"a":"\\u00e9"}}',
        b'{"event_id":"e","user_id":"u","reason":"say \\"data\\": {}","data":{"a":1}}',
        b'{"event_id":"e","user_id":"u","data":  {"a":1}  }',
    ],
)
def test_opening_gives_back_the_bytes_the_producer_sent(body: bytes) -> None:
    data_key = new_data_key()
    sealed = encrypt_event(body, data_key)
    parts = sealed_event(sealed)
    assert parts is not None
    assert open_sealed(sealed, parts, data_cipher(data_key)) == body
    assert decrypt_event(sealed, data_key) == body


def test_a_body_with_data_twice_opens_as_the_last_one_alone() -> None:
    # The splice cannot be proven right: the object is re-encoded with the last ``data`` only.
    body = b'{"event_id":"e","user_id":"u","data":{"a":1},"data":{"b":2}}'
    data_key = new_data_key()
    sealed = encrypt_event(body, data_key)
    parts = sealed_event(sealed)
    assert parts is not None
    opened = open_sealed(sealed, parts, data_cipher(data_key))
    assert opened == decrypt_event(sealed, data_key)
    assert json.loads(opened)["data"] == {"b": 2}
    assert b'"a"' not in opened


_BASE64_ISH = st.text(
    alphabet=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n.é\x00"
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(nonce_text=_BASE64_ISH, ciphertext_text=_BASE64_ISH)
def test_a_nonce_or_ciphertext_opens_only_when_strict_base64_reads_it(
    nonce_text: str, ciphertext_text: str
) -> None:
    # The nonce and ciphertext are read as strictly as ``base64.b64decode(validate=True)``:
    # whatever that refuses (a character outside the alphabet, bad padding, not ASCII) is a
    # record that does not open, never an error out of the batch, and nothing it accepts
    # is refused.
    data_key = new_data_key()
    sealed = encrypt_event(adjusted("kid"), data_key)
    data = json.loads(sealed)["data"]
    real_nonce, real_ciphertext = data["nonce"], data["ciphertext"]
    for nonce, ciphertext in ((nonce_text, real_ciphertext), (real_nonce, ciphertext_text)):
        altered = sealed.replace(real_nonce.encode(), json.dumps(nonce).strip('"').encode())
        altered = altered.replace(
            real_ciphertext.encode(), json.dumps(ciphertext).strip('"').encode()
        )
        parts = sealed_event(altered)
        assert parts is not None
        try:
            base64.b64decode(parts[1], validate=True)
            base64.b64decode(parts[2], validate=True)
            readable = True
        except ValueError:
            readable = False
        with pytest.raises(DecryptionFailed) as refused:
            open_sealed(altered, parts, data_cipher(data_key))
        expected = (
            "does not open with its child's data key"
            if readable
            else f"not an encrypted event of scheme {SCHEME}"
        )
        assert expected in str(refused.value)
        with pytest.raises(DecryptionFailed) as refused_too:
            decrypt_event(altered, data_key)
        assert expected in str(refused_too.value)
