"""Step 6, point reads under concurrency: ``GET /v1/users/{id}/friendship`` against ``GET
/healthz`` on the same API process, with the same load generator (``bench.http_load``).

A fresh deployment gets the workload the way the product gets it: every event's data encrypted
with its child's key (the default), published through the exchange and drained by ``python -m
processor run``. Then ``python -m processor api`` starts with the product's defaults (bearer
tokens checked on every call), and a ``read`` token is made as ``just token create`` makes it.
``clients`` keep-alive clients then read the friendship of every stored user, round robin in a
shuffled order, for ``seconds``; then ``/healthz`` for as long. A short warm-up of each comes
first. The API process's CPU time is sampled around each run (``/proc``), so the CPU per
request does not depend on how busy the shared machine was.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.drain import sealed
from bench.harness import (
    BenchError,
    cpu_sample,
    cpu_us_per_event,
    deployment,
    publish_timed,
    read_tails,
    wait_until_committed,
)
from bench.http_load import LoadResult, get_request, run_load
from bench.results import ReadsResult
from bench.workload import Workload
from projections.database import connect
from testkit.processes import api_process, free_port, processor_process
from testkit.services import Services, make_token

#: Seconds of each warm-up run (connections opened, pools filled, statements prepared).
WARMUP_S: Final = 2.0
#: Seed of the order in which the users are read.
ORDER_SEED: Final = 16


def _stored_users(database_url: str) -> list[str]:
    with connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT user_id FROM friendships ORDER BY user_id")]


@dataclass(frozen=True)
class _Measured:
    load: LoadResult
    cpu_us_per_request: float


def _timed(
    host: str, port: int, requests: list[bytes], *, clients: int, seconds: float, pid: int
) -> _Measured:
    before = cpu_sample(pid)
    load = asyncio.run(run_load(host, port, requests, clients, seconds))
    after = cpu_sample(pid)
    return _Measured(load, cpu_us_per_event(before, after, load.requests))


def measure_reads(
    services: Services,
    workload: Workload,
    log_dir: Path,
    *,
    clients: int = 50,
    seconds: float = 10.0,
    drain_timeout_s: float = 600.0,
) -> ReadsResult:
    """Friendship reads and ``/healthz`` on one API process (see the module doc).

    Args:
        services: the broker and database server.
        workload: the events drained before the API starts (their users are the ones read).
        log_dir: where the processor's and the API's logs go.
        clients: concurrent keep-alive clients.
        seconds: duration of each measured run.
        drain_timeout_s: give up (``BenchError``) when the workload is not applied by then.

    Raises:
        BenchError: the workload was not drained in time, or no user was stored.
    """
    with deployment(services, api_port=free_port()) as settings:
        publish_timed(settings, sealed(settings, workload.events))
        tails = read_tails(settings)
        with processor_process(settings, log_dir / "reads-processor.log"):
            wait_until_committed(settings, tails, drain_timeout_s)
        users = _stored_users(settings.database_url)
        if not users:
            raise BenchError("no user was stored: nothing to read")
        random.Random(ORDER_SEED).shuffle(users)  # noqa: S311 - an order, not a secret
        token = make_token(settings, "read", "bench-reader")
        host, port = settings.api_host, settings.api_port
        reads = [get_request(host, port, f"/v1/users/{u}/friendship", token) for u in users]
        health = [get_request(host, port, "/healthz")]
        with api_process(settings, log_dir / "reads-api.log") as api:
            _timed(host, port, reads, clients=clients, seconds=WARMUP_S, pid=api.pid)
            _timed(host, port, health, clients=clients, seconds=WARMUP_S, pid=api.pid)
            friendship = _timed(host, port, reads, clients=clients, seconds=seconds, pid=api.pid)
            healthz = _timed(host, port, health, clients=clients, seconds=seconds, pid=api.pid)
    return ReadsResult(
        clients=clients,
        seconds=seconds,
        users=len(users),
        friendship=friendship.load,
        healthz=healthz.load,
        friendship_per_s=friendship.load.per_s,
        healthz_per_s=healthz.load.per_s,
        ratio=friendship.load.per_s / healthz.load.per_s if healthz.load.per_s > 0 else 0.0,
        p50_ms=friendship.load.p50_ms,
        p99_ms=friendship.load.p99_ms,
        max_ms=friendship.load.max_ms,
        errors=friendship.load.errors,
        healthz_errors=healthz.load.errors,
        api_cpu_us_per_request=friendship.cpu_us_per_request,
        api_cpu_us_per_healthz=healthz.cpu_us_per_request,
        client_cpu_us_per_request=friendship.load.client_cpu_us_per_request,
    )
