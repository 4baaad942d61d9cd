"""CPU per event of each layer of a worker, on a fixed workload: ``python -m bench.cpu_layers``.

The processor's figure that the busy machine does not blur: process CPU time
(``time.process_time``) over a fixed amount of work, in microseconds per event. Wall-clock
figures move with whatever else runs; CPU time of the same work moves far less.

Layers, each over the same seeded workload as ``just bench`` (``bench.workload``), cut in
partitions by user and in batches of the default batch size, as a worker sees them:

- ``decode``: ``decode_records`` of plain bodies (JSON decode, validation, upcast, routing);
- ``open``: ``open_records`` of the same events with their data encrypted (AES-GCM per event);
- ``fold``: event-id rule, touched rows, the fold of the decoded events from empty rows, and
  the statements' parameter columns (``processor.applying.postgres``; since commit cd3cba0
  packed into binary arrays here, which psycopg did inside ``execute`` before, so this layer
  is not comparable across that commit);
- ``apply``: ``apply_batch`` through ``PostgresStore`` into a fresh database (decode, fold, the
  statements and the commit): this process's CPU, and the CPU of its PostgreSQL backend
  (``/proc/<pid>/stat`` of ``pg_backend_pid()``, when the server runs on this machine);
- ``apply sealed``: the same with every event's data encrypted (the product's default);
- ``read``: the reader's side, on ``Deliver`` frames captured from the broker (the workload
  published through the ``events`` exchange into a fresh vhost, every partition read to its
  tail once, the frames kept in memory): per frame, the chunk parsed into records
  (``chunks.deliver_records``: CRC, entries, each message's body and routing key) and the records
  handed to the partition's feed as the live reader does (``offer``, then ``reader_idle``), with
  the feed emptied in batches as a worker takes them. No socket, no broker load: only what the
  reader thread does per record.

``apply`` minus ``decode`` minus ``fold`` is what the statements cost this process (the
parameters built, sent and the answers read).

Exit codes: 0 measured, 2 the services are down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import BenchError, deployment, publish_timed, read_tails, require_services
from bench.workload import make_workload
from processor.applying.batch import apply_batch, fold_into, touched_rows
from processor.applying.checkpoint import ensure_checkpoints
from processor.applying.decode import decode_records
from processor.applying.postgres import (
    PostgresStore,
    event_id_columns,
    friendship_columns,
    topic_columns,
)
from processor.privacy.crypto import encrypt_event, new_data_key, wrap_data_key
from processor.privacy.data_keys import seal_events
from processor.privacy.keys import Keys, load_keys
from processor.privacy.opening import open_records, sealed_records
from processor.reading import client as stream_client
from processor.reading.chunks import deliver_records, records_span
from processor.reading.client import open_first_contact
from processor.reading.feed import PartitionFeed
from processor.reading.log_record import LogRecord
from processor.settings import Settings, stream_name
from projections.database import connect
from projections.event_ids import first_occurrences, judge_event_ids
from projections.fold import Friendship, TopicMetrics
from testkit.events import outgoing
from testkit.services import Services, isolated_settings

PARTITIONS = 16


@dataclass(frozen=True)
class LayerFigure:
    """One layer's CPU per event: the median and the spread of ``runs`` runs (microseconds),
    and for ``apply`` the PostgreSQL backend's CPU per event (0 when not measured)."""

    layer: str
    events: int
    runs: int
    us_per_event: float
    low: float
    high: float
    server_us_per_event: float = 0.0


def batches(bodies: Sequence[bytes], users: Sequence[str], size: int) -> list[list[LogRecord]]:
    """The bodies cut into partitions by user (crc32, as a stand-in for the exchange's hash)
    and each partition's records, offsets 0.., into batches of at most ``size``."""
    by_partition: dict[int, list[tuple[bytes, str]]] = {}
    for body, user in zip(bodies, users, strict=True):
        by_partition.setdefault(zlib.crc32(user.encode()) % PARTITIONS, []).append((body, user))
    cut: list[list[LogRecord]] = []
    for partition in sorted(by_partition):
        records = [
            LogRecord(offset, body, routing_key=user)
            for offset, (body, user) in enumerate(by_partition[partition])
        ]
        cut.extend(records[i : i + size] for i in range(0, len(records), size))
    return cut


def partition_of(batch: Sequence[LogRecord]) -> int:
    """The partition a batch of ``batches`` came from."""
    return zlib.crc32((batch[0].routing_key or "").encode()) % PARTITIONS


def _cpu_us(action: Callable[[], object]) -> float:
    started = time.process_time()
    action()
    return (time.process_time() - started) * 1e6


