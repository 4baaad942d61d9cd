"""Errors of the children's-data protections: keys, encryption and erasure."""

from __future__ import annotations

from processor.errors import ConfigurationError, ProcessorError


class PrivacyError(ProcessorError):
    """Root of the errors of ``processor.privacy``."""


class KeyMissing(ConfigurationError):
    """A secret (the hash key or the key-encryption key) is not configured or is malformed."""


class DecryptionFailed(PrivacyError):
    """An encrypted event or data key cannot be read: no key, another key, or altered bytes."""


class UserErased(PrivacyError):
    """The child was erased: nothing of theirs is accepted, applied or shown again.

    Attributes:
        indexes: the positions of the refused events in the batch that was offered (empty
            when the error is about one child, not a batch).
    """

    def __init__(self, message: str, indexes: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.indexes = indexes


class RotationRefused(PrivacyError):
    """The key-encryption key cannot be rotated now (the message says why and what to do)."""
