"""Operations endpoints: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from processor.api.auth import requires
from processor.api.context import ApiContext
from processor.api.errors import ApiError, error_responses
from processor.api.metrics import CONTENT_TYPE


class Health(msgspec.Struct, frozen=True):
    """``status``: ``"ok"``."""

    status: str


class Readiness(msgspec.Struct, frozen=True):
    """``status``: ``"ready"``; ``checks``: ``{"broker": "ok", "database": "ok"}``."""

    status: str
    checks: dict[str, str]


@get("/healthz", tags=["operations"], summary="Liveness", exclude_from_auth=True, security=[{}])
async def healthz() -> Health:
    """200 ``{"status": "ok"}`` while the process serves requests; touches nothing else."""
    return Health(status="ok")


@get(
    "/readyz",
    tags=["operations"],
    summary="Readiness",
    exclude_from_auth=True,
    security=[{}],
    responses=error_responses(503),
)
async def readyz(ctx: NamedDependency[ApiContext]) -> Readiness:
    """200 when the broker (the publisher's connection) and the database answer.

    Errors: 503 ``not_ready``; ``details`` lists ``{"check", "reason"}`` of each failed check.
    """
    broker, database = await asyncio.gather(
        ctx.broker.check(), asyncio.to_thread(ctx.check_database)
    )
    failed = {name: reason for name, reason in (("broker", broker), ("database", database))}
    failures = [{"check": name, "reason": reason} for name, reason in failed.items() if reason]
    if failures:
        names = " and ".join(str(f["check"]) for f in failures)
        raise ApiError(
            HTTP_503_SERVICE_UNAVAILABLE, "not_ready", f"not ready: {names} unreachable", failures
        )
    return Readiness(status="ready", checks={"broker": "ok", "database": "ok"})


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    media_type=CONTENT_TYPE,
    guards=[requires("read")],
    responses=error_responses(401, 403),
)
async def metrics(ctx: NamedDependency[ApiContext]) -> Response[bytes]:
    """The Prometheus text format (0.0.4); reads the database at scrape time and takes the
    stream tails from the API's tail cache (no broker call; right after start, a scrape waits
    for the cache's first read, at most ``tuning.TAILS_FIRST_READ_WAIT_S``).

    Needs a ``read`` (or ``admin``) token unless ``METRICS_PUBLIC`` is set.
    """
    await ctx.wait_for_tails()
    payload = await asyncio.to_thread(ctx.metrics.render)
    return Response(payload, media_type=CONTENT_TYPE)
