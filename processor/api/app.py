"""The HTTP app: ``create_app(settings)`` builds it, ``serve(settings)`` runs it with uvicorn.

Routes (docs/contract.md §5, §6): ``POST /v1/events``; ``GET /v1/users/{user_id}/friendship``,
``/v1/users/{user_id}/topics``, ``/v1/events/{event_id}``, ``/v1/stats``,
``/v1/stats/throughput``, ``/v1/dead-letters``; ``GET /healthz``, ``/readyz``, ``/metrics``;
the OpenAPI document at ``/schema/openapi.json``. Every error of the JSON API answers
``{"error": {"code", "message"}}`` (see ``processor.api.errors``). The dashboard
(``processor.api.dashboard``): ``GET /``, ``GET``/``POST /sign-in``, ``POST /sign-out`` and
``/static/``, left out of the OpenAPI document; a browser signs in for a session cookie
(``processor.api.sessions``).

Nothing connects when the app is built: the database pool connects on first use and the shared
publisher opens in the lifespan (and again on demand after the broker dropped it). The lifespan
also starts the read-your-writes listener (``processor.api.waiting``) and the deletion of
expired write tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import psycopg
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from processor import tuning
from processor.api import dashboard, erasure, ingest, probes, reads, throughput
from processor.api.address import api_base_url
from processor.api.auth import BearerTokenAuth
from processor.api.context import ApiContext
from processor.api.errors import DATABASE_ERRORS, exception_handlers
from processor.api.metrics import ProjectionCollector, RequestMetricsMiddleware
from processor.api.sessions import clearing_cookie, csrf_guard, session_config
from processor.errors import loggable
from processor.privacy.key_ids import check_keys
from processor.privacy.keys import load_keys
from processor.settings import Settings, SettingsError
from projections.database import connect
from projections.write_tokens import delete_expired

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(settings: Settings) -> Litestar:
    """Build the API app for ``settings`` (broker and database taken from their URLs).

    Returns:
        A Litestar ASGI app; its lifespan opens the publisher and starts the tail cache, and
        at shutdown stops both and closes the database pool.
    """
    ctx = ApiContext.create(settings)
    ctx.metrics.add_collector(
        ProjectionCollector(ctx.read_totals, ctx.read_partitions, ctx.tails.snapshot)
    )

    def provide_context() -> ApiContext:
        return ctx

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        # The blocking database calls run here: as many threads as pooled connections.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(tuning.API_DB_THREADS, thread_name_prefix="api-db")
        )
        ctx.tails.start()  # reads the streams' tails in the background from now on
        ctx.waits.start()
        await ctx.open_reads()
        expiry = asyncio.create_task(_expire_write_tokens(ctx), name="write-token-expiry")
        try:
            problem = await ctx.broker.check()
            if problem is not None:
                log.warning(
                    "broker not reachable at start (%s); publishing will reconnect", problem
                )
            yield
        finally:
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
            await ctx.waits.stop()
            await asyncio.to_thread(ctx.tails.stop)
            await ctx.broker.close()
            await ctx.close_reads()
            ctx.engine.dispose()

    open_paths = ["/metrics"] if settings.metrics_public else []
    auth = BearerTokenAuth(
        retrieve_user_handler=ctx.check_token,
        check_session=ctx.check_session_token,
        exclude=["^/schema", *(f"^{path}$" for path in open_paths)],
    )
    sessions = session_config(ctx.keys)

    def with_sessions(app_config: AppConfig) -> AppConfig:
        # After the auth config put its middleware first: the session middleware goes before
        # it, so the auth middleware finds the session loaded.
        app_config.middleware.insert(0, sessions.middleware)
        return app_config

    return Litestar(
        route_handlers=[
            ingest.post_events,
            reads.get_friendship,
            reads.get_topics,
            reads.get_event,
            reads.get_stats,
            throughput.get_throughput,
            reads.get_dead_letters,
            erasure.delete_user,
            probes.healthz,
            probes.readyz,
            probes.metrics,
            dashboard.dashboard,
            dashboard.sign_in_form,
            dashboard.sign_in,
            dashboard.sign_out,
            dashboard.static_files(),
        ],
        on_app_init=[auth.on_app_init, with_sessions],
        guards=[csrf_guard],
        state=State({"open_paths": frozenset(open_paths)}),
        dependencies={"ctx": Provide(provide_context, sync_to_thread=False)},
        exception_handlers=exception_handlers(ctx.metrics.record_unmatched, clearing_cookie()),
        middleware=[RequestMetricsMiddleware(ctx.metrics)],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="friendship-stream",
            version=API_VERSION,
            description="Ingest events and read per-child friendship and topic projections.",
            path="/schema",
        ),
        logging_config=None,
    )


async def _expire_write_tokens(ctx: ApiContext) -> None:
    """Delete expired write tokens every ``WRITE_TOKEN_CLEANUP_INTERVAL_S`` (each API process
    does; the statement is indexed and bounded, so a second one finds little to do)."""
    while True:
        try:
            deleted = await delete_expired_tokens(ctx)
            log.debug("deleted %d expired write tokens", deleted)
        except DATABASE_ERRORS as exc:
            log.debug("deleting expired write tokens failed: %s", loggable(exc))
        await asyncio.sleep(tuning.WRITE_TOKEN_CLEANUP_INTERVAL_S)


async def delete_expired_tokens(
    ctx: ApiContext, batch: int = tuning.WRITE_TOKEN_CLEANUP_BATCH
) -> int:
    """One cleanup: delete expired write tokens ``batch`` at a time (one short transaction
    each) until a round deletes fewer than ``batch``, yielding to the event loop between
    rounds; every ``POST /v1/events`` stores a token, so one batch a minute could fall behind.

    Returns:
        How many tokens were deleted.

    Raises:
        sqlalchemy.exc.SQLAlchemyError, psycopg.Error: the database failed (what earlier rounds
            deleted stays deleted).
    """
    total = 0
    while True:
        deleted = await asyncio.to_thread(ctx.with_driver, lambda conn: delete_expired(conn, batch))
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)  # let requests run between two rounds


def serve(settings: Settings) -> None:
    """Serve the API with uvicorn on ``API_HOST:API_PORT`` until SIGINT or SIGTERM.

    The objects built before serving are frozen out of the garbage collector (``gc.freeze``).
    Logging stays as ``processor.logs`` configured it; uvicorn's access log is off (the request
    metrics count every request). Before serving, the key-encryption key is checked against
    the stored data keys (when the database answers; it may come later).

    With ``API_TLS_CERT_FILE`` and ``API_TLS_KEY_FILE`` it serves HTTPS only (uvicorn's
    ``ssl_certfile`` / ``ssl_keyfile``); a plain HTTP request then fails its TLS handshake.

    Raises:
        KeyMissing: the keys are not configured, or the stored data keys were wrapped by
            another key-encryption key.
        SettingsError: the API's TLS files cannot be used.
    """
    import uvicorn  # noqa: PLC0415 - only the serving process needs it

    _check_keys(settings)
    certfile, keyfile = _tls_files(settings)
    log.info(
        "serving the API at %s (%s)",
        api_base_url(settings),
        "HTTPS" if certfile else "plain HTTP: set API_TLS_CERT_FILE and API_TLS_KEY_FILE for HTTPS",
    )
    app = create_app(settings)
    # What start-up built (modules, the app, its routes) lives as long as the process: out of
    # the collector's generations, a full collection no longer walks it while requests wait.
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=tuning.API_SHUTDOWN_GRACE_S,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )


def _tls_files(settings: Settings) -> tuple[str | None, str | None]:
    """uvicorn's ``ssl_certfile`` / ``ssl_keyfile`` from ``API_TLS_CERT_FILE`` /
    ``API_TLS_KEY_FILE`` (empty: plain HTTP), checked before serving.

    Raises:
        SettingsError: the files cannot be read, are not PEM, or the key does not match the
            certificate (names both variables and files).
    """
    if not settings.api_tls_cert_file:
        return None, None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.api_tls_cert_file, settings.api_tls_key_file
        )
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"API_TLS_CERT_FILE={settings.api_tls_cert_file!r} / API_TLS_KEY_FILE="
            f"{settings.api_tls_key_file!r} cannot be used: {exc}"
        ) from exc
    return settings.api_tls_cert_file, settings.api_tls_key_file


def _check_keys(settings: Settings) -> None:
    """``privacy.key_ids.check_keys`` at start; a database that does not answer yet is logged
    and left to the readiness probe."""
    keys = load_keys(settings)
    try:
        with connect(settings.database_url) as conn:
            check_keys(conn, keys)
    except psycopg.OperationalError as exc:
        log.warning("database not reachable at start (%s); keys not checked", loggable(exc))
