"""Read-your-writes, the waiting: one LISTEN connection per API process wakes the waiting reads.

Every live batch announces its commit on ``PROGRESS_CHANNEL`` (``NOTIFY`` in the batch's
transaction, delivered at COMMIT: ``processor.applying.checkpoint``); an erasure and a
replay's swap announce themselves too. ``WaitRoom`` runs two tasks in the API's event loop:

- the **listener**: an autocommit ``psycopg.AsyncConnection`` that ``LISTEN``s; each
  notification marks the room dirty. When the connection drops it reconnects (pausing up to
  ``tuning.WAIT_LISTENER_DOWN_POLL_S`` between attempts) and, once listening again, marks the
  room dirty: a notification sent while it was down is lost, so every waiter re-checks;
- the **re-checker**: whenever the room is dirty it asks the database, in ONE query for all
  waiting reads, which of their pending events are done, and wakes the reads whose events all
  are. Notifications that arrive meanwhile coalesce into the next round. While the listener is
  down it also re-checks every ``WAIT_LISTENER_DOWN_POLL_S`` (and every
  ``WAIT_SAFETY_POLL_S`` while it is up, a safety net: ``WaitRoom(safety_poll_s=...)``), so a
  wait ends correctly without it.

A read registers as a waiter FIRST, then checks its events itself, then waits: a commit after
the registration either is seen by that check or marks the room dirty, so no wake-up is lost.
Every wait ends at its deadline whatever the database or the listener do: the read's own
first check is bounded by what is left of its wait (in the loop and by ``statement_timeout``).
The waits use the database of ``DATABASE_URL`` (the primary: a replica cannot ``LISTEN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import psycopg
from psycopg import sql

from processor import tuning
from processor.applying.checkpoint import PROGRESS_CHANNEL
from processor.errors import loggable
from projections.database import libpq_url
from projections.write_tokens import WantedEvents

log = logging.getLogger(__name__)

#: ``application_name`` of the listener's database session.
LISTENER_APPLICATION_NAME: Final = "friendship-stream api listener"
_LISTEN: Final = sql.SQL("LISTEN {}").format(sql.Identifier(PROGRESS_CHANNEL))
#: First pause, in seconds, before reconnecting the listener (doubling up to the poll interval).
_FIRST_RECONNECT_PAUSE_S: Final = 0.05

#: Which of the wanted events are done (``projections.write_tokens.done_events``), given the
#: reading child's digest (None: not checked) and a bound in seconds for the query (None: the
#: session's own ``statement_timeout``); async, off the event loop. Raises
#: ``psycopg.errors.QueryCanceled`` when the query ran past its bound.
DoneCheck = Callable[[WantedEvents, bytes | None, float | None], Awaitable[set[str]]]


@dataclass(eq=False)
class _Waiter:
    """One waiting read: its pending event ids (with their children's digests) and the event
    set when none is left."""

    pending: dict[str, bytes | None]
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def settle(self, finished: set[str]) -> None:
        for event_id in finished:
            self.pending.pop(event_id, None)
        if not self.pending:
            self.done.set()


class WaitRoom:
    """The waiting reads of one API process and the LISTEN connection that wakes them.

    Args:
        database_url: the deployment's database (the primary).
        check: which events are done (one database query).
        safety_poll_s: seconds between two re-checks while the listener is up and nothing was
            announced (a safety net; a test sets it high to see the notifications do the work).
    """

    def __init__(
        self,
        database_url: str,
        check: DoneCheck,
        *,
        safety_poll_s: float = tuning.WAIT_SAFETY_POLL_S,
    ) -> None:
        self._conninfo = libpq_url(database_url)
        self._check = check
        self._safety_poll_s = safety_poll_s
        self._waiters: set[_Waiter] = set()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._check_failing = False  # logged once per outage
        #: Whether the listener's ``LISTEN`` is in force now.
        self.listening = False

    @property
    def waiting(self) -> int:
        """How many reads wait now."""
        return len(self._waiters)

    def start(self) -> None:
        """Start the listener and the re-checker in the running event loop."""
        self._dirty = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="progress-listener"),
            asyncio.create_task(self._recheck_forever(), name="progress-recheck"),
        ]

    async def stop(self) -> None:
        """Stop both tasks (the listener's connection closes); waiting reads still end at their
        deadlines."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.listening = False

    async def wait(
        self, wanted: WantedEvents, reader_digest: bytes | None, timeout_s: float
    ) -> int:
        """Wait until every event of ``wanted`` is done, at most ``timeout_s`` seconds.

        Args:
            wanted: the events (ids and their children's digests).
            reader_digest: the reading child's digest: if that child was erased, nothing is
                waited for (its read answers 404).
            timeout_s: the longest wait in seconds (0: check once). The first check counts
                in it: it is bounded by what is left (at least ``tuning.WAIT_CHECK_FLOOR_S``),
                and one that runs out counts as "nothing done yet".

        Returns:
            How many of the events are still not done (0: all are).

        Raises:
            sqlalchemy.exc.SQLAlchemyError, psycopg.Error: the first check failed (the
                database is unreachable: answered 503); not when it merely ran out of time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiter = _Waiter(dict(zip(wanted.event_ids, wanted.user_digests, strict=True)))
        self._waiters.add(waiter)  # first: a commit from now on marks the room dirty
        try:
            bound_s = max(timeout_s, tuning.WAIT_CHECK_FLOOR_S)
            # A check that runs out (here, or its statement_timeout in the database) leaves
            # the events pending: the read answers not_yet_applied at its deadline.
            with contextlib.suppress(TimeoutError, psycopg.errors.QueryCanceled):
                finished = await asyncio.wait_for(
                    self._check(wanted, reader_digest, bound_s), bound_s
                )
                waiter.settle(finished)
            left = deadline - loop.time()
            if waiter.pending and left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.done.wait(), left)
            return len(waiter.pending)
        finally:
            self._waiters.discard(waiter)

    async def _recheck_forever(self) -> None:
        while True:
            interval = self._safety_poll_s if self.listening else tuning.WAIT_LISTENER_DOWN_POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), interval)
            self._dirty.clear()  # before the query: a commit during it makes another round
            await self._recheck()

    async def _recheck(self) -> None:
        """One round: the pending events of every waiting read, checked in one query."""
        waiters = [w for w in self._waiters if w.pending]
        if not waiters:
            return
        union: dict[tuple[str, bytes | None], None] = {}
        for waiter in waiters:
            union.update(dict.fromkeys(waiter.pending.items()))
        wanted = WantedEvents(
            tuple(event_id for event_id, _ in union), tuple(digest for _, digest in union)
        )
        try:
            finished = await self._check(wanted, None, None)
        except Exception as exc:  # noqa: BLE001 - any failure: the waits end at their deadlines
            level = logging.DEBUG if self._check_failing else logging.WARNING
            log.log(level, "re-checking the waiting reads failed: %s", loggable(exc))
            self._check_failing = True
            await asyncio.sleep(tuning.WAIT_LISTENER_DOWN_POLL_S)
            return
        self._check_failing = False
        for waiter in waiters:
            waiter.settle(finished)

    async def _listen_forever(self) -> None:
        pause = _FIRST_RECONNECT_PAUSE_S
        outage_logged = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name=LISTENER_APPLICATION_NAME,
                    connect_timeout=tuning.API_DB_CONNECT_TIMEOUT_S,
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                ) as conn:
                    await conn.execute(_LISTEN)
                    self.listening = True
                    self._dirty.set()  # whatever was announced while down: everyone re-checks
                    if outage_logged:
                        log.info("listening for committed progress again")
                    pause, outage_logged = _FIRST_RECONNECT_PAUSE_S, False
                    await self._receive(conn)
            except (psycopg.Error, OSError) as exc:
                if not outage_logged:
                    log.warning(
                        "the progress listener lost its database connection (%s); waiting "
                        "reads re-check every %.1f s until it is back",
                        loggable(exc),
                        tuning.WAIT_LISTENER_DOWN_POLL_S,
                    )
                    outage_logged = True
                else:
                    log.debug("the progress listener cannot connect yet: %s", loggable(exc))
            finally:
                self.listening = False
            self._dirty.set()
            await asyncio.sleep(pause)
            pause = min(pause * 2, tuning.WAIT_LISTENER_DOWN_POLL_S)

    async def _receive(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Mark the room dirty on every notification; every ``safety_poll_s`` without one,
        check the connection is alive (a silently dead one raises here)."""
        while True:
            async for _notify in conn.notifies(timeout=self._safety_poll_s):
                self._dirty.set()
            await conn.execute("SELECT 1")
            self._dirty.set()  # one announced between two generators is not missed
