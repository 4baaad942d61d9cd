"""A route's point read sent with the token check, in one statement: one database round trip
per request instead of two (the token check, then the read).

A route names in its ``PREFETCH_OPT`` option a ``Planner``: a function of the request that says
which ``JoinedRead`` to send with the token check and its parameters, or None (not for this
request: e.g. a read that must first wait for its writes, or a path parameter the handler will
refuse). The auth middleware's check (``ApiContext.check_token``) then sends both in one
statement (``processor.access.tokens.verify_tokens_with_reads_async``, with the checks and reads
of the other requests that came in the same turn of the event loop) and keeps the row on the
request (``keep``); the handler takes it (``prefetched``) instead of reading again, and reads
on its own when nothing was kept.

Nothing of the check changes: every request reads ``api_tokens`` (a revoked token is refused on
its next use), a refused token is answered 401 and no row is kept for it, and the route's
guards (scope, CSRF) still run before the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.types import Scope

from processor.access.tokens import JoinedRead

#: Route option: the route's ``Planner``.
PREFETCH_OPT: Final = "prefetch_with_token"
#: Key of the kept row in the request's ``scope["state"]``.
_KEPT: Final = "friendship_stream.prefetched"

#: A point read and its key.
Plan = tuple[JoinedRead, str]
#: What a route names in ``PREFETCH_OPT``: the plan for this request, or None.
Planner = Callable[[ASGIConnection[Any, Any, Any, Any]], Plan | None]


@dataclass(frozen=True)
class Prefetched:
    """The row read with the token check: its columns (as ``JoinedRead.columns`` lists them),
    or None when there is no such row."""

    row: tuple[Any, ...] | None


def plan_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Plan | None:
    """The point read the request's route wants sent with the token check, or None (no
    route, no ``PREFETCH_OPT``, or its planner said not this time)."""
    handler = connection.scope.get("route_handler")
    if handler is None:
        return None
    planner: Planner | None = handler.opt.get(PREFETCH_OPT)
    return None if planner is None else planner(connection)


def keep(connection: ASGIConnection[Any, Any, Any, Any], row: tuple[Any, ...] | None) -> None:
    """Keep ``row`` (None: no such row) on the request for its handler; only for a token that
    was accepted."""
    connection.scope.setdefault("state", {})[_KEPT] = Prefetched(row)


def prefetched(scope: Scope) -> Prefetched | None:
    """What ``keep`` kept on this request, or None when its point read was not sent with the
    token check (the handler reads on its own)."""
    state = scope.get("state")
    return None if state is None else state.get(_KEPT)
