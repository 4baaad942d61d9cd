"""``just demo``: the bundled Topical-Chat conversations through the whole pipeline.

Steps: migrate and declare the topology; convert the conversations into events
(``processor.demo_data``); publish them with confirms; start the processor in the background;
wait until every partition is at zero lag; start the read API in the background; print a summary
and the URLs to query. The processor and API keep running (``just down`` stops them), so the
URLs answer and more events can be published. Running the demo twice republishes the same event
ids, which the processor applies once: the summary does not change.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from processor import background
from processor.demo_data import DEFAULT_DATA_DIR, iter_demo_events
from processor.publisher import AsyncPublisher, OutgoingEvent
from processor.settings import Settings
from processor.status import read_partition_status
from processor.topology import declare_topology
from projections.database import connect, migrate
from projections.fold import LEVELS

#: The mapping in brief; the whole of it is ``processor.demo_data.mapping_description()``.
MAPPING_SUMMARY: Final = """\
1,617 conversations (valid_freq, valid_rare, test_freq) -> 200 children (hash of the
conversation id); agent_2 plays the child, agent_1 the robot. Each turn ->
conversation.turn_recorded (dataset sentiment label -> contract label); then one
conversation.completed (the child's rating, 15 s per turn). Topic = the most common topic
of the conversation's reading-set entities. Deterministic event ids and times: a re-run
applies nothing twice. Full mapping: processor/demo_data.py."""

#: Events per confirm round when publishing the demo data.
PUBLISH_CHUNK: Final = 5000
#: Seconds the demo waits for zero lag before giving up.
DRAIN_TIMEOUT_S: Final = 600.0


class DemoError(RuntimeError):
    """The demo could not complete a step (the message says which and where to look)."""


@dataclass(frozen=True)
class DrainMeasurement:
    """How fast the processor consumed the demo's backlog: log records (applied, duplicate or
    dead-lettered) and seconds to zero lag."""

    events: int
    seconds: float
    processor_was_running: bool = False

    @property
    def events_per_s(self) -> float:
        """Events applied per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def _publish(settings: Settings, events: list[OutgoingEvent], console: Console) -> float:
    publisher = AsyncPublisher(settings)
    await publisher.connect()
    started = time.perf_counter()
    try:
        with Progress(
            TextColumn("publishing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.0f} events/s"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("publish", total=len(events), rate=0.0)
            done = 0
            for start in range(0, len(events), PUBLISH_CHUNK):
                done += await publisher.publish(events[start : start + PUBLISH_CHUNK])
                elapsed = time.perf_counter() - started
                progress.update(task, completed=done, rate=done / elapsed if elapsed else 0.0)
    finally:
        await publisher.close()
    return time.perf_counter() - started


def _consumed_offsets(settings: Settings) -> int:
    """How far the checkpoints are into the logs: sum over partitions of checkpoint + 1."""
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(committed_offset + 1), 0) FROM checkpoints"
        ).fetchone()
    return int(row[0]) if row else 0


def _drain(settings: Settings, console: Console) -> DrainMeasurement:
    already_running = background.running_pid("processor") is not None
    consumed_before = _consumed_offsets(settings)
    started = time.perf_counter()
    background.start("processor", ["run"])
    with connect(settings.database_url) as conn, console.status("processing") as status:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            statuses = asyncio.run(read_partition_status(settings, conn))
            lag = sum(s.lag for s in statuses)
            status.update(f"processing: consumer lag {lag} events")
            if lag == 0:
                break
            if background.running_pid("processor") is None:
                raise DemoError(f"the processor exited; see {background.log_file('processor')}")
            if time.monotonic() > deadline:
                raise DemoError(f"lag still {lag} after {DRAIN_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    return DrainMeasurement(
        events=_consumed_offsets(settings) - consumed_before,
        seconds=seconds,
        processor_was_running=already_running,
    )


