"""Read-your-writes, the pure part: write tokens and the ``after`` / ``wait_s`` parameters.

A read may name the writes it must see (docs/contract.md §6.2): ``after`` is either

- a **write token**, as ``POST /v1/events`` answers it: ``rw_`` and 32 lower-case hex digits
  (16 random bytes naming a row of ``write_tokens``; the prefix holds an underscore, which no
  event id has), or
- up to ``MAX_AFTER_IDS`` event ids (UUIDs, any case), separated by commas.

``wait_s`` is how long the read may wait for them, in seconds: ``DEFAULT_WAIT_S`` when
``after`` is given without it, at most ``MAX_WAIT_S``; ``wait_s`` without ``after`` is refused.
Pure: no broker, no database.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

#: What every write token starts with.
TOKEN_PREFIX: Final = "rw_"  # noqa: S105 - a public prefix, not a secret
#: Most event ids ``after`` may list.
MAX_AFTER_IDS: Final = 100
#: Seconds a read with ``after`` waits when ``wait_s`` is not given.
DEFAULT_WAIT_S: Final = 2.0
#: Longest ``wait_s``, in seconds.
MAX_WAIT_S: Final = 10.0

_TOKEN: Final = re.compile(r"rw_([0-9a-f]{32})")
_EVENT_ID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
#: Longest ``after`` read as a list (100 ids of 36 characters, commas and some spaces).
_MAX_LIST_CHARS: Final = MAX_AFTER_IDS * 40


class AfterInvalid(ValueError):
    """``after`` or ``wait_s`` breaks its rule; the message says which rule, and never echoes
    the value."""


class TokenMalformed(ValueError):
    """``after`` starts like a write token but is not one."""


@dataclass(frozen=True)
class AfterToken:
    """``after`` named a write token: the id of its ``write_tokens`` row."""

    token_id: uuid.UUID


@dataclass(frozen=True)
class AfterIds:
    """``after`` listed event ids: each as given (dead letters keep an id as written), without
    repeats, in the order given."""

    event_ids: tuple[str, ...]


def new_token_id() -> uuid.UUID:
    """A fresh, unguessable token id: 128 random bits (``secrets``)."""
    return uuid.UUID(bytes=secrets.token_bytes(16))


def token_text(token_id: uuid.UUID) -> str:
    """The token a client sees for ``token_id``: ``rw_`` + 32 lower-case hex digits."""
    return TOKEN_PREFIX + token_id.hex


def parse_after(raw: str) -> AfterToken | AfterIds:
    """Read an ``after`` parameter.

    Returns:
        ``AfterToken`` when ``raw`` starts with ``rw_``, else ``AfterIds``.

    Raises:
        TokenMalformed: ``raw`` starts with ``rw_`` but is not ``rw_`` + 32 hex digits.
        AfterInvalid: the list is empty, has an item that is not a UUID, or more than
            ``MAX_AFTER_IDS`` ids.
    """
    text = raw.strip()
    if text.startswith(TOKEN_PREFIX):
        match = _TOKEN.fullmatch(text.lower())
        if match is None:
            raise TokenMalformed("a write token is rw_ and 32 hex digits")
        return AfterToken(uuid.UUID(hex=match.group(1)))
    if len(text) > _MAX_LIST_CHARS or text.count(",") >= MAX_AFTER_IDS:
        raise AfterInvalid(f"after lists at most {MAX_AFTER_IDS} event ids")
    items = [item.strip() for item in text.split(",")]
    if not text or any(not item for item in items):
        raise AfterInvalid("after is a write token or event ids separated by commas, none empty")
    bad = sum(1 for item in items if _EVENT_ID.fullmatch(item) is None)
    if bad:
        raise AfterInvalid(
            f"{bad} of the {len(items)} items of after are not event ids (UUIDs, "
            "8-4-4-4-12 hex digits) and after is not a write token (rw_...)"
        )
    return AfterIds(tuple(dict.fromkeys(items)))


def wait_seconds(after: str | None, wait_s: float | None) -> float:
    """How long a read waits: ``wait_s``, or ``DEFAULT_WAIT_S`` when only ``after`` is given.

    Args:
        after: the raw ``after`` parameter (None: absent).
        wait_s: the ``wait_s`` parameter in seconds (None: absent; its range 0..``MAX_WAIT_S``
            is checked by the route's parameter rules).

    Raises:
        AfterInvalid: ``wait_s`` without ``after``, or not a finite number in range.
    """
    if wait_s is None:
        return DEFAULT_WAIT_S
    if after is None:
        raise AfterInvalid("wait_s needs after: name the writes to wait for")
    if not 0.0 <= wait_s <= MAX_WAIT_S:  # NaN fails both comparisons
        raise AfterInvalid(f"wait_s is a number of seconds from 0 to {MAX_WAIT_S:g}")
    return wait_s
