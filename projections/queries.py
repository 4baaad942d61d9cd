"""Read queries on the stored projections, applied event ids and dead letters (docs/contract.md §6).

Every function takes a SQLAlchemy ``Connection`` (sync, psycopg 3) and returns frozen msgspec
Structs that the HTTP API sends as they are. Timestamps come back as UTC datetimes (msgspec writes
them as RFC 3339 with ``Z``), whatever the session's ``TimeZone`` is.

The API runs these in worker threads, so one query module serves the request handlers and the
scrape-time metrics collector alike; the friendship point read also has an async psycopg form
(``friendship_of_async``) for the API's async pool.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec
import psycopg
from sqlalchemy import Connection, select

from projections.fold import level_of
from projections.tables import (
    SENTIMENT_COLUMNS,
    applied_events,
    dead_letters,
    friendships,
    topic_metrics,
)
from schemas.events import SENTIMENTS, UUID_PATTERN

#: Dead letters per page when the caller does not say.
DEFAULT_PAGE_LIMIT: Final = 50
#: Most dead letters in one page.
MAX_PAGE_LIMIT: Final = 500
#: Longest ``event_id`` kept on a dead letter (``processor.applying.batch`` truncates to it).
DEAD_LETTER_EVENT_ID_CHARS: Final = 64
#: Largest dead-letter id (a bigint), so the largest position a cursor can hold.
_MAX_ID: Final = 2**63 - 1

_UUID_RE: Final = re.compile(UUID_PATTERN)

RawEncoding = Literal["utf-8", "base64"]


class FriendshipView(msgspec.Struct, frozen=True):
    """Friendship of one user: ``score`` 0..100, its ``level``, events applied, last occurred_at."""

    user_id: str
    score: int
    level: str
    events_applied: int
    last_event_at: datetime | None


class TopicView(msgspec.Struct, frozen=True):
    """Metrics of one (user, topic).

    ``duration_s`` is in seconds; ``sentiment`` maps each of the 8 labels to its child-turn count.
    """

    topic: str
    conversations: int
    turns: int
    duration_s: float
    sentiment: dict[str, int]
    last_discussed_at: datetime | None


class UserTopics(msgspec.Struct, frozen=True):
    """Every topic of one user, sorted by topic."""

    user_id: str
    topics: list[TopicView]


class AppliedEvent(msgspec.Struct, frozen=True, tag_field="status", tag="applied"):
    """An event whose effects are in the projections: where it is in the log and what it was."""

    event_id: str
    partition: int
    offset: int
    user_id: str
    type: str
    occurred_at: datetime


class DeadLetteredEvent(msgspec.Struct, frozen=True, tag_field="status", tag="dead_lettered"):
    """An invalid record found by its ``event_id``.

    ``raw`` is the body as text when it is UTF-8, else base64; ``raw_encoding`` says which.
    Both are null unless the reader may see a dead letter's bytes (an ``admin`` token).
    """

    event_id: str
    partition: int
    offset: int
    field: str
    reason: str
    dead_lettered_at: datetime
    raw: str | None
    raw_encoding: RawEncoding | None


#: What ``GET /v1/events/{event_id}`` answers; ``status`` tells the two apart.
EventStatus = AppliedEvent | DeadLetteredEvent


class Totals(msgspec.Struct, frozen=True):
    """Counts over the whole log: events applied (distinct event ids) and dead letters."""

    events_applied: int
    dead_lettered: int


class DeadLetterView(msgspec.Struct, frozen=True):
    """One dead letter: log position, the readable event_id (or null), why, when, raw bytes.

    ``raw`` and ``raw_encoding`` are left out of the answer (``msgspec.UNSET``) when the
    reader asked for the dead letters without their bytes.
    """

    partition: int
    offset: int
    event_id: str | None
    field: str
    reason: str
    dead_lettered_at: datetime
    raw: str | msgspec.UnsetType = msgspec.UNSET
    raw_encoding: RawEncoding | msgspec.UnsetType = msgspec.UNSET


class DeadLetterPage(msgspec.Struct, frozen=True):
    """A page of dead letters, newest first; pass ``next_cursor`` back for the next page.

    ``next_cursor`` is null on the last page.
    """

    dead_letters: list[DeadLetterView]
    limit: int
    next_cursor: str | None


def utc(moment: datetime) -> datetime:
    """The same instant with ``datetime.UTC`` as its zone (rendered as ``...Z``)."""
    return moment.astimezone(UTC)


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)


def render_raw(raw: bytes) -> tuple[str, RawEncoding]:
    """A raw body for JSON: ``(text, "utf-8")`` when it decodes as UTF-8, else base64."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def parse_cursor(cursor: str) -> int:
    """The position inside an opaque dead-letter cursor (as made by ``dead_letter_page``).

    Raises:
        ValueError: the cursor was not made by this module.
    """
    try:
        position = int(base64.urlsafe_b64decode(cursor.encode("ascii") + b"==").decode("ascii"))
    except (UnicodeError, binascii.Error, ValueError) as exc:
        raise ValueError(f"cursor {cursor!r} is not valid") from exc
    if not 1 <= position <= _MAX_ID:
        raise ValueError(f"cursor {cursor!r} is not valid")
    return position


