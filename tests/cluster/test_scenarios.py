"""Node loss on the three-node cluster, with real processor and API subprocesses: a node killed
mid-drain, a rolling restart, HTTP ingest through a node kill. Each scenario records a row of
figures (lost, applied twice, time to resume per partition) before it asserts.

Durations are figures, never assertions: timeouts are generous bounds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from processor.reading.probes import read_tail_offsets
from processor.settings import Settings
from testkit.processes import api_process, free_port
from testkit.rabbit_nodes import RabbitCluster
from testkit.services import make_token
from tests.cluster.support import (
    ClusterReport,
    ProgressWatch,
    applied_count,
    applied_ids,
    event_ids,
    json_or_none,
    resume_figures,
    verify,
    wait_applied,
    wait_until,
)
from tests.faults.support import fast_projection_writes, slow_projection_writes
from tests.integration.support import outgoing, processor_process, publish, synthetic_events

#: How long a killed node stays down at most while the test waits for every partition to move.
DOWN_AT_MOST_S = 60.0
#: How long the HTTP ingest scenario keeps its node down at most: a publish the API sent to
#: its next node right after the kill may wait the whole confirm timeout (30 s) before the API
#: fails over again.
INGEST_DOWN_AT_MOST_S = 120.0
#: The bound for a drain to finish once every node runs again.
DRAIN_BOUND_S = 400.0


def log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def test_a_backlog_drains_exactly_once_while_the_node_with_most_leaders_is_killed(
    cluster: RabbitCluster,
    cluster_settings: Settings,
    tmp_path: Path,
    cluster_report: ClusterReport,
) -> None:
    settings = cluster_settings.with_overrides(batch_size=500)
    bodies = synthetic_events(100_000, users=5_000, seed=1101)
    publish(settings, outgoing(bodies))
    totals = {p: tail + 1 for p, tail in asyncio.run(read_tail_offsets(settings)).items()}
    assert sum(totals.values()) == len(bodies)
    leaders = cluster.leaders(settings.amqp.vhost)
    victim, led = Counter(leaders.values()).most_common(1)[0]
    # Slow batches keep the drain going for a while, so the kill lands mid-drain.
    slow_projection_writes(settings, 0.05)
    log_path = tmp_path / "processor.log"
    resumed_down: dict[int, float] = {}
    with ProgressWatch(settings) as watch, processor_process(settings, log_path) as process:
        wait_until(lambda: applied_count(settings) > 0, "the processor applying", 180)
        cluster.kill(victim)
        at_kill = watch.mark()
        pending = {p for p, total in totals.items() if at_kill.get(p, 0) < total}
        deadline = time.monotonic() + DOWN_AT_MOST_S
        while time.monotonic() < deadline and not pending <= set(watch.resumed()):
            time.sleep(0.2)
        resumed_down = watch.resumed()
        fast_projection_writes(settings)
        cluster.start(victim)
        final = wait_applied(settings, len(bodies), DRAIN_BOUND_S)
        alive = process.poll() is None
    resumed = watch.resumed()
    median_s, max_s = resume_figures(resumed[p] for p in pending if p in resumed)
    late = sorted(p for p in pending if p not in resumed_down)
    verify(
        settings,
        cluster_report,
        scenario=f"100k backlog, node {victim} (leader of {led}/16 streams) killed, restarted",
        must_apply=bodies,
        resume=(median_s, max_s),
        notes=(
            f"{sum(at_kill.values()):,} applied at the kill; {len(pending)} partitions had "
            f"work left, {len(pending) - len(late)} resumed while the node was down"
            + (f", {len(late)} only after its restart" if late else "")
        ),
    )
    assert alive, f"the processor exited:\n{log_tail(log_path)}"
    assert final == len(bodies)
    assert pending, "the kill landed after the drain: it tested nothing"
    assert not late, (
        f"partitions {late} did not resume while node {victim} was down (they must move to "
        f"a node that hosts them):\n{log_tail(log_path)}"
    )


def test_a_rolling_restart_during_a_drain_loses_and_doubles_nothing(
    cluster: RabbitCluster,
    cluster_settings: Settings,
    tmp_path: Path,
    cluster_report: ClusterReport,
) -> None:
    settings = cluster_settings.with_overrides(batch_size=200)
    bodies = synthetic_events(60_000, users=3_000, seed=1102)
    step = len(bodies) // 4
    chunks = [bodies[i * step : (i + 1) * step] for i in range(4)]  # published in this order
    slow_projection_writes(settings, 0.1)
    log_path = tmp_path / "processor.log"
    published = 0
    mid_drain = 0
    restart_s: list[float] = []
    publish(settings, outgoing(chunks[0]))
    published += len(chunks[0])
    with processor_process(settings, log_path) as process:
        for number, chunk in zip((1, 2, 3), chunks[1:], strict=True):
            before = applied_count(settings)
            publish(settings, outgoing(chunk))
            published += len(chunk)

            def applying(before: int = before) -> bool:
                return applied_count(settings) > before

            wait_until(applying, "the processor applying")
            if applied_count(settings) < published:
                mid_drain += 1
            started = time.monotonic()
            cluster.restart(number)
            restart_s.append(time.monotonic() - started)
            assert process.poll() is None, f"the processor exited:\n{log_tail(log_path)}"
        fast_projection_writes(settings)
        final = wait_applied(settings, len(bodies), DRAIN_BOUND_S)
        alive = process.poll() is None
    verify(
        settings,
        cluster_report,
        scenario="rolling restart (nodes 1, 2, 3 stopped and started in turn) during a drain",
        must_apply=bodies,
        notes=(
            f"{mid_drain}/3 restarts began mid-drain; each restart (stop + start + rejoin) "
            f"{min(restart_s):.0f}-{max(restart_s):.0f} s"
        ),
    )
    assert alive, f"the processor exited:\n{log_tail(log_path)}"
    assert final == len(bodies)
    assert mid_drain >= 1, "no restart began while events were still being applied"


@dataclass
class Answer:
    """One ``POST /v1/events``: when it was sent, how long the answer took (s), its status (0:
    no answer) and error code."""

    sent_at: float
    seconds: float
    status: int
    code: str
    bodies: list[bytes]


def _ingest(
    url: str, token: str, batches: list[list[bytes]], answers: list[Answer], stop: threading.Event
) -> None:
    with httpx.Client(timeout=90.0, headers={"Authorization": f"Bearer {token}"}) as client:
        for batch in batches:
            if stop.is_set():
                return
            sent_at = time.monotonic()
            try:
                response = client.post(url, content=b"[" + b",".join(batch) + b"]")
            except httpx.HTTPError as exc:
                answers.append(
                    Answer(sent_at, time.monotonic() - sent_at, 0, type(exc).__name__, batch)
                )
                continue
            body = json_or_none(response.content)
            code = ""
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                code = str(body["error"].get("code", ""))
            answers.append(
                Answer(sent_at, time.monotonic() - sent_at, response.status_code, code, batch)
            )
            time.sleep(0.02)


def test_http_ingest_through_a_node_kill_answers_202_only_for_events_applied_once(
    cluster: RabbitCluster,
    cluster_settings: Settings,
    tmp_path: Path,
    cluster_report: ClusterReport,
) -> None:
    settings = cluster_settings.with_overrides(api_port=free_port())
    bodies = synthetic_events(40_000, users=2_000, seed=1103)
    batches = [bodies[i : i + 10] for i in range(0, len(bodies), 10)]
    token = make_token(settings, "ingest")
    url = f"http://{settings.api_host}:{settings.api_port}/v1/events"
    answers: list[Answer] = []
    stop = threading.Event()
    victim = 1  # the node of AMQP_URL: where the API's publisher connects first
    with api_process(settings, tmp_path / "api.log"):
        client = threading.Thread(
            target=_ingest, args=(url, token, batches, answers, stop), daemon=True
        )
        client.start()
        wait_until(lambda: len(answers) >= 20, "the API answering", 120)
        cluster.kill(victim)
        killed_at = time.monotonic()

        def accepted_since(moment: float) -> int:
            return sum(a.status == 202 and a.sent_at >= moment for a in list(answers))

        # The node stays down until requests are accepted without it (bounded), then returns.
        deadline = killed_at + INGEST_DOWN_AT_MOST_S
        while accepted_since(killed_at) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        restarted_at = time.monotonic()
        cluster.start(victim)
        back_at = time.monotonic()
        deadline = back_at + DOWN_AT_MOST_S
        while accepted_since(back_at) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        client.join(timeout=120)
    accepted = [b for a in answers if a.status == 202 for b in a.bodies]
    refused = [a for a in answers if a.status != 202]
    while_down = [a for a in answers if killed_at <= a.sent_at < restarted_at]
    wanted = event_ids(accepted)
    with processor_process(settings, tmp_path / "processor.log"):
        # Events of refused requests may be in the log too: wait for the accepted ones by id.
        deadline = time.monotonic() + DRAIN_BOUND_S
        while not wanted <= applied_ids(settings) and time.monotonic() < deadline:
            time.sleep(0.5)
    codes = Counter(f"{a.status} {a.code}".strip() for a in refused)
    verify(
        settings,
        cluster_report,
        scenario=f"HTTP ingest while node {victim} (AMQP_URL's) is killed and restarted",
        must_apply=accepted,
        sent=[b for a in answers for b in a.bodies],
        notes=(
            f"{len(answers)} requests of 10 events: {len(answers) - len(refused)} answered 202, "
            f"{', '.join(f'{n} {c}' for c, n in codes.items()) or 'no other answer'}; "
            f"{sum(a.status == 202 for a in while_down)}/{len(while_down)} accepted while the "
            f"node was down ({restarted_at - killed_at:.0f} s); slowest answer "
            f"{max(a.seconds for a in answers):.1f} s"
        ),
    )
    clear = {"503 broker_unavailable", "503 publish_failed"}
    assert set(codes) <= clear, f"answers that are not a clear error: {codes}"
    assert while_down, "no request was sent while the node was down"
    assert any(a.status == 202 for a in while_down), (
        "no event was accepted while the node was down: the publisher must fail over"
    )