def _figure(layer: str, events: int, samples: list[float], server: float = 0.0) -> LayerFigure:
    per_event = [s / events for s in samples]
    return LayerFigure(
        layer,
        events,
        len(samples),
        statistics.median(per_event),
        min(per_event),
        max(per_event),
        server,
    )


def measure_decode(cut: list[list[LogRecord]], runs: int) -> LayerFigure:
    """``decode_records`` of every batch."""
    events = sum(len(b) for b in cut)

    def run() -> None:
        for batch in cut:
            decode_records(partition_of(batch), batch)

    return _figure("decode", events, [_cpu_us(run) for _ in range(runs)])


def measure_open(cut: list[list[LogRecord]], runs: int) -> LayerFigure:
    """``open_records`` of every batch with its data encrypted (keys made in memory)."""
    keys = Keys(os.urandom(32), os.urandom(32))
    users = {record.routing_key or "" for batch in cut for record in batch}
    data_keys = {user: new_data_key() for user in users}
    wrapped = {
        user: (wrap_data_key(keys.kek, key, user), keys.kek_id) for user, key in data_keys.items()
    }
    sealed = [
        [
            LogRecord(
                r.offset, encrypt_event(r.body, data_keys[r.routing_key or ""]), None, r.routing_key
            )
            for r in batch
        ]
        for batch in cut
    ]
    events = sum(len(b) for b in sealed)

    def run() -> None:
        for batch in sealed:
            open_records(batch, sealed_records(batch), wrapped, keys)

    return _figure("open", events, [_cpu_us(run) for _ in range(runs)])


def measure_fold(cut: list[list[LogRecord]], runs: int) -> LayerFigure:
    """Event-id rule, touched rows and the fold from empty rows, of every decoded batch."""
    decoded = [
        (partition_of(batch), decode_records(partition_of(batch), batch).valid) for batch in cut
    ]
    events = sum(len(valid) for _, valid in decoded)

    def run() -> None:
        for partition, valid in decoded:
            verdict = judge_event_ids(partition, valid, {})
            applied = [event for event, _ in verdict.to_apply]
            users, topic_keys = touched_rows(applied)
            friendships: dict[str, Friendship] = {}
            topics: dict[tuple[str, str], TopicMetrics] = {}
            fold_into(applied, friendships, topics)
            event_id_columns(partition, first_occurrences(valid), frozenset())
            friendship_columns({user: friendships[user] for user in users})
            topic_columns({key: topics[key] for key in topic_keys})

    return _figure("fold+rows", events, [_cpu_us(run) for _ in range(runs)])


def _backend_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


def _apply_once(
    services: Services, cut: list[list[LogRecord]], sealed: bool
) -> tuple[float, float]:
    """Apply every batch into a fresh database; (client CPU us, server CPU us or -1)."""
    with isolated_settings(services) as fresh:
        keys = load_keys(fresh)
        with connect(fresh.database_url) as conn:
            ensure_checkpoints(conn, PARTITIONS)
            work = cut
            if sealed:
                work = []
                for batch in cut:
                    bodies = seal_events(conn, [r.body for r in batch], keys)
                    work.append(
                        [
                            LogRecord(r.offset, b, None, r.routing_key)
                            for r, b in zip(batch, bodies, strict=True)
                        ]
                    )
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            backend = int(row[0]) if row else -1
            store = PostgresStore(conn)
            checkpoints = dict.fromkeys(range(PARTITIONS), -1)
            ticks_before = _backend_ticks(backend)
            started = time.process_time()
            for batch in work:
                partition = partition_of(batch)
                result = apply_batch(
                    store,
                    partition,
                    batch,
                    checkpoints[partition],
                    "cpu-layers",
                    keys=keys,
                    lease_epoch=0,
                )
                checkpoints[partition] = result.last_offset
            client = (time.process_time() - started) * 1e6
            ticks_after = _backend_ticks(backend)
    server = -1.0
    if ticks_before >= 0 and ticks_after >= 0:
        server = (ticks_after - ticks_before) / os.sysconf("SC_CLK_TCK") * 1e6
    return client, server


def measure_apply(
    services: Services, cut: list[list[LogRecord]], runs: int, sealed: bool
) -> LayerFigure:
    """``apply_batch`` of every batch into a fresh database per run."""
    events = sum(len(b) for b in cut)
    samples = [_apply_once(services, cut, sealed) for _ in range(runs)]
    clients = [c for c, _ in samples]
    servers = [s for _, s in samples if s >= 0]
    server = statistics.median(servers) / events if servers else 0.0
    return _figure("apply sealed" if sealed else "apply", events, clients, server)


