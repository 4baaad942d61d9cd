"""``POST /v1/events``: validate events, publish them with broker confirms (docs/contract.md §5).

All or nothing: one invalid item refuses the whole request (422, one detail per bad item) and
nothing is published. Valid items are published as the exact bytes received (unknown fields kept)
with ``user_id`` as routing key, and ``202 {"accepted": n, "token": "rw_..."}`` is answered only
once the broker has confirmed every one of them. The token names the request's event ids, kept
in ``write_tokens`` (stored before publishing): a read passes it as ``after`` to see them.

Limits: a body of at most ``MAX_BODY_BYTES`` (1 MiB: 1000 events of about 1 KiB; bigger is
413) and at most ``MAX_EVENTS`` items (more is 422 ``too_many_events``).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any, Final

import msgspec
import psycopg
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from processor.api.auth import requires
from processor.api.broker import BrokerUnavailable
from processor.api.context import ApiContext
from processor.api.errors import ApiError, error_responses
from processor.api.read_after import new_token_id, token_text
from processor.privacy.data_keys import seal_events
from processor.privacy.errors import UserErased
from processor.publishing.errors import PublishError
from processor.publishing.publisher import OutgoingEvent
from projections.write_tokens import store_token
from schemas import decode_event_batch
from schemas.validation import not_json_reason

log = logging.getLogger(__name__)

#: Most events in one request.
MAX_EVENTS: Final = 1000
#: Largest request body, in bytes (1 MiB).
MAX_BODY_BYTES: Final = 1024 * 1024

_RAW_ITEMS: Final = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_VALUE: Final = msgspec.json.Decoder(msgspec.Raw)

_EXAMPLE_EVENT: Final = {
    "event_id": "0b8e5f5c-4c1e-4f38-9d8e-3d2a1c0b9a77",
    "type": "conversation.turn_recorded",
    "user_id": "child-42",
    "occurred_at": "2024-01-01T00:00:00Z",
    "data": {
        "conversation_id": "c-1",
        "topic": "dinosaurs",
        "speaker": "child",
        "sentiment": "happy",
    },
}


class Accepted(msgspec.Struct, frozen=True):
    """``accepted``: number of events the broker confirmed; ``token``: the write token a read
    passes as ``after`` to see these events (``rw_`` + 32 hex digits, whatever the count)."""

    accepted: int
    token: str


def _ingest_request_body() -> RequestBody:
    return RequestBody(
        required=True,
        description=(
            f"One event object (docs/contract.md §1) or a JSON array of up to {MAX_EVENTS}; "
            f"at most {MAX_BODY_BYTES} bytes."
        ),
        content={
            "application/json": OpenAPIMediaType(
                schema=Schema(
                    one_of=[
                        Schema(type=OpenAPIType.OBJECT, description="one event"),
                        Schema(
                            type=OpenAPIType.ARRAY,
                            items=Schema(type=OpenAPIType.OBJECT, description="an event"),
                            max_items=MAX_EVENTS,
                        ),
                    ]
                ),
                example=_EXAMPLE_EVENT,
            )
        },
    )


@dataclass
class IngestOperation(Operation):
    """OpenAPI operation of ``POST /v1/events``: adds the request body the handler reads raw."""

    def __post_init__(self) -> None:
        if self.request_body is None:
            self.request_body = _ingest_request_body()


def count_items(body: bytes) -> int:
    """How many events a body holds: its array length, or 1 for any other JSON value.

    Raises:
        ApiError: 422 ``invalid_json`` when the body is not JSON (empty, truncated, not UTF-8,
            not JSON at all), or is nested too deeply to decode (CONTRACT §5: invalid is 422).
    """
    try:
        codecs.utf_8_decode(body, "strict", True)
    except UnicodeDecodeError as exc:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "invalid_json",
            f"the request body is not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})",
        ) from exc
    if not body.strip(b" \t\r\n"):  # JSON whitespace only
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "invalid_json",
            "the request body is empty; send one event object or a JSON array of events",
        )
    try:
        if body.lstrip().startswith(b"["):
            return len(_RAW_ITEMS.decode(body))
        _RAW_VALUE.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "invalid_json",
            f"the request body is {not_json_reason(exc, body)}",
        ) from exc
    except RecursionError as exc:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "invalid_json",
            "the request body is nested too deeply to decode",
        ) from exc
    return 1


def validate_batch(body: bytes) -> list[OutgoingEvent]:
    """Decode and validate every item of an ingest body into events to publish, in order.

    Raises:
        ApiError: 422 ``invalid_json`` (not JSON), 422 ``too_many_events`` (more than
            ``MAX_EVENTS``) or 422 ``invalid_events`` with ``details`` = one
            ``{"index", "field", "reason", "problems"}`` per invalid item (index 0 for a
            single object): ``field`` and ``reason`` name its first problem, ``problems``
            lists every ``{"field", "reason"}``.
    """
    count = count_items(body)
    if count > MAX_EVENTS:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "too_many_events",
            f"{count} events in one request; at most {MAX_EVENTS} are allowed",
        )
    valid, invalid = decode_event_batch(body)
    if invalid:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "invalid_events",
            f"{len(invalid)} of {count} events are invalid; nothing was published",
            [
                {
                    "index": index,
                    "field": error.field,
                    "reason": error.reason,
                    "problems": [{"field": f, "reason": r} for f, r in error.problems],
                }
                for index, error in sorted(invalid, key=lambda pair: pair[0])
            ],
        )
    return [OutgoingEvent(event.event_id, event.user_id, raw) for event, raw in valid]


async def _sealed(
    ctx: ApiContext, events: list[OutgoingEvent], token_id: uuid.UUID
) -> list[OutgoingEvent]:
    """``events`` with their ``data`` encrypted (``processor.privacy.data_keys.seal_events``),
    once the write token ``token_id`` naming them is stored (before anything is published: an
    ingest whose token cannot be stored answers 503 and publishes nothing).

    Raises:
        ApiError: 409 ``user_erased`` naming the refused events' indexes; nothing published.
        sqlalchemy.exc.SQLAlchemyError, psycopg.Error: the database failed (503).
    """
    bodies = [event.body for event in events]
    event_ids = [event.event_id for event in events]
    digests = [ctx.keys.user_digest(event.user_id) for event in events]

    def seal_and_store(conn: psycopg.Connection) -> list[bytes]:
        sealed = seal_events(conn, bodies, ctx.keys)
        store_token(conn, token_id, event_ids, digests, ctx.settings.write_token_ttl_s)
        return sealed

    try:
        sealed = await asyncio.to_thread(ctx.with_driver, seal_and_store)
    except UserErased as exc:
        raise ApiError(
            HTTP_409_CONFLICT,
            "user_erased",
            f"{len(exc.indexes)} of the events are of erased children; nothing was published "
            "(an erased child's events are never accepted again)",
            [{"index": index, "reason": "this child was erased"} for index in exc.indexes],
        ) from exc
    return [replace(event, body=body) for event, body in zip(events, sealed, strict=True)]


@post(
    "/v1/events",
    status_code=HTTP_202_ACCEPTED,
    request_max_body_size=MAX_BODY_BYTES,
    operation_class=IngestOperation,
    summary="Publish events",
    description=__doc__,
    tags=["ingest"],
    guards=[requires("ingest")],
    responses=error_responses(401, 403, 409, 413, 422, 503),
)
async def post_events(
    request: Request[Any, Any, Any], ctx: NamedDependency[ApiContext]
) -> Accepted:
    """Validate the body's events and publish them; answer once the broker confirmed all.

    Each event's ``data`` is encrypted with its child's data key before it is published. The
    answer's ``token`` names the request's events (kept server-side for ``WRITE_TOKEN_TTL_S``):
    a read with ``after=<token>`` sees them (docs/contract.md §6.2).

    Errors: 422 ``invalid_json``, 413 ``payload_too_large``, 422 ``too_many_events`` /
    ``invalid_events``, 409 ``user_erased`` (an event of an erased child: nothing published),
    503 ``database_unavailable`` (nothing published), ``broker_unavailable`` (no broker node
    reachable: nothing published; ``Retry-After``) / ``publish_failed`` (a confirm did not
    come: some may be published, retrying the same events is safe; ``Retry-After``) /
    ``keys_mismatch`` (this process's key-encryption key is
    not the deployment's: nothing published).
    """
    body = await request.body()
    try:
        events = validate_batch(body)
    except ApiError as error:
        if error.code == "invalid_events" and error.details:
            ctx.metrics.events_rejected.inc(len(error.details))
        raise
    token_id = new_token_id()
    events = await _sealed(ctx, events, token_id)
    try:
        accepted = await ctx.broker.publish(events)
    except BrokerUnavailable as exc:
        raise ApiError(
            HTTP_503_SERVICE_UNAVAILABLE,
            "broker_unavailable",
            f"the broker is not reachable; nothing was published ({exc})",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from exc
    except PublishError as exc:
        log.warning(
            "publishing %d events failed: %d not confirmed (%s)", len(events), exc.failed, exc
        )
        raise ApiError(
            HTTP_503_SERVICE_UNAVAILABLE,
            "publish_failed",
            f"{exc.failed} of {len(events)} events were not confirmed by the broker (a nack, or "
            "the broker connection was lost before the confirms came; the next request uses "
            "the next broker node); some may be in the log, and publishing the same events "
            "again is safe",
            headers={"Retry-After": str(ctx.broker.retry_after_s)},
        ) from exc
    ctx.metrics.events_accepted.inc(accepted)
    return Accepted(accepted=accepted, token=token_text(token_id))
