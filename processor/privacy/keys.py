"""The product's two secrets: the hash key and the key-encryption key, loaded or created.

- The *hash key* keys an HMAC-SHA-256 that stores API tokens (only their keyed hash is kept),
  names a child in logs (``user_ref``: 16 hex digits, the same ``replay --user`` prints) and in
  erasure records (``user_digest``), so neither holds the child's id.
- The *key-encryption key* (KEK) wraps each child's data key (``processor.privacy.crypto``);
  the wrapped keys live in PostgreSQL. Without the KEK the data keys, and so the events'
  ``data`` in the log, cannot be read: back it up apart from the database.

Each comes from its setting (base64, ``HASH_KEY`` and ``KEY_ENCRYPTION_KEY``) or from a file in
``SECRETS_DIR`` (``hash.key``, ``kek.key``, base64 text; ``~/.config/friendship-stream`` by
default). ``init_keys`` (run by ``just
services``) creates the missing files, readable by their owner only; nothing else creates a
key, so a process started with the wrong ``SECRETS_DIR`` fails loudly instead of writing data
under a key nobody has.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from processor.privacy.errors import KeyMissing
from processor.settings import ENV_HASH_KEY, ENV_KEY_ENCRYPTION_KEY, Settings

#: Bytes of each key: 256 bits.
KEY_BYTES: Final = 32
#: Hex digits of a child's reference in logs (64 bits: enough to tell children apart).
USER_REF_HEX: Final = 16
#: Most children whose ``user_digest`` a ``Keys`` remembers (about 200 bytes each).
DIGEST_MEMO_SIZE: Final = 50_000
HASH_KEY_FILE: Final = "hash.key"
KEK_FILE: Final = "kek.key"


@dataclass(frozen=True)
class Keys:
    """The loaded secrets (never printed: their fields are left out of ``repr``).

    Attributes:
        hash_key: the HMAC-SHA-256 key.
        kek: the key-encryption key (AES-256).
        kek_id: a short, public name of the KEK (hex of a hash of it), stored with each wrapped
            data key so a rotation knows which key wrapped it.
        hash_key_id: a short, public name of the hash key, recorded in the database so a
            process with another one stops (``privacy.key_ids``).
    """

    hash_key: bytes = field(repr=False)
    kek: bytes = field(repr=False)
    kek_id: str = ""
    hash_key_id: str = field(default="", init=False)
    #: ``batch_user_digest`` of the children a processor's batches hashed lately (the next
    #: batches of a partition meet the same ones): child id -> digest, emptied at
    #: ``DIGEST_MEMO_SIZE``. Never key material. Only the processor's batches fill it: an API
    #: or CLI process, which erases children, keeps no id next to its digest.
    _digests: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.kek) != KEY_BYTES:
            raise KeyMissing(f"the key-encryption key must be {KEY_BYTES} bytes")
        if len(self.hash_key) < KEY_BYTES:
            raise KeyMissing(f"the hash key must be at least {KEY_BYTES} bytes")
        if not self.kek_id:
            object.__setattr__(
                self, "kek_id", hashlib.sha256(b"kek-id" + self.kek).hexdigest()[:16]
            )
        hash_key_id = hashlib.sha256(b"hash-key-id" + self.hash_key).hexdigest()[:16]
        object.__setattr__(self, "hash_key_id", hash_key_id)

    def keyed_hash(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA-256 of ``value`` under the hash key, separated by ``purpose``."""
        message = purpose.encode() + b"\0" + value.encode()
        # The one-shot form: the same digest as hmac.new(...).digest(), without the HMAC
        # object (a batch hashes each of its children).
        return hmac.digest(self.hash_key, message, "sha256")

    def user_digest(self, user_id: str) -> bytes:
        """The 32-byte keyed hash that stands for a child in erasure records."""
        return self.keyed_hash("user", user_id)

    def batch_user_digest(self, user_id: str) -> bytes:
        """``user_digest``, remembered for the processor's next batches (thread-safe: one dict
        operation at a time under the GIL; at most ``DIGEST_MEMO_SIZE`` children, then the
        memo starts over). For the batch path only (``processor.applying.batch``)."""
        digest = self._digests.get(user_id)
        if digest is None:
            digest = self.user_digest(user_id)
            if len(self._digests) >= DIGEST_MEMO_SIZE:
                self._digests.clear()
            self._digests[user_id] = digest
        return digest

    def user_ref(self, user_id: str) -> str:
        """A child's name in logs: the first ``USER_REF_HEX`` hex digits of ``user_digest``."""
        return self.user_digest(user_id).hex()[:USER_REF_HEX]


def new_key() -> str:
    """A fresh random key, base64 (what the settings and the key files hold)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def _decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyMissing(f"{where} is not base64") from exc


def _read(inline: str, variable: str, path: Path) -> bytes:
    if inline:
        return _decode(inline, variable)
    try:
        return _decode(path.read_text(), str(path))
    except FileNotFoundError as exc:
        raise KeyMissing(
            f"no {variable} and no {path}: run `just services` (it creates the keys), or set "
            f"{variable}"
        ) from exc
    except OSError as exc:
        raise KeyMissing(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_keys(settings: Settings) -> Keys:
    """The keys of ``settings``: inline values first, else the files in ``secrets_dir``.

    Raises:
        KeyMissing: a key is neither set nor in its file, or is malformed.
    """
    directory = Path(settings.secrets_dir)
    return Keys(
        hash_key=_read(settings.hash_key, ENV_HASH_KEY, directory / HASH_KEY_FILE),
        kek=_read(settings.key_encryption_key, ENV_KEY_ENCRYPTION_KEY, directory / KEK_FILE),
    )


def init_keys(settings: Settings) -> list[Path]:
    """Create the key files of ``secrets_dir`` that are missing (mode 0600; safe to run twice).

    Keys given inline in the settings are left alone.

    Returns:
        The files created.
    """
    directory = Path(settings.secrets_dir)
    created = []
    for inline, name in (
        (settings.hash_key, HASH_KEY_FILE),
        (settings.key_encryption_key, KEK_FILE),
    ):
        path = directory / name
        if inline or path.exists():
            continue
        if write_new_key(path):
            created.append(path)
    return created


def write_new_key(path: Path) -> bool:
    """Create ``path`` (mode 0600 from the start, its folder 0700) holding a fresh key.

    Returns:
        True when this call made the file; False when it existed (it is left as it was).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False  # another process made it meanwhile, or an earlier run did
    with os.fdopen(fd, "w") as out:
        out.write(new_key() + "\n")
    return True


def read_key_file(path: Path) -> bytes:
    """The key in ``path`` (base64, as ``write_new_key`` writes it).

    Raises:
        KeyMissing: the file is missing, unreadable or not base64.
    """
    return _read("", path.name, path)
