"""The read API (docs/contract.md §6): friendship, topics, event status, stats and dead letters.

Every handler runs its query in a worker thread (``ApiContext.read``), but the friendship read,
which runs in the event loop on the async point-read pool (``ApiContext.point_read``); without
``after`` it is read in the token check's statement, batched with the other requests' that came
at the same time (``processor.api.prefetch``): one round trip for many reads. Timestamps
are RFC 3339 in UTC with ``Z``. Errors use the shape ``{"error": {"code", "message"}}``: 404
``user_not_found`` / ``event_not_found``, 400 ``invalid_user_id`` / ``invalid_parameters`` /
``invalid_cursor`` / ``invalid_token``, 503 ``database_unavailable`` / ``broker_unavailable`` /
``not_yet_applied``. The user reads take ``after`` and ``wait_s`` (read-your-writes:
``wait_for_writes``, ``processor.api.read_after``, ``processor.api.waiting``). No message echoes a
request value whole (``processor.api.errors.quoted``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
import psycopg
from litestar import Request, get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import Scope

from processor import tuning
from processor.access.tokens import JoinedRead
from processor.api.auth import requires, token_of
from processor.api.context import ApiContext, TailsUnknown, statement_bound_ms
from processor.api.errors import ApiError, error_responses, quoted
from processor.api.prefetch import PREFETCH_OPT, Plan, prefetched
from processor.api.read_after import (
    DEFAULT_WAIT_S,
    MAX_AFTER_IDS,
    MAX_WAIT_S,
    AfterInvalid,
    AfterToken,
    TokenMalformed,
    parse_after,
    wait_seconds,
)
from projections import queries
from projections.queries import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    DeadLetterPage,
    EventStatus,
    FriendshipView,
    UserTopics,
)
from projections.write_tokens import WantedEvents, load_token
from schemas.events import USER_ID_PATTERN

#: Largest ``offset`` of ``GET /v1/dead-letters``: PostgreSQL's OFFSET is a bigint.
MAX_OFFSET: Final = 2**63 - 1
#: ``Retry-After`` of a read whose wait for its writes ran out, in seconds.
RETRY_AFTER_S: Final = 1


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


#: The ``after`` query parameter of the user reads (docs/contract.md §6.2).
AfterParameter = Annotated[
    str | None,
    QueryParameter(
        description=(
            "Read-your-writes: the writes this read must see. Either the `token` that "
            "`POST /v1/events` answered (`rw_` + 32 hex digits) or up to "
            f"{MAX_AFTER_IDS} event ids (UUIDs) separated by commas. The read answers once "
            "every one is applied or dead-lettered (or its child erased), or 503 "
            "`not_yet_applied` when `wait_s` runs out; 400 `invalid_token` for a token that is "
            "unknown or expired."
        ),
    ),
]
#: The ``wait_s`` query parameter of the user reads.
WaitParameter = Annotated[
    float | None,
    QueryParameter(
        ge=0,
        le=MAX_WAIT_S,
        description=(
            f"Seconds the read may wait for `after`'s writes, 0..{MAX_WAIT_S:g}; default "
            f"{DEFAULT_WAIT_S:g} when `after` is given; only with `after`."
        ),
    ),
]


async def wait_for_writes(
    ctx: ApiContext, user_id: str, after: str | None, wait_s: float | None
) -> None:
    """Return once every write ``after`` names is done (applied, dead-lettered, or of an
    erased child), waiting at most ``wait_s`` seconds; at once when ``after`` is None.

    Raises:
        ApiError: 400 ``invalid_parameters`` (``after`` or ``wait_s`` breaks its rule), 400
            ``invalid_token`` (a token that is malformed, unknown or expired), 503
            ``not_yet_applied`` (the wait ran out; ``details`` says how many are pending, with
            ``Retry-After``). One deadline, ``wait_s`` from the start: the token lookup and the
            first check are bounded by what is left of it (in the loop and by
            ``statement_timeout``, at least ``tuning.WAIT_CHECK_FLOOR_S``); one that runs out
            counts as not applied yet.
    """
    if after is None and wait_s is None:
        return
    started = asyncio.get_running_loop().time()
    try:
        timeout_s = wait_seconds(after, wait_s)
    except AfterInvalid as exc:
        raise _invalid_parameter("wait_s", exc) from exc
    try:
        parsed = parse_after(after or "")
    except AfterInvalid as exc:
        raise _invalid_parameter("after", exc) from exc
    except TokenMalformed as exc:
        raise _invalid_token() from exc
    reader = ctx.keys.user_digest(user_id)
    loop = asyncio.get_running_loop()
    if isinstance(parsed, AfterToken):
        token_id = parsed.token_id
        # Bounded by the rest of wait_s (at least a small floor), in the loop and in the
        # database: a slow lookup ends as a wait that ran out, and frees its connection.
        bound_s = max(timeout_s - (loop.time() - started), tuning.WAIT_CHECK_FLOOR_S)
        timeout_ms = statement_bound_ms(bound_s)
        try:
            found = await asyncio.wait_for(
                asyncio.to_thread(
                    ctx.with_driver, lambda conn: load_token(conn, token_id, timeout_ms)
                ),
                bound_s,
            )
        except (TimeoutError, psycopg.errors.QueryCanceled) as exc:
            raise ApiError(
                HTTP_503_SERVICE_UNAVAILABLE,
                "not_yet_applied",
                f"the write token could not be read within {timeout_s:g} s; read again "
                "(safe to retry)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        if found is None:
            raise _invalid_token()
        wanted = found
    else:
        # Events named by id: their children are unknown; the reader's erasure ends the wait.
        wanted = WantedEvents(parsed.event_ids, (reader,) * len(parsed.event_ids))
    left = timeout_s - (loop.time() - started)
    pending = await ctx.waits.wait(wanted, reader, max(0.0, left))
    if pending:
        named = len(wanted.event_ids)
        raise ApiError(
            HTTP_503_SERVICE_UNAVAILABLE,
            "not_yet_applied",
            f"{pending} of the {named} events named by after are not applied yet after "
            f"{timeout_s:g} s; read again (safe to retry)",
            [{"pending": pending, "named": named}],
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


def _invalid_parameter(name: str, exc: AfterInvalid) -> ApiError:
    """400 ``invalid_parameters`` in the shape Litestar's own parameter errors have."""
    return ApiError(
        HTTP_400_BAD_REQUEST,
        "invalid_parameters",
        str(exc),
        [{"field": name, "source": "query", "reason": str(exc)}],
    )