def _make_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(str(position).encode("ascii")).decode("ascii").rstrip("=")


def friendship_of(conn: Connection, user_id: str) -> FriendshipView | None:
    """The friendship of ``user_id``, or None when the user has no applied event."""
    if "\x00" in user_id:  # PostgreSQL text holds no NUL, so no stored user has one
        return None
    row = conn.execute(
        select(
            friendships.c.score, friendships.c.events_applied, friendships.c.last_event_at
        ).where(friendships.c.user_id == user_id)
    ).first()
    if row is None:
        return None
    return _friendship_view(user_id, row.score, row.events_applied, row.last_event_at)


#: ``friendship_of_async``'s one statement (psycopg prepares it on a connection that ran it
#: a few times: ``prepare_threshold``).
_FRIENDSHIP_SQL: Final = (
    "SELECT score, events_applied, last_event_at FROM friendships WHERE user_id = %s"
)


async def friendship_of_async(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], user_id: str
) -> FriendshipView | None:
    """``friendship_of`` on an async psycopg connection: one statement, no SQLAlchemy layer
    (the API's point read).

    Raises:
        psycopg.Error: the database failed.
    """
    if "\x00" in user_id:
        return None
    cursor = await conn.execute(_FRIENDSHIP_SQL, (user_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    return friendship_view(user_id, row)


def friendship_view(user_id: str, row: tuple[Any, ...]) -> FriendshipView:
    """The friendship of ``user_id`` from its ``friendships`` row ``(score, events_applied,
    last_event_at)`` (the columns of ``friendship_of_async``'s statement, in order)."""
    score, events_applied, last_event_at = row
    return _friendship_view(user_id, score, events_applied, last_event_at)


def _friendship_view(
    user_id: str, score: int, events_applied: int, last_event_at: datetime | None
) -> FriendshipView:
    return FriendshipView(
        user_id=user_id,
        score=int(score),
        level=level_of(int(score)),
        events_applied=int(events_applied),
        last_event_at=_utc_or_none(last_event_at),
    )


def topics_of(conn: Connection, user_id: str) -> UserTopics | None:
    """Every topic of ``user_id`` sorted by topic (all 8 sentiment labels each).

    Returns:
        None when the user has no applied event; a user whose events were all
        ``friendship.adjusted`` has an empty ``topics`` list.
    """
    if "\x00" in user_id:  # PostgreSQL text holds no NUL, so no stored user has one
        return None
    known = conn.execute(
        select(friendships.c.user_id).where(friendships.c.user_id == user_id)
    ).first()
    if known is None:
        return None
    sentiment_columns = [topic_metrics.c[name] for name in SENTIMENT_COLUMNS]
    rows = conn.execute(
        select(
            topic_metrics.c.topic,
            topic_metrics.c.conversations,
            topic_metrics.c.turns,
            topic_metrics.c.duration_s,
            *sentiment_columns,
            topic_metrics.c.last_discussed_at,
        )
        .where(topic_metrics.c.user_id == user_id)
        .order_by(topic_metrics.c.topic)
    ).all()
    topics = [
        TopicView(
            topic=row.topic,
            conversations=int(row.conversations),
            turns=int(row.turns),
            duration_s=float(row.duration_s),
            sentiment={
                label: int(row._mapping[column])
                for label, column in zip(SENTIMENTS, SENTIMENT_COLUMNS, strict=True)
            },
            last_discussed_at=_utc_or_none(row.last_discussed_at),
        )
        for row in rows
    ]
    return UserTopics(user_id=user_id, topics=topics)


def _as_uuid(event_id: str) -> uuid.UUID | None:
    if _UUID_RE.match(event_id) is None:
        return None
    return uuid.UUID(event_id)


def event_status(conn: Connection, event_id: str, *, with_raw: bool = True) -> EventStatus | None:
    """Where an event went: applied, dead-lettered, or None when neither table knows it.

    ``event_id`` may be any string: one that is not a UUID can still name a dead letter (whose
    body had a malformed id). An applied event wins over a dead letter with the same id; of
    several dead letters with one id, the newest is answered. ``with_raw`` false leaves a dead
    letter's bytes out (``raw`` and ``raw_encoding`` null: readable by admin only).
    """
    as_uuid = _as_uuid(event_id)
    if as_uuid is not None:
        row = conn.execute(
            select(
                applied_events.c.partition,
                applied_events.c.log_offset,
                applied_events.c.user_id,
                applied_events.c.type,
                applied_events.c.occurred_at,
            ).where(applied_events.c.event_id == as_uuid)
        ).first()
        if row is not None:
            return AppliedEvent(
                event_id=str(as_uuid),
                partition=int(row.partition),
                offset=int(row.log_offset),
                user_id=row.user_id,
                type=row.type,
                occurred_at=utc(row.occurred_at),
            )
    # Stored the way ``processor.applying.batch`` stores a dead letter's id: cut, then NUL escaped.
    spellings = sorted(
        {
            spelling[:DEAD_LETTER_EVENT_ID_CHARS].replace("\x00", "\\u0000")
            for spelling in (event_id, event_id.lower(), event_id.upper())
        }
    )
    dead = conn.execute(
        select(
            dead_letters.c.event_id,
            dead_letters.c.partition,
            dead_letters.c.log_offset,
            dead_letters.c.field,
            dead_letters.c.reason,
            dead_letters.c.dead_lettered_at,
            dead_letters.c.raw,
        )
        .where(dead_letters.c.event_id.in_(spellings))
        .order_by(dead_letters.c.id.desc())
        .limit(1)
    ).first()
    if dead is None:
        return None
    raw, encoding = render_raw(bytes(dead.raw)) if with_raw else (None, None)
    return DeadLetteredEvent(
        event_id=dead.event_id,
        partition=int(dead.partition),
        offset=int(dead.log_offset),
        field=dead.field,
        reason=dead.reason,
        dead_lettered_at=utc(dead.dead_lettered_at),
        raw=raw,
        raw_encoding=encoding,
    )


def dead_letter_page(
    conn: Connection,
    limit: int = DEFAULT_PAGE_LIMIT,
    cursor: str | None = None,
    offset: int = 0,
    *,
    with_raw: bool = True,
) -> DeadLetterPage:
    """Dead letters newest first (by insertion order), keyset-paginated.

    Args:
        conn: a database connection.
        limit: most dead letters in the page, 1..``MAX_PAGE_LIMIT``.
        cursor: ``next_cursor`` of the previous page; the page starts right after it.
        offset: dead letters to skip first (after the cursor, if any); for jumping ahead.
        with_raw: whether the items carry ``raw`` and ``raw_encoding`` (False: the bytes are
            not even read from the database).

    Returns:
        The page; ``next_cursor`` is None when nothing is left after it.

    Raises:
        ValueError: ``limit`` or ``offset`` out of range, or a malformed ``cursor``.
    """
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be in 1..{MAX_PAGE_LIMIT}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    query = select(
        dead_letters.c.id,
        dead_letters.c.partition,
        dead_letters.c.log_offset,
        dead_letters.c.event_id,
        dead_letters.c.field,
        dead_letters.c.reason,
        dead_letters.c.dead_lettered_at,
        *([dead_letters.c.raw] if with_raw else []),
    )
    if cursor is not None:
        query = query.where(dead_letters.c.id < parse_cursor(cursor))
    rows = conn.execute(
        query.order_by(dead_letters.c.id.desc()).offset(offset).limit(limit + 1)
    ).all()
    page = rows[:limit]
    items = []
    for row in page:
        item = DeadLetterView(
            partition=int(row.partition),
            offset=int(row.log_offset),
            event_id=row.event_id,
            field=row.field,
            reason=row.reason,
            dead_lettered_at=utc(row.dead_lettered_at),
        )
        if with_raw:
            raw, encoding = render_raw(bytes(row.raw))
            item = msgspec.structs.replace(item, raw=raw, raw_encoding=encoding)
        items.append(item)
    next_cursor = _make_cursor(int(page[-1].id)) if len(rows) > limit else None
    return DeadLetterPage(dead_letters=items, limit=limit, next_cursor=next_cursor)
