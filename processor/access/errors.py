"""Errors of API tokens."""

from __future__ import annotations

from processor.errors import ProcessorError


class AccessError(ProcessorError):
    """Root of the errors of ``processor.access``."""


class TokenExists(AccessError):
    """A token of that name exists already (names are unique; revoke it or pick another)."""


class UnknownToken(AccessError):
    """No token has that name."""


class BadScope(AccessError):
    """A scope that is not ``ingest``, ``read`` or ``admin``."""