def _invalid_token() -> ApiError:
    return ApiError(
        HTTP_400_BAD_REQUEST,
        "invalid_token",
        "after names no write token of this deployment, or the token expired "
        "(tokens last WRITE_TOKEN_TTL_S seconds): read without after, or name the event ids",
    )


#: The friendship row read in the token check's statement (``processor.api.prefetch``): the
#: columns of ``queries.friendship_of_async``, in its order.
_FRIENDSHIP_WITH_TOKEN: Final = JoinedRead(
    scope="read",
    table="friendships f",
    columns="f.score, f.events_applied, f.last_event_at",
    condition="f.user_id = {key}",
)


def _friendship_with_token(connection: ASGIConnection[Any, Any, Any, Any]) -> Plan | None:
    """The friendship read to send with the token check; None for a request with a query
    string (``after`` makes the read wait for its writes: it must read after that) or a
    ``user_id`` the handler refuses (400 after the token check, as without this)."""
    if connection.scope.get("query_string"):
        return None
    user_id = connection.scope["path_params"].get("user_id")
    if not isinstance(user_id, str) or _USER_ID.match(user_id) is None:
        return None
    return _FRIENDSHIP_WITH_TOKEN, user_id


@get(
    "/v1/users/{user_id:str}/friendship",
    tags=["read"],
    summary="Friendship of a user",
    guards=[requires("read")],
    responses=error_responses(400, 401, 403, 404, 503),
    opt={PREFETCH_OPT: _friendship_with_token},
)
async def get_friendship(
    user_id: FromPath[str],
    ctx: NamedDependency[ApiContext],
    scope: Scope,
    after: AfterParameter = None,
    wait_s: WaitParameter = None,
) -> FriendshipView:
    """The user's score (0..100), level, events applied and last ``occurred_at``.

    With ``after`` (a write token or event ids) the answer waits until those writes are
    applied or dead-lettered, at most ``wait_s`` seconds (default 2, at most 10).

    Errors: 400 ``invalid_user_id`` for an id that breaks the contract's rule; 404
    ``user_not_found`` when the user has no applied event; 400 ``invalid_parameters`` /
    ``invalid_token`` and 503 ``not_yet_applied`` (with ``Retry-After``) for ``after``.
    """
    found = prefetched(scope)  # read with the token check: no after, a valid user_id
    if found is not None:
        if found.row is None:
            raise _user_not_found(user_id)
        return queries.friendship_view(user_id, found.row)
    await wait_for_writes(ctx, checked_user_id(user_id), after, wait_s)
    friendship = await ctx.point_read(queries.friendship_of_async, checked_user_id(user_id))
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
async def get_topics(
    user_id: FromPath[str],
    ctx: NamedDependency[ApiContext],
    after: AfterParameter = None,
    wait_s: WaitParameter = None,
) -> UserTopics:
    """The user's topics sorted by topic, each with all 8 sentiment labels.

    ``after`` and ``wait_s`` as for the friendship read.

    Errors: 400 ``invalid_user_id`` for an id that breaks the contract's rule; 404
    ``user_not_found`` when the user has no applied event; 400 ``invalid_parameters`` /
    ``invalid_token`` and 503 ``not_yet_applied`` (with ``Retry-After``) for ``after``.
    """
    await wait_for_writes(ctx, checked_user_id(user_id), after, wait_s)
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
    include_raw: Annotated[
        bool,
        QueryParameter(
            description=(
                "`false` leaves `raw` and `raw_encoding` out of every item (a list that shows "
                "no bytes, such as the dashboard's, need not download them); default `true`"
            ),
        ),
    ] = True,
) -> DeadLetterPage:
    """One page of dead letters, newest first: ``{"dead_letters": [...], "limit",
    "next_cursor"}``; each has partition, offset, event_id, field, reason, dead_lettered_at,
    raw (text, or base64 when not UTF-8) and raw_encoding (both left out with
    ``include_raw=false``). ``next_cursor`` is null on the last page. Query: ``limit``
    (default 50, max 500), ``cursor``, ``offset``, ``include_raw`` (default true).

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
    return await ctx.read(
        queries.dead_letter_page, limit=limit, cursor=cursor, offset=offset, with_raw=include_raw
    )
