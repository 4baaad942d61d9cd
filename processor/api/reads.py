"""The read API (docs/contract.md §6): friendship, topics, event status, stats and dead letters.

Every handler runs its query in a worker thread (``ApiContext.read``). Timestamps are RFC 3339
in UTC with ``Z``. Errors use the shape ``{"error": {"code", "message"}}``: 404
``user_not_found`` / ``event_not_found``, 400 ``invalid_user_id`` / ``invalid_parameters`` /
``invalid_cursor``, 503 ``database_unavailable`` / ``broker_unavailable``. No message echoes a
request value whole (``processor.api.errors.quoted``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from processor.api.auth import requires, token_of
from processor.api.context import ApiContext, TailsUnknown
from processor.api.errors import ApiError, error_responses, quoted
from projections import queries
from projections.queries import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    DeadLetterPage,
    EventStatus,
    FriendshipView,
    UserTopics,
)
from schemas.events import USER_ID_PATTERN

#: Largest ``offset`` of ``GET /v1/dead-letters``: PostgreSQL's OFFSET is a bigint.
MAX_OFFSET: Final = 2**63 - 1


class PartitionView(msgspec.Struct, frozen=True):
    """One partition: committed offset (-1 = none), lag in events, owner ``host:pid`` or null."""

    partition: int
    checkpoint: int
    lag: int
    owner: str | None


class BuildView(msgspec.Struct, frozen=True):
    """A build of a fold version (``processor.versions``): its state (``building``,
    ``checking``, ``swapping``, ``live``, ``failed``), who runs it, when, and its progress in
    log records (``records_total`` is an upper bound that grows while live moves on)."""

    fold_version: int
    state: str
    member: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    records_done: int
    records_total: int
    message: str


class StatsView(msgspec.Struct, frozen=True):
    """Totals over the log and the status of partitions 0..PARTITIONS-1, in order; the fold
    version the projections are at (null before any checkpoint) and the newest build of one
    (null when there was none). The lags use the stream tails the API reads in the background:
    ``tails_read_at`` is when they were read (UTC), ``tails_age_s`` how many seconds ago (about
    one when the broker answers; growing while it does not)."""

    events_applied: int
    dead_lettered: int
    partitions: list[PartitionView]
    fold_version: int | None = None
    fold_build: BuildView | None = None
    tails_read_at: datetime | None = None
    tails_age_s: float | None = None


#: A ``user_id`` as the contract defines it (docs/contract.md section 1), for path parameters.
_USER_ID: Final = re.compile(USER_ID_PATTERN)


def checked_user_id(user_id: str) -> str:
    """``user_id`` when it follows the contract's rule, else a 400 that does not echo it.

    Raises:
        ApiError: 400 ``invalid_user_id``.
    """
    if _USER_ID.match(user_id) is None:
        raise ApiError(
            HTTP_400_BAD_REQUEST,
            "invalid_user_id",
            "a user_id is 1 to 128 characters from A-Z, a-z, 0-9 and . _ : @ -",
        )
    return user_id


def _user_not_found(user_id: str) -> ApiError:
    return ApiError(HTTP_404_NOT_FOUND, "user_not_found", f"user {user_id!r} has no applied event")


@get(
    "/v1/users/{user_id:str}/friendship",
    tags=["read"],
    summary="Friendship of a user",
    guards=[requires("read")],
    responses=error_responses(400, 401, 403, 404, 503),
)
async def get_friendship(
    user_id: FromPath[str], ctx: NamedDependency[ApiContext]
) -> FriendshipView:
    """The user's score (0..100), level, events applied and last ``occurred_at``.

    Errors: 400 ``invalid_user_id`` for an id that breaks the contract's rule; 404
    ``user_not_found`` when the user has no applied event.
    """
    friendship = await ctx.read(queries.friendship_of, checked_user_id(user_id))
    if friendship is None:
        raise _user_not_found(user_id)
    return friendship


@get(
    "/v1/users/{user_id:str}/topics",
    tags=["read"],
    summary="Topic metrics of a user",
    guards=[requires("read")],
    responses=error_responses(400, 401, 403, 404, 503),
)
async def get_topics(user_id: FromPath[str], ctx: NamedDependency[ApiContext]) -> UserTopics:
    """The user's topics sorted by topic, each with all 8 sentiment labels.

    Errors: 400 ``invalid_user_id`` for an id that breaks the contract's rule; 404
    ``user_not_found`` when the user has no applied event.
    """
    topics = await ctx.read(queries.topics_of, checked_user_id(user_id))
    if topics is None:
        raise _user_not_found(user_id)
    return topics


@get(
    "/v1/events/{event_id:str}",
    tags=["read"],
    summary="Status of an event",
    guards=[requires("read")],
    responses=error_responses(401, 403, 404, 503),
)
async def get_event(
    event_id: FromPath[str], request: Request[Any, Any, Any], ctx: NamedDependency[ApiContext]
) -> EventStatus:
    """``status`` ``applied`` (partition, offset, user_id, type, occurred_at) or
    ``dead_lettered`` (partition, offset, field, reason, dead_lettered_at; with an ``admin``
    token also ``raw`` and ``raw_encoding``: a dead letter's bytes are readable by admin only).

    Any string is accepted: a malformed id can still name a dead letter.

    Errors: 404 ``event_not_found`` when neither applied nor dead-lettered.
    """
    token = token_of(request)
    with_raw = token is not None and token.allows("admin")
    status = await ctx.read(queries.event_status, event_id, with_raw=with_raw)
    if status is None:
        raise ApiError(
            HTTP_404_NOT_FOUND,
            "event_not_found",
            f"event {quoted(event_id)} is neither applied nor dead-lettered",
        )
    return status


@get(
    "/v1/stats",
    tags=["read"],
    summary="Totals and partition status",
    guards=[requires("read")],
    responses=error_responses(401, 403, 503),
)
async def get_stats(ctx: NamedDependency[ApiContext]) -> StatsView:
    """Events applied, dead letters, and per partition its checkpoint, lag and owner; the fold
    version served and the newest build of one, with its progress; when the stream tails the
    lags are computed from were read, and their age.

    Reads the database only (one pooled connection): the tails come from the API's tail cache
    (``processor.reading.tails``), refreshed in the background. Right after the API started a
    call waits for the cache's first read (at most ``tuning.TAILS_FIRST_READ_WAIT_S``).

    Errors: 503 ``database_unavailable``; 503 ``broker_unavailable`` when the tails were never
    read since the API started (later, a broker that is down gives the last tails and their age).
    """
    await ctx.wait_for_tails()
    try:
        stats = await asyncio.to_thread(ctx.read_stats)
    except TailsUnknown as exc:
        raise ApiError(
            HTTP_503_SERVICE_UNAVAILABLE,
            "broker_unavailable",
            f"cannot read the partition tails from the broker: {exc}",
        ) from exc
    build = stats.versions.build
    age = stats.tails.age_s()
    return StatsView(
        events_applied=stats.totals.events_applied,
        dead_lettered=stats.totals.dead_lettered,
        partitions=[
            PartitionView(partition=s.partition, checkpoint=s.checkpoint, lag=s.lag, owner=s.owner)
            for s in stats.statuses
        ],
        fold_version=stats.versions.serving,
        fold_build=None if build is None else BuildView(**dataclasses.asdict(build)),
        tails_read_at=stats.tails.read_at,
        tails_age_s=None if age is None else round(age, 3),
    )


@get(
    "/v1/dead-letters",
    tags=["admin"],
    summary="Dead letters, newest first (admin)",
    guards=[requires("admin")],
    responses=error_responses(400, 401, 403, 503),
)
async def get_dead_letters(
    ctx: NamedDependency[ApiContext],
    limit: Annotated[
        int,
        QueryParameter(
            ge=1,
            le=MAX_PAGE_LIMIT,
            description=f"dead letters per page, 1..{MAX_PAGE_LIMIT}",
        ),
    ] = DEFAULT_PAGE_LIMIT,
    cursor: Annotated[
        str | None,
        QueryParameter(description="`next_cursor` of the previous page; absent for the first page"),
    ] = None,
    offset: Annotated[
        int,
        QueryParameter(
            ge=0,
            le=MAX_OFFSET,
            description="dead letters to skip (after the cursor, if any)",
        ),
    ] = 0,
) -> DeadLetterPage:
    """One page of dead letters, newest first: ``{"dead_letters": [...], "limit",
    "next_cursor"}``; each has partition, offset, event_id, field, reason, dead_lettered_at,
    raw (text, or base64 when not UTF-8) and raw_encoding. ``next_cursor`` is null on the last
    page. Query: ``limit`` (default 50, max 500), ``cursor``, ``offset``.

    Errors: 400 ``invalid_parameters`` (limit/offset out of range), 400 ``invalid_cursor``.
    """
    if cursor is not None:
        try:
            queries.parse_cursor(cursor)
        except ValueError as exc:
            raise ApiError(
                HTTP_400_BAD_REQUEST,
                "invalid_cursor",
                f"cursor {quoted(cursor)} is not valid: pass the next_cursor of a previous page",
            ) from exc
    return await ctx.read(queries.dead_letter_page, limit=limit, cursor=cursor, offset=offset)
