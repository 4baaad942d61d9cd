"""Errors of membership and leases."""

from __future__ import annotations

from processor.errors import ProcessorError


class OwnershipError(ProcessorError):
    """Root of the errors of ``processor.ownership``."""


class MemberIdInUse(OwnershipError):
    """Another live process already joined with this member id."""
