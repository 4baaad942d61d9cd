"""``python -m bench.read_your_writes``: how long a read with ``after=`` takes at light load.

A fresh deployment runs a processor and an API process (``python -m processor run`` and
``api``, default settings). After a warm-up drained to zero lag, the benchmark's workload is
published through the exchange at ``--rate`` events/s (the light load of ``just bench``: a
tenth of the ingest ceiling, 1,186 events/s in the last full run) for ``--seconds``. Meanwhile
``--readers`` clients each loop: ``POST /v1/events`` one event of their own child, then
``GET /v1/users/{id}/friendship?after=<token>&wait_s=10``, then the same read without
``after`` (the baseline). The read with ``after`` is timed from its request to its answer
(``time.perf_counter``, in the client), so it covers the wait for the processor to apply the
event and the LISTEN wake-up. Printed, and written to ``bench-results/read-your-writes.json``:
p50, p90, p99 and max of the read with ``after``, of post-then-read (from the POST's start),
and of the plain read, with how many reads answered something else than 200.

Nothing here is a test: the figures vary with the machine (2 shared cores here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench.harness import (
    deployment,
    publish_timed,
    read_tails,
    require_services,
    wait_until_committed,
)
from bench.latency import _offered_load, percentile
from bench.workload import make_workload
from processor.publishing.publisher import OutgoingEvent
from processor.settings import Settings
from testkit.processes import api_process, free_port, processor_process
from testkit.services import make_token


@dataclass(frozen=True)
class Figures:
    """Percentiles of one kind of request, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class ReadYourWritesResult:
    """One run: the offered load and the three kinds of timing."""

    rate: float
    offered_rate: float
    seconds: float
    readers: int
    read_after: Figures
    post_then_read: Figures
    plain_read: Figures
    not_ok: int


def figures(values_s: Sequence[float]) -> Figures:
    """Percentiles of ``values_s`` (seconds) in milliseconds."""
    ordered = sorted(values_s)
    return Figures(
        count=len(ordered),
        p50_ms=percentile(ordered, 0.50) * 1000,
        p90_ms=percentile(ordered, 0.90) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        max_ms=(ordered[-1] * 1000) if ordered else float("nan"),
    )


@dataclass
class _Timings:
    read_after: list[float]
    post_then_read: list[float]
    plain: list[float]
    not_ok: int = 0


async def _reader(
    base: str, *, ingest: str, read: str, number: int, until: asyncio.Event, timings: _Timings
) -> None:
    user = f"bench-rw-{number}"
    second = 0
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while not until.is_set():
            second += 1
            event = {
                "event_id": str(uuid.uuid4()),
                "type": "friendship.adjusted",
                "user_id": user,
                "occurred_at": f"2024-05-01T{second // 3600 % 24:02d}:{second // 60 % 60:02d}:"
                f"{second % 60:02d}Z",
                "data": {"delta": 1 if second % 2 else -1, "reason": "bench"},
            }
            posted_at = time.perf_counter()
            posted = await client.post(
                "/v1/events",
                content=json.dumps(event).encode(),
                headers={"Authorization": f"Bearer {ingest}"},
            )
            if posted.status_code != 202:  # noqa: PLR2004
                timings.not_ok += 1
                continue
            path = f"/v1/users/{user}/friendship"
            headers = {"Authorization": f"Bearer {read}"}
            started = time.perf_counter()
            answer = await client.get(
                path, params={"after": posted.json()["token"], "wait_s": 10}, headers=headers
            )
            done = time.perf_counter()
            if answer.status_code != 200:  # noqa: PLR2004
                timings.not_ok += 1
                continue
            timings.read_after.append(done - started)
            timings.post_then_read.append(done - posted_at)
            started = time.perf_counter()
            plain = await client.get(path, headers=headers)
            if plain.status_code == 200:  # noqa: PLR2004
                timings.plain.append(time.perf_counter() - started)


def measure(rate: float, seconds: float, readers: int, log_dir: Path) -> ReadYourWritesResult:
    """One run (see the module doc); processes and deployment are gone when it returns."""
    services = require_services()
    workload = make_workload(int(rate * seconds) + 5_000, users=10_000, seed=2024)
    warmup, load = workload.events[:5_000], workload.events[5_000:]
    timings = _Timings([], [], [])
    with deployment(services, api_port=free_port()) as settings:
        ingest, read = make_token(settings, "ingest"), make_token(settings, "read")
        with (
            processor_process(settings, log_dir / "rw-processor.log"),
            api_process(settings, log_dir / "rw-api.log"),
        ):
            publish_timed(settings, warmup)
            wait_until_committed(settings, read_tails(settings), timeout_s=120.0)
            published_at, load_s = asyncio.run(
                _run(
                    settings,
                    load=load,
                    rate=rate,
                    readers=readers,
                    ingest=ingest,
                    read=read,
                    timings=timings,
                )
            )
    return ReadYourWritesResult(
        rate=rate,
        offered_rate=len(published_at) / load_s if load_s > 0 else 0.0,
        seconds=load_s,
        readers=readers,
        read_after=figures(timings.read_after),
        post_then_read=figures(timings.post_then_read),
        plain_read=figures(timings.plain),
        not_ok=timings.not_ok,
    )


async def _run(
    settings: Settings,
    *,
    load: Sequence[OutgoingEvent],
    rate: float,
    readers: int,
    ingest: str,
    read: str,
    timings: _Timings,
) -> tuple[list[float], float]:
    base = f"http://{settings.api_host}:{settings.api_port}"
    until = asyncio.Event()
    tasks = [
        asyncio.create_task(
            _reader(base, ingest=ingest, read=read, number=n, until=until, timings=timings)
        )
        for n in range(readers)
    ]
    try:
        return await _offered_load(settings, load, rate)
    finally:
        until.set()
        await asyncio.gather(*tasks)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure reads with ``after=`` under a steady load; print and save."""
    parser = argparse.ArgumentParser(prog="python -m bench.read_your_writes", description=__doc__)
    parser.add_argument("--rate", type=float, default=1186.0, help="offered load, events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the load")
    parser.add_argument("--readers", type=int, default=20, help="concurrent post-then-read clients")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    result = measure(args.rate, args.seconds, args.readers, args.out / "logs")
    table = Table(
        title=f"read-your-writes at {result.offered_rate:,.0f} events/s offered "
        f"({result.seconds:.1f} s, {result.readers} clients)"
    )
    for column in ("request", "count", "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)"):
        table.add_column(column)
    for name, f in (
        ("GET friendship?after=<token>", result.read_after),
        ("POST then GET ?after= (write to visible)", result.post_then_read),
        ("GET friendship (no after)", result.plain_read),
    ):
        table.add_row(
            name,
            f"{f.count:,}",
            f"{f.p50_ms:.1f}",
            f"{f.p90_ms:.1f}",
            f"{f.p99_ms:.1f}",
            f"{f.max_ms:.1f}",
        )
    Console(width=max(Console().width, 120)).print(table)
    Console().print(f"answers other than 200/202: {result.not_ok}")
    (args.out / "read-your-writes.json").write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
