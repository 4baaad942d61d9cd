"""What the API's handlers share: settings, the database pool, the publisher, the metrics and
the stream tails.

Built by ``create_app`` without touching the network: the SQLAlchemy engine connects on first use,
the publisher, the tail cache (``processor.reading.tails``) and the point-read pool in the app's
lifespan. The point reads a robot makes on every turn (the token check, the friendship read) run
on an async psycopg pool (``psycopg_pool``) in the event loop itself: no worker thread, no
SQLAlchemy layer, statements prepared per connection. The other database calls are blocking
(psycopg 3, sync) and run in worker threads, so the event loop never waits on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import psycopg
from aiodataloader import DataLoader
from litestar.connection import ASGIConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from processor import tuning
from processor.access.tokens import (
    JoinedRead,
    TokenAndRow,
    TokenInfo,
    verify_token_async,
    verify_token_id_async,
    verify_tokens_with_reads_async,
)
from processor.api import prefetch
from processor.api.broker import BrokerLink
from processor.api.metrics import ApiMetrics
from processor.api.waiting import WaitRoom
from processor.applying.checkpoint import read_totals
from processor.ownership.leases import LeaseHolder
from processor.privacy.keys import Keys, load_keys
from processor.reading.errors import ReadError
from processor.reading.tails import TailCache, Tails
from processor.settings import Settings
from processor.status import PartitionStatus, combine_status, read_partition_rows
from processor.versions.builds import VersionStatus, read_version_status
from projections.database import libpq_url, sqlalchemy_url
from projections.queries import Totals
from projections.write_tokens import WantedEvents, done_events

P = ParamSpec("P")
T = TypeVar("T")

#: ``read_partition_rows``' answer: checkpoint offsets and lease holders, by partition.
PartitionRowsFound = tuple[dict[int, int], dict[int, LeaseHolder]]

#: ``application_name`` of the API's database sessions.
APPLICATION_NAME: Final = "friendship-stream api"

#: An async psycopg connection of the point-read pool (rows as tuples).
AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]

# psycopg_pool logs every checkout and return at INFO: a line per request, never wanted here.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)


def _session_options() -> str:
    # UTC sessions: instants near years 1 and 9999 load whatever the database's zone.
    return f"-c statement_timeout={tuning.API_STATEMENT_TIMEOUT_MS} -c timezone=UTC"


def create_read_pool(database_url: str) -> AsyncConnectionPool[AsyncConn]:
    """The async pool of the API's point reads, not open yet (``await pool.open()`` in the
    event loop that uses it).

    ``tuning.API_READ_POOL_MIN`` to ``tuning.API_DB_THREADS`` autocommit connections: a read
    sends its statement and nothing else (no BEGIN/COMMIT, no ping before a checkout); psycopg
    prepares a statement on a connection that ran it ``prepare_threshold`` (5) times. A
    checkout waits at most ``tuning.API_DB_CONNECT_TIMEOUT_S`` seconds (then
    ``psycopg_pool.PoolTimeout``, an ``OperationalError``: 503).
    """
    return AsyncConnectionPool(
        libpq_url(database_url),
        kwargs={
            "autocommit": True,
            "connect_timeout": tuning.API_DB_CONNECT_TIMEOUT_S,
            "application_name": APPLICATION_NAME,
            "options": _session_options(),
        },
        min_size=tuning.API_READ_POOL_MIN,
        max_size=tuning.API_DB_THREADS,
        open=False,
        timeout=tuning.API_DB_CONNECT_TIMEOUT_S,
        name="api-point-reads",
    )


def create_db_engine(database_url: str) -> Engine:
    """A pooled engine for the API's reads (lazy: nothing connects until the first query).

    ``tuning.API_DB_THREADS`` connections, as many as the worker threads that use them. No
    ping before each checkout (a round trip per read): a read-only call whose pooled
    connection turns out dead is tried once more on a new one (``_read_once_more``).
    """
    return create_engine(
        sqlalchemy_url(database_url),
        pool_pre_ping=False,
        # Errors (logged, 500 tracebacks) must not repeat the parameters: they hold user ids.
        hide_parameters=True,
        pool_size=tuning.API_DB_THREADS,
        max_overflow=4,
        pool_timeout=tuning.API_DB_CONNECT_TIMEOUT_S,
        connect_args={
            "connect_timeout": tuning.API_DB_CONNECT_TIMEOUT_S,
            "application_name": APPLICATION_NAME,
            "options": _session_options(),
        },
    )


def statement_bound_ms(bound_s: float) -> int:
    """``bound_s`` seconds as a ``statement_timeout`` in whole milliseconds: at least
    ``tuning.WAIT_CHECK_FLOOR_S`` (a small floor), at most ``tuning.API_STATEMENT_TIMEOUT_MS``."""
    floor_ms = round(tuning.WAIT_CHECK_FLOOR_S * 1000)
    return min(tuning.API_STATEMENT_TIMEOUT_MS, max(floor_ms, round(bound_s * 1000)))


class TailsUnknown(ReadError):
    """The stream tails were never read since the API started (the broker did not answer)."""


@dataclass(frozen=True)
class StatsSnapshot:
    """What ``GET /v1/stats`` answers: totals, fold versions and partition status, with the
    tails the lags were computed from (``tails.read_at``, ``tails.age_s()``)."""

    totals: Totals
    versions: VersionStatus
    statuses: list[PartitionStatus]
    tails: Tails


def _read_once_more(read: Callable[[], T]) -> T:
    """``read()``, and once more when it failed on a connection that was already dead (the
    database restarted or ended the session since the pool last used it): the failed connection
    is dropped from the pool, so the second try gets a new one. Only for calls that write
    nothing.

    Raises:
        sqlalchemy.exc.DBAPIError, psycopg.Error: the second try failed too, or the first failed
            for another reason.
    """
    try:
        return read()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    except psycopg.OperationalError:
        pass  # a driver-level call: the pool found the connection dead when it came back
    return read()


def with_driver(engine: Engine, action: Callable[[psycopg.Connection], T]) -> T:
    """Run ``action`` on the psycopg connection under a connection of ``engine``'s pool
    (blocking); what it wrote is committed when it returns and rolled back when it raises.

    SQLAlchemy does not see statements sent to the driver directly, so the commit is the
    driver's own: the pool would otherwise roll them back when the connection returns. A
    connection the failure left broken (the database restarted or ended the session) is
    invalidated, not rolled back: the pool discards it instead of resetting a dead connection
    (which it would log as an error with a traceback), and the action's own error is raised.

    Raises:
        TypeError: the pool's driver is not psycopg 3.
    """
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        if not isinstance(driver, psycopg.Connection):
            raise TypeError(f"expected a psycopg connection, got {type(driver).__name__}")
        try:
            result = action(driver)
        except BaseException:
            if driver.broken or driver.closed:
                conn.invalidate()
                # A broken session most often means the server restarted: every pooled
                # connection is then dead too. A new pool (the old one's checked-in
                # connections closed) makes the caller's one retry meet a live connection, as
                # SQLAlchemy's own disconnect handling does for statements it runs itself.
                engine.dispose()
            else:
                driver.rollback()
            raise
        driver.commit()
        return result


@dataclass(frozen=True)
class ApiContext:
    """The shared parts of one app.

    Attributes:
        settings: the process settings.
        engine: database pool (sync psycopg 3; use ``read`` from async code).
        point_reads: the same pool in autocommit: a read-only call sends its statements and
            nothing else (no BEGIN, COMMIT or ROLLBACK round trips).
        read_pool: the async pool of the point reads (token checks, friendship), opened and
            closed by the app's lifespan (``open_reads``, ``close_reads``).
        broker: the shared publisher.
        metrics: the app's Prometheus registry and request metrics.
        keys: the hash key (tokens, erasures) and the key-encryption key (children's data keys).
        tails: the partition streams' tails, read in the background (started and stopped by
            the app's lifespan); no request opens a broker connection for them.
        waits: the read-your-writes waiters and their LISTEN connection (started in the app's
            lifespan).
        batchers: each ``JoinedRead``'s batcher of token checks (``check_token``), by its
            statement, made in the event loop that first needs it.
    """

    settings: Settings
    engine: Engine
    point_reads: Engine
    read_pool: AsyncConnectionPool[AsyncConn]
    broker: BrokerLink
    metrics: ApiMetrics
    keys: Keys
    tails: TailCache
    waits: WaitRoom
    batchers: dict[str, DataLoader[tuple[str, str], TokenAndRow]] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings) -> ApiContext:
        """Build the context; opens no connection.

        Raises:
            KeyMissing: the keys are not configured.
        """
        engine = create_db_engine(settings.database_url)

        async def check(
            wanted: WantedEvents, reader_digest: bytes | None, bound_s: float | None
        ) -> set[str]:
            timeout_ms = None if bound_s is None else statement_bound_ms(bound_s)
            return await asyncio.to_thread(
                with_driver,
                engine,
                lambda conn: done_events(conn, wanted, reader_digest, timeout_ms),
            )

        return cls(
            settings=settings,
            engine=engine,
            point_reads=engine.execution_options(isolation_level="AUTOCOMMIT"),
            read_pool=create_read_pool(settings.database_url),
            broker=BrokerLink(settings),
            metrics=ApiMetrics(),
            keys=load_keys(settings),
            tails=TailCache(settings, name="friendship-stream api tails"),
            waits=WaitRoom(settings.database_url, check, safety_poll_s=settings.wait_safety_poll_s),
        )

    def with_driver(self, action: Callable[[psycopg.Connection], T]) -> T:
        """``with_driver`` on this context's pool (blocking)."""
        return with_driver(self.engine, action)

    async def open_reads(self) -> None:
        """Open the point-read pool in the running event loop; its connections are made in the
        background (a database that is down delays the reads, not the start)."""
        await self.read_pool.open(wait=False)

    async def close_reads(self) -> None:
        """Close the point-read pool (its connections too)."""
        await self.read_pool.close()

    async def point_read(
        self,
        query: Callable[Concatenate[AsyncConn, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``await query(connection, *args, **kwargs)`` on a connection of the point-read pool,
        in the event loop; ``query`` reads only. A connection found dead (the database
        restarted or ended the session since the pool last used it) drops every pooled
        connection (``drain``: they died with the server) and the query is tried once more on
        a new one.

        Raises:
            psycopg.OperationalError: the database is unreachable, the second try failed, or no
                connection came within ``tuning.API_DB_CONNECT_TIMEOUT_S`` (answered as 503).
            psycopg.Error: the query failed otherwise.
        """
        async with self.read_pool.connection() as conn:
            try:
                return await query(conn, *args, **kwargs)
            except psycopg.OperationalError:
                if not (conn.broken or conn.closed):
                    raise
        await self.read_pool.drain()
        async with self.read_pool.connection() as conn:
            return await query(conn, *args, **kwargs)

    async def check_token(
        self, token: str, connection: ASGIConnection[Any, Any, Any, Any] | None = None
    ) -> TokenInfo | None:
        """``access.tokens.verify_token`` in the event loop (the auth middleware's check): one
        indexed lookup on the point-read pool, so a revocation counts from the next request.

        When the request's route plans a point read to go with the check
        (``processor.api.prefetch``), both go in one statement and, for an accepted token, the
        row is kept on the request for the handler (one round trip instead of two).

        Returns:
            The token's info, or None when it must be refused.

        Raises:
            psycopg.OperationalError: the database is unreachable (answered as 503).
        """
        plan = None if connection is None else prefetch.plan_of(connection)
        if plan is None or connection is None:
            return await self.point_read(verify_token_async, self.keys, token)
        read, key = plan
        info, row = await self._batcher(read).load((token, key))
        if info is not None:
            prefetch.keep(connection, row)
        return info

    def _batcher(self, read: JoinedRead) -> DataLoader[tuple[str, str], TokenAndRow]:
        """The batcher of ``read``'s checks in the running event loop: the ``(token, key)``
        pairs asked for in one turn of the loop (at most ``tuning.API_CHECK_BATCH_MAX``) go in
        one statement, on one pooled connection. Nothing is cached: every check reads the
        table."""
        loop = asyncio.get_running_loop()
        batcher = self.batchers.get(read.sql)  # a string keeps its hash: a cheap lookup
        if batcher is None or batcher.loop is not loop:

            async def check_all(pairs: list[tuple[str, str]]) -> list[TokenAndRow]:
                return await self.point_read(verify_tokens_with_reads_async, self.keys, read, pairs)

            batcher = DataLoader(
                check_all, cache=False, max_batch_size=tuning.API_CHECK_BATCH_MAX, loop=loop
            )
            self.batchers[read.sql] = batcher
        return batcher

    async def check_session_token(self, token_id: str) -> TokenInfo | None:
        """``access.tokens.verify_token_id`` in the event loop (a session's check)."""
        return await self.point_read(verify_token_id_async, token_id)

    def run_query(
        self, query: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``query(connection, *args, **kwargs)`` on a pooled connection in autocommit
        (blocking): ``query`` reads only, each statement with its own snapshot as in READ
        COMMITTED; tried once more on a new connection when the pooled one was dead."""

        def once() -> T:
            with self.point_reads.connect() as conn:
                return query(conn, *args, **kwargs)

        return _read_once_more(once)

    async def read(
        self, query: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``run_query`` in a worker thread.

        Raises:
            sqlalchemy.exc.OperationalError: the database is unreachable (answered as 503).
        """
        return await asyncio.to_thread(partial(self.run_query, query, *args, **kwargs))

    def read_totals(self) -> Totals:
        """Events applied and dead letters (blocking)."""
        applied, dead_lettered = self.run_query(read_totals)
        return Totals(events_applied=applied, dead_lettered=dead_lettered)

    def read_partitions(self) -> list[PartitionStatus]:
        """Checkpoint, tail, lag and owner of every partition (blocking; the database, and the
        tails as the cache last read them: no broker call).

        Raises:
            sqlalchemy.exc.OperationalError, psycopg.OperationalError: the database failed.
            TailsUnknown: the tails were never read (the broker did not answer since start).
        """
        tails = self._known_tails()
        checkpoints, holders = self.with_driver(read_partition_rows)
        return combine_status(self.settings.partitions, checkpoints, holders, tails.offsets)

    def read_stats(self) -> StatsSnapshot:
        """Everything ``GET /v1/stats`` answers, on one pooled connection (blocking; a handful
        of small queries: sums over the checkpoint rows, ``pg_locks``, the newest build).

        Raises:
            sqlalchemy.exc.OperationalError, psycopg.OperationalError: the database failed.
            TailsUnknown: the tails were never read (the broker did not answer since start).
        """
        tails = self._known_tails()

        def once() -> tuple[tuple[int, int], VersionStatus, PartitionRowsFound]:
            with self.engine.connect() as conn:
                totals = read_totals(conn)  # first: a dead session is found by SQLAlchemy
                driver = conn.connection.driver_connection
                if not isinstance(driver, psycopg.Connection):
                    raise TypeError(f"expected a psycopg connection, got {type(driver).__name__}")
                return totals, read_version_status(driver), read_partition_rows(driver)

        (applied, dead_lettered), versions, (checkpoints, holders) = _read_once_more(once)
        return StatsSnapshot(
            totals=Totals(events_applied=applied, dead_lettered=dead_lettered),
            versions=versions,
            statuses=combine_status(self.settings.partitions, checkpoints, holders, tails.offsets),
            tails=tails,
        )

    async def wait_for_tails(self) -> None:
        """In the first ``tuning.TAILS_FIRST_READ_WAIT_S`` seconds after start, wait for the
        cache's first read of the tails (until then at most); never later: a broker that never
        answered makes the call fail at once instead."""
        remaining = tuning.TAILS_FIRST_READ_WAIT_S - self.tails.running_for_s()
        if remaining > 0 and not self.tails.wait_first(0):
            await asyncio.to_thread(self.tails.wait_first, remaining)

    def _known_tails(self) -> Tails:
        tails = self.tails.snapshot()
        if tails.read_at is None:
            raise TailsUnknown(
                "the partition tails were never read since the API started"
                + (f" ({tails.error})" if tails.error else "")
            )
        return tails

    def check_database(self) -> str | None:
        """Readiness of the database: None when ``SELECT 1`` answers, else why not (blocking)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its reason
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None