async def _capture_frames(settings: Settings, tails: dict[int, int]) -> list[tuple[int, bytes]]:
    """Every partition read from its first offset to its tail: ``(partition, Deliver frame)``
    in arrival order, as the client's read loop hands them to ``chunk_entries``."""
    frames: list[tuple[int, bytes]] = []
    partition_of_id: dict[int, int] = {}
    parse = deliver_records

    def recording(frame: bytes) -> tuple[int, int, list[LogRecord]]:
        answer = parse(frame)
        frames.append((partition_of_id[answer[0]], bytes(frame)))
        return answer

    vars(stream_client)["deliver_records"] = recording  # the client's read loop calls it
    connection = await open_first_contact(settings, "bench-cpu-layers")
    try:
        done = asyncio.Event()
        remaining = {p for p, tail in tails.items() if tail >= 0}

        def until(partition: int) -> stream_client.OnChunk:
            def on_chunk(first_offset: int, records: list[LogRecord]) -> None:
                if first_offset + records_span(first_offset, records) - 1 >= tails[partition]:
                    remaining.discard(partition)
                    if not remaining:
                        done.set()

            return on_chunk

        for subscription_id, partition in enumerate(sorted(remaining)):
            partition_of_id[subscription_id] = partition
            await connection.subscribe(
                subscription_id, stream_name(partition), 0, 256, until(partition)
            )
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        vars(stream_client)["deliver_records"] = parse
        await connection.close()
    return frames


def capture_frames(
    services: Services, bodies_of: Sequence[bytes], events: int
) -> list[tuple[int, bytes]]:
    """Publish the workload's first ``events`` into a fresh deployment and capture its frames."""
    workload_events = list(bodies_of)[:events]
    with deployment(services) as settings:
        publish_timed(settings, outgoing(workload_events))
        tails = read_tails(settings)
        return asyncio.run(_capture_frames(settings, tails))


def measure_read(frames: list[tuple[int, bytes]], runs: int, batch_size: int) -> LayerFigure:
    """Chunk parse, records and the feed hand-off of every captured frame, CPU per record."""
    records = 0
    for _, frame in frames:
        records += len(deliver_records(frame)[2])

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:

            async def probe(_partition: int) -> int | None:
                return 0

            feeds: dict[int, PartitionFeed] = {}
            for partition in {p for p, _ in frames}:
                feeds[partition] = PartitionFeed(
                    partition,
                    next_offset=0,
                    batch_size=batch_size,
                    batch_wait_s=60.0,
                    loop=loop,
                    on_ready=lambda: None,
                    first_offset_probe=probe,
                )
            for partition, frame in frames:
                _, _, records = deliver_records(frame)
                feed = feeds[partition]
                waiting = feed.offer(records)
                feed.reader_idle()
                if len(feed) >= batch_size:
                    feed.take(batch_size)
                if waiting is not None:
                    feed.take(len(feed))
                    loop.run_until_complete(_awaited(waiting))
            for feed in feeds.values():
                feed.take(len(feed))
        finally:
            loop.close()

    return _figure("read", records, [_cpu_us(run) for _ in range(runs)])


async def _awaited(waiting: Awaitable[None]) -> None:
    await waiting


LAYERS = ("decode", "open", "fold", "apply", "apply-sealed", "read")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the chosen layers and print one JSON line per layer (and write ``--out``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_layers", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events of the workload")
    parser.add_argument("--apply-events", type=int, default=40_000, help="events applied")
    parser.add_argument("--read-events", type=int, default=50_000, help="events read")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--runs", type=int, default=3, help="runs per layer (median kept)")
    parser.add_argument("--layers", default=",".join(LAYERS), help=", ".join(LAYERS))
    parser.add_argument("--out", type=Path, help="a JSON file for the figures")
    args = parser.parse_args(argv)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    workload = make_workload(args.events, args.users, args.seed)
    users = [event.user_id for event in workload.events]
    cut = batches(workload.bodies, users, args.batch_size)
    head = batches(
        workload.bodies[: args.apply_events], users[: args.apply_events], args.batch_size
    )
    figures: list[LayerFigure] = []
    try:
        for layer in layers:
            if layer == "decode":
                figures.append(measure_decode(cut, args.runs))
            elif layer == "open":
                figures.append(measure_open(cut, args.runs))
            elif layer == "fold":
                figures.append(measure_fold(cut, args.runs))
            elif layer == "read":
                frames = capture_frames(require_services(), workload.bodies, args.read_events)
                figures.append(measure_read(frames, args.runs, args.batch_size))
            elif layer in ("apply", "apply-sealed"):
                services = require_services()
                figures.append(measure_apply(services, head, args.runs, layer == "apply-sealed"))
            else:
                parser.error(f"unknown layer {layer!r}")
            sys.stdout.write(json.dumps(asdict(figures[-1])) + "\n")
            sys.stdout.flush()
    except BenchError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    if args.out is not None:
        args.out.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
