"""Authenticated encryption of an event's ``data`` with its child's data key. Pure: no I/O.

Every child has a *data key* (AES-256), made once and stored in PostgreSQL wrapped by the
key-encryption key (``wrap_data_key``). An event is encrypted at ingest by replacing its
``data`` with ``{"encryption": "aes-256-gcm/1", "nonce": ..., "ciphertext": ...}`` (base64),
where the ciphertext is AES-256-GCM of the exact bytes of the original ``data``, with the event's
``event_id`` and ``user_id`` bound as associated data: a ciphertext moved to another event or
child does not decrypt. The envelope (``event_id``, ``type``, ``user_id``, ``occurred_at``)
stays readable: the broker routes on ``user_id``, a pseudonymous id (docs/contract.md).

Erasure destroys the data key: the log keeps only ciphertext nobody can read.

Source: NIST SP 800-38D (GCM; 96-bit random nonces, at most 2^32 per key), through the
``cryptography`` package's ``AESGCM``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from typing import Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from processor.privacy.errors import DecryptionFailed

#: The ``encryption`` value of an encrypted ``data`` object (algorithm / format version).
SCHEME: Final = "aes-256-gcm/1"
#: Bytes of a data key and of a GCM nonce.
DATA_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
#: Quick test before a body is parsed: every encrypted body holds this.
_MARKER: Final = b'"encryption"'

_ENVELOPE: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENCRYPTED_DATA: Final = msgspec.json.Decoder(dict[str, str])
_STRING: Final = msgspec.json.Decoder(str)
_RAW: Final = msgspec.json.Decoder(msgspec.Raw)
_ENCODER: Final = msgspec.json.Encoder()


_DATA_KEY_AT: Final = re.compile(rb'"data"\s*:\s*')
#: The members of an encrypted ``data`` object, exactly (a plain ``data`` may hold an unknown
#: ``encryption`` field and stays plain: docs/contract.md, unknown fields are ignored).
_SEALED_MEMBERS: Final = frozenset({"encryption", "nonce", "ciphertext"})


def _b64decode(text: str) -> bytes:
    """``base64.b64decode(text, validate=True)`` without its Python wrapper (the same check:
    ASCII only, the base64 alphabet only, correct padding; about 1 us less per call, and every
    encrypted event decodes two).

    Raises:
        ValueError: ``binascii.Error`` for a character outside the alphabet or bad padding,
            ``ValueError`` for a string that is not ASCII.
    """
    return binascii.a2b_base64(text, strict_mode=True)


def _data_members(body: bytes) -> int:
    """How many top-level members of ``body`` (a valid JSON object) are named ``data``. A name
    that is not spelled ``"data"`` byte for byte must hold a ``\\u`` escape, so most bodies
    are answered by a byte search."""
    if body.count(b'"data"') < 2 and b"\\u" not in body:  # noqa: PLR2004 - one or none
        return body.count(b'"data"')
    members = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    return sum(1 for name, _ in members if name == "data")


def _with_data(body: bytes, fields: dict[str, msgspec.Raw], data: bytes) -> bytes:
    """``body`` with the value of its ``data`` field replaced by ``data``, every other byte
    kept (spacing, field order, unknown fields), so that decrypting an encrypted event gives
    back the exact bytes the producer sent. Re-encodes the object when the splice cannot be
    proven right: a ``"data":`` inside another field's value that looks the same, or a body
    with ``data`` twice (the decoder keeps the last; a splice would leave the first one, maybe
    a child's words, in clear text in the log, so the re-encoded object keeps the last only)."""
    old = bytes(fields["data"])
    quick = _splice(body, old, data)
    if quick is not None:
        return quick
    candidates = _DATA_KEY_AT.finditer(body) if _data_members(body) == 1 else iter(())
    for match in candidates:
        start = match.end()
        if not body.startswith(old, start):
            continue
        candidate = body[:start] + data + body[start + len(old) :]
        try:
            spliced = _ENVELOPE.decode(candidate)
        except msgspec.DecodeError:
            continue
        same = spliced.keys() == fields.keys() and all(
            bytes(spliced[name]) == bytes(value) for name, value in fields.items() if name != "data"
        )
        if same and bytes(spliced["data"]) == data:
            return candidate
    rebuilt = dict(fields)
    rebuilt["data"] = msgspec.Raw(data)
    return _ENCODER.encode(rebuilt)


def _splice(body: bytes, old: bytes, data: bytes) -> bytes | None:
    """``body`` with its ``data`` value ``old`` replaced by ``data`` when that is sure to be
    right without parsing the result, else None (``_with_data`` then proves it).

    Sure means: ``"data"`` occurs once in the body and no ``\\u`` escape does, so that one is
    the top-level member's name spelled plainly, its value ``old`` follows it, and ``data`` is
    one JSON value as it stands.
    """
    if body.count(b'"data"') != 1 or b"\\u" in body:
        return None
    # The one "data" is where the pattern can start: match there, not a search from byte 0.
    match = _DATA_KEY_AT.match(body, body.find(b'"data"'))
    if match is None or not body.startswith(old, match.end()) or not _one_value(data):
        return None
    start = match.end()
    return body[:start] + data + body[start + len(old) :]


def _one_value(data: bytes) -> bool:
    """True when ``data`` is exactly one JSON value, no space around it (as a spliced body's
    ``data`` member must be to read back the same bytes)."""
    try:
        return bytes(_RAW.decode(data)) == data
    except (msgspec.DecodeError, RecursionError):
        return False


def new_data_key() -> bytes:
    """A fresh random data key."""
    return secrets.token_bytes(DATA_KEY_BYTES)


def _key_aad(user_id: str) -> bytes:
    return b"data-key\n" + user_id.encode()


def _event_aad(event_id: str, user_id: str) -> bytes:
    return b"event\n" + event_id.encode() + b"\n" + user_id.encode()


def wrap_data_key(kek: bytes, data_key: bytes, user_id: str) -> bytes:
    """``data_key`` encrypted under the key-encryption key, bound to ``user_id`` (nonce first)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, _key_aad(user_id))


def unwrap_data_key(kek: bytes | AESGCM, wrapped: bytes, user_id: str) -> bytes:
    """The data key of ``user_id`` from its wrapped form (``kek``: the key-encryption key, or
    its cipher when many keys are unwrapped).

    Raises:
        DecryptionFailed: another key-encryption key wrapped it, or the bytes were altered.
    """
    try:
        cipher = kek if isinstance(kek, AESGCM) else AESGCM(kek)
        return cipher.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _key_aad(user_id))
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed("the data key does not open with this key-encryption key") from exc


def is_encrypted(body: bytes) -> bool:
    """True when ``body`` may be an encrypted event (a cheap byte search; ``envelope_of`` tells)."""
    return _MARKER in body


def envelope_of(body: bytes) -> tuple[str, str] | None:
    """``(event_id, user_id)`` of an encrypted event, None when ``body`` is not one."""
    try:
        fields = _ENVELOPE.decode(body)
        data = _ENCRYPTED_DATA.decode(fields["data"])
        if data.keys() != _SEALED_MEMBERS or data["encryption"] != SCHEME:
            return None
        return _STRING.decode(fields["event_id"]), _STRING.decode(fields["user_id"])
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, RecursionError):
        return None


def encrypt_event(body: bytes, data_key: bytes) -> bytes:
    """The event ``body`` with its ``data`` encrypted (the rest of the envelope as it was).

    Args:
        body: a valid event (JSON object with ``event_id``, ``user_id`` and ``data``).
        data_key: the data key of the event's ``user_id``.

    Raises:
        ValueError: ``body`` is not an event object with those fields.
    """
    try:
        fields = _ENVELOPE.decode(body)
        event_id = _STRING.decode(fields["event_id"])
        user_id = _STRING.decode(fields["user_id"])
        plaintext = bytes(fields["data"])
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
        raise ValueError(f"not an event to encrypt: {exc}") from exc
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _event_aad(event_id, user_id))
    sealed = {
        "encryption": SCHEME,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return _with_data(body, fields, _ENCODER.encode(sealed))


class _SealedData(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """An encrypted ``data`` object: exactly these three members (``_SEALED_MEMBERS``)."""

    encryption: str
    nonce: str
    ciphertext: str


class SealedEvent(msgspec.Struct, frozen=True, gc=False):
    """The parts of an encrypted event that opening it needs, read once (``sealed_event``):
    the envelope's ``event_id`` and ``user_id`` (bound to the ciphertext; the user's data key
    opens it) and ``data`` as it is in the body."""

    event_id: str
    user_id: str
    data: msgspec.Raw


_SEALED_EVENT: Final = msgspec.json.Decoder(SealedEvent)
_SEALED_DATA: Final = msgspec.json.Decoder(_SealedData)


def sealed_event(body: bytes) -> tuple[SealedEvent, str, str] | None:
    """``(parts, nonce, ciphertext)`` of an encrypted event (nonce and ciphertext in base64 as
    in the body), None when ``body`` is not one (as ``envelope_of``)."""
    try:
        parts = _SEALED_EVENT.decode(body)
        data = _SEALED_DATA.decode(parts.data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if data.encryption != SCHEME:
        return None
    return parts, data.nonce, data.ciphertext


def data_cipher(data_key: bytes) -> AESGCM:
    """The cipher of one data key, made once for every event of its child in a batch.

    Raises:
        ValueError: the key is not 16, 24 or 32 bytes.
    """
    return AESGCM(data_key)


def open_sealed(body: bytes, sealed: tuple[SealedEvent, str, str], cipher: AESGCM) -> bytes:
    """``decrypt_event`` of a body already read (``sealed_event(body)``), with its child's
    cipher (``data_cipher``).

    Raises:
        DecryptionFailed: as ``decrypt_event``.
    """
    parts, nonce_text, ciphertext_text = sealed
    try:
        nonce = _b64decode(nonce_text)
        ciphertext = _b64decode(ciphertext_text)
    except ValueError as exc:  # binascii.Error, or a str that is not ASCII
        raise DecryptionFailed(f"not an encrypted event of scheme {SCHEME}") from exc
    try:
        plaintext = cipher.decrypt(nonce, ciphertext, _event_aad(parts.event_id, parts.user_id))
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed("the event's data does not open with its child's data key") from exc
    spliced = _splice(body, bytes(parts.data), plaintext)
    if spliced is not None:
        return spliced
    return _with_data(body, _ENVELOPE.decode(body), plaintext)


def decrypt_event(body: bytes, data_key: bytes) -> bytes:
    """The event ``body`` with its ``data`` decrypted: the bytes the producer sent as ``data``.

    Raises:
        DecryptionFailed: not an encrypted event of this form, another key, or altered bytes.
    """
    try:
        fields = _ENVELOPE.decode(body)
        event_id = _STRING.decode(fields["event_id"])
        user_id = _STRING.decode(fields["user_id"])
        sealed = _ENCRYPTED_DATA.decode(fields["data"])
        nonce = _b64decode(sealed["nonce"])
        ciphertext = _b64decode(sealed["ciphertext"])
    # ValueError: binascii.Error, or a nonce or ciphertext that is not ASCII.
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, ValueError) as exc:
        raise DecryptionFailed(f"not an encrypted event of scheme {SCHEME}") from exc
    try:
        plaintext = AESGCM(data_key).decrypt(nonce, ciphertext, _event_aad(event_id, user_id))
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed("the event's data does not open with its child's data key") from exc
    return _with_data(body, fields, plaintext)
