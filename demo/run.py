"""``just demo``: the bundled Topical-Chat conversations through the whole pipeline.

Steps: migrate and declare the topology; convert the conversations into events
(``demo.data``); publish them with confirms; start the processor in the background;
wait until every partition is at zero lag; start the read API in the background; print a summary
and the URLs to query. The processor and API keep running (``just down`` stops them), so the
URLs answer and more events can be published. Running the demo twice republishes the same event
ids, which the processor applies once: the summary does not change.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from demo import background
from demo.data import DEFAULT_DATA_DIR, iter_demo_events
from demo.errors import DemoError
from processor.access.principals import provision, settings_as
from processor.access.tokens import create_token
from processor.api.address import api_base_url, api_client_ssl_context
from processor.applying.checkpoint import consumed_records
from processor.privacy.data_keys import seal_events
from processor.privacy.errors import UserErased
from processor.privacy.keys import load_keys
from processor.progress import CountBar
from processor.publishing.publisher import OutgoingEvent, publish_events
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from processor.status import PartitionStatus, read_partition_status
from projections.database import connect, migrate
from projections.fold import LEVELS, level_of

#: The mapping in brief, one paragraph (the console wraps it to its width); the whole of it is
#: ``demo.data.mapping_description()``.
MAPPING_SUMMARY: Final = (
    "1,617 conversations (valid_freq, valid_rare, test_freq) -> 200 children (hash of the "
    "conversation id); agent_2 plays the child, agent_1 the robot. Each turn -> "
    "conversation.turn_recorded (dataset sentiment label -> contract label); then one "
    "conversation.completed (the child's rating, 15 s per turn). Topic = the most common topic "
    "of the conversation's reading-set entities. Deterministic event ids and times: a re-run "
    "applies nothing twice. Full mapping: demo/data.py."
)

#: Columns of the demo's output when it does not go to a terminal.
PIPE_WIDTH: Final = 120
#: Seconds the demo waits for zero lag before giving up.
DRAIN_TIMEOUT_S: Final = 600.0
#: The line a processor logs at start when it serves its metrics.
_METRICS_URL: Final = re.compile(r"processor metrics at (http://\S+/metrics)")
_STARTED: Final = re.compile(r"processor \S+ started: ")
#: The line ``processor run`` logs when it started several member processes (``supervisor``).
_MEMBERS_STARTED: Final = re.compile(r"processor started (\d+) member processes")
#: Seconds the demo waits for the API's ``/healthz`` to answer.
API_START_TIMEOUT_S: Final = 30.0
_POLL_S: Final = 0.2


@dataclass(frozen=True)
class Counters:
    """Counters read from the database: how far the checkpoints are and what they produced.

    Attributes:
        consumed: sum over partitions of checkpoint + 1 (log records consumed so far).
        applied: sum of ``events_applied`` over users.
        dead_lettered: rows in the dead-letter table.
    """

    consumed: int
    applied: int
    dead_lettered: int


@dataclass(frozen=True)
class DrainMeasurement:
    """What the processor did with the demo's backlog and how long it took.

    Attributes:
        events: log records consumed (applied, duplicate or dead-lettered).
        applied: events that changed the projections (first time seen).
        dead_lettered: events dead-lettered.
        seconds: from ``since`` to zero lag on every partition.
        processor_was_running: the processor was already running before the demo published,
            so the time counts from the start of publishing, not from processor start.
    """

    events: int
    seconds: float
    applied: int = 0
    dead_lettered: int = 0
    processor_was_running: bool = False

    @property
    def duplicates(self) -> int:
        """Records whose event id was already applied (no effect)."""
        return max(0, self.events - self.applied - self.dead_lettered)

    @property
    def events_per_s(self) -> float:
        """Log records consumed per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One sentence for people: what was consumed, how fast, and what it changed."""
        since = (
            "from the start of publishing; the processor was already running"
            if self.processor_was_running
            else "from processor start, start-up included"
        )
        text = (
            f"processor reached zero lag on every partition in {self.seconds:.2f} s ({since}): "
            f"{self.events} log records consumed = {self.events_per_s:.0f} records/s; "
            f"{self.applied} applied, {self.duplicates} duplicates (event id already applied: "
            f"no effect), {self.dead_lettered} dead-lettered."
        )
        if self.events and self.applied == 0 and self.dead_lettered == 0:
            text += (
                " Every event was already applied by an earlier run (a re-run republishes the "
                "same event ids), so nothing changed."
            )
        return text


async def _publish(settings: Settings, events: list[OutgoingEvent], console: Console) -> float:
    """Publish with confirms; unconfirmed events go again on the next broker node
    (``processor.publishing.publisher.publish_events``). Returns the seconds it took."""
    with CountBar(console, "publishing", len(events)) as bar:
        await publish_events(settings, events, bar.update)
    return bar.seconds


def _sealed(settings: Settings, events: list[OutgoingEvent]) -> tuple[list[OutgoingEvent], int]:
    """The events with their ``data`` encrypted, as ``just publish`` and the HTTP ingest do,
    without those of children erased since an earlier demo (the ingest refuses them too).

    Returns:
        ``(sealed events, how many events of erased children were left out)``.
    """
    keys = load_keys(settings)
    kept = events
    with connect(settings.database_url) as conn:
        while True:
            try:
                bodies = seal_events(conn, [event.body for event in kept], keys)
            except UserErased as refused:
                left_out = set(refused.indexes)
                kept = [event for i, event in enumerate(kept) if i not in left_out]
                continue
            break
    sealed = [replace(event, body=body) for event, body in zip(kept, bodies, strict=True)]
    return sealed, len(events) - len(kept)


def _read_progress(settings: Settings) -> Counters:
    with connect(settings.database_url) as conn:
        consumed = consumed_records(conn)
        row = conn.execute(
            """SELECT (SELECT coalesce(sum(events_applied), 0) FROM friendships),
                      (SELECT count(*) FROM dead_letters)"""
        ).fetchone()
    applied, dead = row if row else (0, 0)
    return Counters(consumed, int(applied), int(dead))


def drain_progress(statuses: Sequence[PartitionStatus], consumed_before: int) -> tuple[int, int]:
    """How far the processor is through the demo's backlog, for the processing bar.

    Args:
        statuses: every partition's checkpoint, tail and lag, just read.
        consumed_before: ``Counters.consumed`` before the demo published (the sum over
            partitions of checkpoint + 1).

    Returns:
        ``(done, total)`` in log offsets: the offsets consumed since ``consumed_before``, and
        those plus the lag still to go. Offsets may have holes (segment header chunks), so both
        may exceed the events by a few; ``done == total`` exactly when the lag is zero.
    """
    consumed = sum(s.checkpoint + 1 for s in statuses)
    done = max(0, consumed - consumed_before)
    return done, done + sum(max(0, s.lag) for s in statuses)


def _drain(
    settings: Settings, console: Console, before: Counters, publish_started: float
) -> DrainMeasurement:
    """Start the processor unless it runs, and wait for zero lag on every partition.

    Raises:
        DemoError: the processor died (with its exit status and log tail), or lag stayed above
            zero for ``DRAIN_TIMEOUT_S`` seconds.
    """
    existing = background.find("processor")
    started = publish_started if existing is not None else time.perf_counter()
    processor = existing or background.start(
        "processor", ["run"], _environment_of(settings, "processor")
    )
    with (
        connect(settings.database_url) as conn,
        CountBar(console, "processing", 0) as bar,
    ):
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            if not processor.alive():
                raise DemoError(processor.death_report())
            statuses = asyncio.run(read_partition_status(settings, conn))
            lag = sum(s.lag for s in statuses)
            done, total = drain_progress(statuses, before.consumed)
            bar.update(done, total)
            if lag == 0:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"lag still {lag} after {DRAIN_TIMEOUT_S:.0f} s")
            time.sleep(_POLL_S)
    seconds = time.perf_counter() - started
    after = _read_progress(settings)
    return DrainMeasurement(
        events=after.consumed - before.consumed,
        seconds=seconds,
        applied=after.applied - before.applied,
        dead_lettered=after.dead_lettered - before.dead_lettered,
        processor_was_running=existing is not None,
    )


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def _healthy(base: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2, context=context):  # noqa: S310
            return True
    except (urllib.error.URLError, OSError):
        return False


def _environment_of(settings: Settings, process: str) -> dict[str, str]:
    """This process's environment with the broker user and database role of ``process``
    (least privilege, ``processor.access.principals``): the demo runs as the owner, the
    processor and the API as themselves."""
    scoped = settings_as(settings, provision(settings), process)
    return os.environ | {
        "AMQP_URL": scoped.amqp_url,
        "DATABASE_URL": scoped.database_url,
        "STREAM_USERNAME": scoped.stream_username,
        "STREAM_PASSWORD": scoped.stream_password,
    }


def _start_api(settings: Settings) -> str:
    """Start the API unless the demo's API runs, and wait until it answers ``/healthz``.

    Raises:
        DemoError: another process (not started by the demo) holds API_HOST:API_PORT, the
            API died (with its exit status and log tail), or it did not answer in time.
    """
    base = api_base_url(settings)
    context = api_client_ssl_context(settings)
    existing = background.find("api")
    if existing is None and _port_in_use(settings.api_host, settings.api_port):
        raise DemoError(
            f"{settings.api_host}:{settings.api_port} is already in use by a process the demo "
            "did not start (`just down` stops only what the demo started); stop it, or set "
            "API_PORT to a free port"
        )
    api = existing or background.start("api", ["api"], _environment_of(settings, "api"))
    deadline = time.monotonic() + API_START_TIMEOUT_S
    while time.monotonic() < deadline:
        healthy = _healthy(base, context)
        # Judge the process after the probe: an answer from a process that is not ours
        # (ours died, say, on "address already in use") must not count.
        if not api.alive():
            raise DemoError(api.death_report())
        if healthy:
            return base
        time.sleep(_POLL_S)
    raise DemoError(f"the API did not answer at {base}; see {background.log_file('api')}")


def _summary(settings: Settings, console: Console, base_url: str) -> None:
    with connect(settings.database_url) as conn:
        users, applied = conn.execute(
            "SELECT count(*), coalesce(sum(events_applied), 0) FROM friendships"
        ).fetchone() or (0, 0)
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        levels: Counter[str] = Counter()
        for score, children in conn.execute("SELECT score, count(*) FROM friendships GROUP BY 1"):
            levels[level_of(int(score))] += int(children)
        topics = conn.execute(
            """SELECT topic, sum(conversations), sum(turns), count(*) FROM topic_metrics
               GROUP BY topic ORDER BY sum(conversations) DESC, topic LIMIT 8"""
        ).fetchall()
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
    token = _read_token(settings)
    console.print(
        "Query the read API (it keeps running; `just down` stops it). Every call needs a token; "
        "this one may read, for 7 days (`just token create --scope read --name NAME` makes "
        "more, `--scope admin` one that may also erase and list dead letters):",
        highlight=False,
    )
    console.print(f"  TOKEN={token}", highlight=False, soft_wrap=True)
    # HTTPS: curl trusts the API's own certificate.
    cacert = (
        f"--cacert {shlex.quote(settings.api_tls_cert_file)} " if settings.api_tls_cert_file else ""
    )
    auth = f'{cacert}-H "Authorization: Bearer $TOKEN"'
    for path in (
        "/v1/users/USER_ID/friendship",
        "/v1/users/USER_ID/topics",
        "/v1/stats",
        "/metrics",
    ):
        console.print(f"  curl {auth} {base_url}{path}", highlight=False, soft_wrap=True)
    console.print(
        f"  curl {cacert}{base_url}/schema/openapi.json   (open: the API's description)",
        highlight=False,
        soft_wrap=True,
    )
    metrics_auth = (
        ' -H "Authorization: Bearer $PROCESSOR_METRICS_TOKEN"' if settings.metrics_token else ""
    )
    for metrics_url in processor_metrics_urls(background.log_tail("processor", lines=100_000)):
        console.print(
            f"  curl{metrics_auth} {metrics_url}   (the processor's own metrics: "
            "friendship_processor_*)",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        "USER_ID: the demo's children are child-NNN, NNN from 000 to 199.\n"
        f"The dashboard: open {base_url}/ in a browser and sign in with the token.",
        highlight=False,
        soft_wrap=True,
    )


def processor_metrics_urls(log_lines: list[str]) -> list[str]:
    """The metrics URLs the running processor logged at its last start: one per member process
    (``PROCESSOR_PROCESSES``; the supervisor's line says how many follow), none when they serve
    none (``PROCESSOR_METRICS_PORT=off``)."""
    urls: list[str] = []
    pending: list[str] = []
    members_left = 0
    for line in log_lines:
        if match := _MEMBERS_STARTED.search(line):
            urls, pending, members_left = [], [], int(match.group(1))
        elif match := _METRICS_URL.search(line):
            pending.append(match.group(1))
        elif _STARTED.search(line):
            url = [pending.pop(0)] if pending else []
            if members_left > 0:
                members_left -= 1
                urls += url
            else:
                urls = url
    return urls


def _read_token(settings: Settings) -> str:
    """A fresh ``read`` token for the demo's user, valid for 7 days (shown once)."""
    name = f"demo-read-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    with connect(settings.database_url) as conn:
        return create_token(conn, load_keys(settings), name, "read", timedelta(days=7))


def run_demo(settings: Settings, data_dir: Path = DEFAULT_DATA_DIR) -> DrainMeasurement:
    """Run the whole demo (see the module docstring) and return the drain measurement.

    Raises:
        DemoError: a step failed (the processor or API exited, lag did not reach zero).
        processor.errors.PublishError: the broker did not confirm the events.
    """
    console = Console()
    if not console.is_terminal:  # a pipe or a CI log: no 80-column wrapping mid-sentence
        console = Console(width=max(console.width, PIPE_WIDTH))
    migrate(settings.database_url)
    declare_topology(settings)
    console.rule("Topical-Chat -> events")
    console.print(MAPPING_SUMMARY, highlight=False)
    events, erased = _sealed(
        settings, [OutgoingEvent(e.event_id, e.user_id, e.body) for e in iter_demo_events(data_dir)]
    )
    console.print(
        f"{len(events)} events from {data_dir}, each one's data encrypted with its child's key"
    )
    if erased:
        console.print(
            f"{erased} events of erased children left out: an erased child is never published "
            "again (docs/contract.md, Erasure)"
        )
    before = _read_progress(settings)
    publish_started = time.perf_counter()
    publish_s = asyncio.run(_publish(settings, events, console))
    console.print(
        f"published {len(events)} events in {publish_s:.2f} s "
        f"({len(events) / publish_s:.0f} events/s, every one confirmed by the broker)"
    )
    console.rule("Processing")
    drain = _drain(settings, console, before, publish_started)
    console.print(drain.describe(), highlight=False)
    base_url = _start_api(settings)
    console.rule("Result")
    _summary(settings, console, base_url)
    return drain