def _start_api(settings: Settings) -> str:
    background.start("api", ["api"])
    base = f"http://{settings.api_host}:{settings.api_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):  # noqa: S310 - local API
                return base
        except (urllib.error.URLError, OSError):
            if background.running_pid("api") is None:
                raise DemoError(f"the API exited; see {background.log_file('api')}") from None
            time.sleep(0.2)
    raise DemoError(f"the API did not answer at {base}; see {background.log_file('api')}")


def _summary(settings: Settings, console: Console, base_url: str) -> None:
    with connect(settings.database_url) as conn:
        users, applied = conn.execute(
            "SELECT count(*), coalesce(sum(events_applied), 0) FROM friendships"
        ).fetchone() or (0, 0)
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        levels: dict[str, int] = dict(
            conn.execute(
                """SELECT CASE WHEN score >= 80 THEN 'best_friend' WHEN score >= 60 THEN 'friend'
                               WHEN score >= 40 THEN 'buddy' WHEN score >= 20 THEN 'acquaintance'
                               ELSE 'stranger' END, count(*)
                   FROM friendships GROUP BY 1"""
            ).fetchall()
        )
        topics = conn.execute(
            """SELECT topic, sum(conversations), sum(turns), count(*) FROM topic_metrics
               GROUP BY topic ORDER BY sum(conversations) DESC, topic LIMIT 8"""
        ).fetchall()
        best = conn.execute(
            "SELECT user_id, score FROM friendships ORDER BY score DESC, user_id LIMIT 1"
        ).fetchone()
    overview = Table(title="Demo summary", show_header=False)
    overview.add_row("users (children)", str(users))
    overview.add_row("events applied", str(applied))
    overview.add_row("dead letters", str(dead[0] if dead else 0))
    console.print(overview)
    level_table = Table(title="Friendship levels")
    level_table.add_column("level")
    level_table.add_column("users", justify="right")
    for _, level in reversed(LEVELS):
        level_table.add_row(level, str(levels.get(level, 0)))
    console.print(level_table)
    topic_table = Table(title="Top topics")
    for column in ("topic", "conversations", "turns", "children"):
        topic_table.add_column(column, justify="left" if column == "topic" else "right")
    for topic, conversations, turns, children in topics:
        topic_table.add_row(topic, str(conversations), str(turns), str(children))
    console.print(topic_table)
    user = best[0] if best else "child-000"
    console.print("Query the read API (it keeps running; `just down` stops it):")
    for path in (
        f"/v1/users/{user}/friendship",
        f"/v1/users/{user}/topics",
        "/v1/stats",
        "/v1/dead-letters",
        "/metrics",
        "/schema/openapi.json",
    ):
        console.print(f"  curl {base_url}{path}")


def run_demo(settings: Settings, data_dir: Path = DEFAULT_DATA_DIR) -> DrainMeasurement:
    """Run the whole demo (see the module docstring) and return the drain measurement.

    Raises:
        DemoError: a step failed (the processor or API exited, lag did not reach zero).
        processor.errors.PublishError: the broker did not confirm the events.
    """
    console = Console()
    migrate(settings.database_url)
    declare_topology(settings)
    console.rule("Topical-Chat -> events")
    console.print(MAPPING_SUMMARY, highlight=False)
    events = [OutgoingEvent(e.event_id, e.user_id, e.body) for e in iter_demo_events(data_dir)]
    console.print(f"{len(events)} events from {data_dir}")
    publish_s = asyncio.run(_publish(settings, events, console))
    console.print(
        f"published {len(events)} events in {publish_s:.2f} s "
        f"({len(events) / publish_s:.0f} events/s, every one confirmed by the broker)"
    )
    console.rule("Processing")
    drain = _drain(settings, console)
    since = (
        "from the end of publishing (the processor was already running)"
        if drain.processor_was_running
        else "from processor start, start-up included"
    )
    console.print(
        f"processor reached zero lag: {drain.events} log records consumed (applied, duplicate "
        f"or dead-lettered) in {drain.seconds:.2f} s = {drain.events_per_s:.0f} events/s "
        f"({since}, to zero lag on every partition)"
    )
    base_url = _start_api(settings)
    console.rule("Result")
    _summary(settings, console, base_url)
    return drain
