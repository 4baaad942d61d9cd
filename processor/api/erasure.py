"""``DELETE /v1/users/{user_id}`` (admin): erase a child (``processor.privacy.erasure``)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import msgspec
from litestar import delete
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK

from processor.api.auth import requires
from processor.api.context import ApiContext
from processor.api.errors import error_responses
from processor.api.reads import checked_user_id
from processor.privacy.erasure import erase_user


class RemovedView(msgspec.Struct, frozen=True):
    """Rows the erasure removed from the live tables."""

    friendships: int
    topic_rows: int
    applied_events: int
    dead_letters: int


class ErasureView(msgspec.Struct, frozen=True):
    """What the erasure did; the child is named by its keyed hash only.

    ``plain_events_in_log`` counts the child's applied events and dead letters published in
    plain text: their ``data`` stays readable in the log (encrypted ones are unreadable once the
    data key is destroyed). A lower bound: events of the child not yet processed are not known.
    ``redacted_dead_letters`` counts other children's dead letters whose event was published
    with this child's id as routing key: they stay, with the key taken out of their reason.
    """

    user_ref: str
    erased_at: datetime
    already_erased: bool
    removed: RemovedView
    data_key_destroyed: bool
    plain_events_in_log: int
    redacted_dead_letters: int


@delete(
    "/v1/users/{user_id:str}",
    status_code=HTTP_200_OK,
    tags=["admin"],
    summary="Erase a child (admin)",
    guards=[requires("admin")],
    responses=error_responses(400, 401, 403, 503),
)
async def delete_user(user_id: FromPath[str], ctx: NamedDependency[ApiContext]) -> ErasureView:
    """Remove the child's rows, dead letters and data key in one transaction, and record the
    erasure (docs/contract.md, "Erasure"). Afterwards every read of the child answers 404, its
    events are never applied again, and ingest refuses new ones (409 ``user_erased``). Erasing
    an erased child again removes nothing and says ``already_erased``.

    Errors: 400 ``invalid_user_id``.
    """
    checked = checked_user_id(user_id)
    report = await asyncio.to_thread(
        ctx.with_driver, lambda conn: erase_user(conn, checked, ctx.keys)
    )
    removed = report.removed
    return ErasureView(
        user_ref=report.user_ref,
        erased_at=report.erased_at,
        already_erased=report.already_erased,
        removed=RemovedView(
            friendships=removed.friendships,
            topic_rows=removed.topic_rows,
            applied_events=removed.applied_events,
            dead_letters=removed.dead_letters,
        ),
        data_key_destroyed=report.data_key_destroyed,
        plain_events_in_log=report.plain_events,
        redacted_dead_letters=removed.redacted_dead_letters,
    )
