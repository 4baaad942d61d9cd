"""A small closed-loop HTTP/1.1 load generator: N keep-alive clients, each sending one request,
reading its whole answer (status line, ``Content-Length`` body), then the next, for a fixed time.

Cheap on purpose, so it takes little CPU from the server it measures on a shared 2-core
machine: the requests are pre-built bytes, an answer is parsed as far as its status code and
``Content-Length`` only, and everything runs in one asyncio loop (one thread). Its own CPU time
is measured (``LoadResult.client_cpu_us_per_request``). Only plain HTTP on a TCP port; answers
must carry ``Content-Length`` (no chunked encoding), which the API's JSON answers do.

Every answer that is not a 200 is counted by status (``LoadResult.statuses``), and a connection
that fails is counted in ``LoadResult.failures`` and opened again: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

#: Seconds a single request may take before the run counts it as failed.
REQUEST_TIMEOUT_S: Final = 30.0
_HEADER_END: Final = b"\r\n\r\n"
_OK: Final = 200


def get_request(host: str, port: int, path: str, token: str | None = None) -> bytes:
    """The bytes of ``GET path`` with keep-alive (and ``Authorization: Bearer token``)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0
    failure_kinds: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class LoadResult:
    """One timed run against one kind of request.

    Attributes:
        clients: concurrent keep-alive connections.
        seconds: measured wall time (from the start to the last answer).
        requests: answers received in that time (any status).
        ok: answers with status 200.
        statuses: count of every status code other than 200.
        failures: requests with no answer (connection reset, timeout, unparsable answer);
            ``failure_kinds`` names them.
        per_s: 200 answers per second.
        p50_ms, p99_ms, max_ms: latency of the 200 answers, request written to answer read
            (nearest rank; NaN when there were none).
        client_cpu_us_per_request: this generator's CPU time (its whole process) over the
            answers, in microseconds.
    """

    clients: int
    seconds: float
    requests: int
    ok: int
    statuses: dict[int, int]
    failures: int
    failure_kinds: dict[str, int]
    per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_us_per_request: float

    @property
    def errors(self) -> int:
        """Requests that did not answer 200: other statuses and failures."""
        return self.requests - self.ok + self.failures


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _parse_head(head: bytes) -> tuple[int, int]:
    """Status code and ``Content-Length`` of an answer's head (up to the blank line).

    Raises:
        ValueError: no status code, or no ``Content-Length``.
    """
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("an answer without Content-Length")
    end = lower.find(b"\r\n", at + 2)
    return status, int(lower[at + 17 : end])


async def _client(
    host: str, port: int, requests: Sequence[bytes], *, start: int, until: float, tally: _Tally
) -> None:
    """One connection's loop: ``requests`` round robin from index ``start`` until ``until``
    (``time.perf_counter``), reconnecting after a failure."""
    index = start
    count = len(requests)
    clock = time.perf_counter
    while clock() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            tally.failures += 1
            tally.failure_kinds[type(exc).__name__] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            while clock() < until:
                request = requests[index % count]
                index += 1
                sent = clock()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(_HEADER_END), REQUEST_TIMEOUT_S)
                status, length = _parse_head(head)
                if length:
                    await reader.readexactly(length)
                tally.statuses[status] += 1
                if status == _OK:
                    tally.latencies.append(clock() - sent)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            tally.failures += 1
            tally.failure_kinds[type(exc).__name__] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def run_load(
    host: str, port: int, requests: Sequence[bytes], clients: int, seconds: float
) -> LoadResult:
    """``clients`` keep-alive connections send ``requests`` (round robin, each client starting
    at its own index) for ``seconds``; an answer in flight at the end is still awaited.

    Raises:
        ValueError: no requests, or fewer than one client.
    """
    if not requests or clients < 1:
        raise ValueError("run_load needs requests and at least one client")
    tally = _Tally()
    cpu_before = time.process_time()
    started = time.perf_counter()
    until = started + seconds
    step = max(1, len(requests) // clients)
    await asyncio.gather(
        *(
            _client(host, port, requests, start=n * step, until=until, tally=tally)
            for n in range(clients)
        )
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    ordered = sorted(tally.latencies)
    answered = sum(tally.statuses.values())
    ok = tally.statuses.get(_OK, 0)
    return LoadResult(
        clients=clients,
        seconds=elapsed,
        requests=answered,
        ok=ok,
        statuses={s: n for s, n in sorted(tally.statuses.items()) if s != _OK},
        failures=tally.failures,
        failure_kinds=dict(tally.failure_kinds),
        per_s=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(ordered, 0.50) * 1000,
        p99_ms=_percentile(ordered, 0.99) * 1000,
        max_ms=ordered[-1] * 1000 if ordered else math.nan,
        client_cpu_us_per_request=cpu / answered * 1e6 if answered else 0.0,
    )
