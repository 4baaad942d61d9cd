"""Where each partition's log starts and ends, asked of the broker with the stream protocol.

RabbitMQ 3.10 has no stream statistics command, so the probes subscribe: from ``FIRST`` the
broker sends the stream's first chunk, from ``LAST`` its last chunk, and an empty stream sends
nothing (the probes wait a bounded time). They use ``processor.reading.client``, the client the
read path uses, on connections of their own: the streams' metadata first, then each stream on a
node that hosts it (a replica first, as the live reader), so they work on a cluster too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from processor import tuning
from processor.reading.chunks import records_span
from processor.reading.client import MAX_SUBSCRIPTIONS, Nodes, OffsetSpec
from processor.reading.log_record import LogRecord
from processor.settings import Settings, stream_name


async def _probe(
    settings: Settings, partitions: list[int], start: OffsetSpec, wait_s: float
) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset, last offset)}`` of the chunks each subscription got.

    Each stream is read on a node that hosts it (``client.Nodes``: metadata first).
    """
    seen: dict[int, tuple[int, int]] = {}
    arrived = asyncio.Event()
    for group_start in range(0, len(partitions), MAX_SUBSCRIPTIONS):
        group = partitions[group_start : group_start + MAX_SUBSCRIPTIONS]
        nodes = Nodes(settings, "friendship-stream probe")
        ids: dict[int, int] = {}  # per connection (by id()): subscriptions made
        try:
            if settings.stream_follow_advertised:
                await nodes.locate([stream_name(p) for p in group])
            for partition in group:

                def on_chunk(first: int, records: list[LogRecord], p: int = partition) -> None:
                    last = first + records_span(first, records) - 1
                    low, high = seen.get(p, (first, last))
                    seen[p] = (min(low, first), max(high, last))
                    if len(seen) == len(partitions):
                        arrived.set()

                connection = await nodes.for_stream(stream_name(partition))
                index = ids.get(id(connection), 0)
                ids[id(connection)] = index + 1
                await connection.subscribe(
                    index, stream_name(partition), 0, tuning.PROBE_CREDIT, on_chunk, start=start
                )
            # Every stream that is not empty answers at once; an empty one sends nothing.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), wait_s)
            for connection in nodes.connections:
                if connection.failed is not None and connection.failed.done():
                    connection.failed.result()  # a connection that failed meanwhile: raise
        finally:
            await nodes.close()
    return seen


async def read_first_offset(
    settings: Settings, partition: int, wait_s: float = tuning.FIRST_OFFSET_WAITS_S[0]
) -> int | None:
    """The first offset a consumer can read in a partition stream, None when it is empty.

    After retention deleted old segments this is above 0.

    Args:
        settings: broker endpoint.
        partition: the partition.
        wait_s: how long, in seconds, to wait for the first chunk of a non-empty stream.

    Raises:
        StreamDoesNotExist: the stream does not exist.
        StreamProtocolError: the broker refused, or a connection failed.
        BrokerUnreachable: no node hosting the stream answered.
    """
    seen = await _probe(settings, [partition], OffsetSpec.FIRST, wait_s)
    return seen[partition][0] if partition in seen else None


async def read_tail_offsets(
    settings: Settings,
    partitions: Iterable[int] | None = None,
    wait_s: float = tuning.TAIL_PROBE_WAIT_S,
) -> dict[int, int]:
    """The last offset of each partition stream, -1 for an empty stream.

    A stream that sends nothing within ``wait_s`` is asked again with four times the wait
    before it is taken as empty, so a slow answer is not mistaken for an empty log (which
    would read as zero lag). Use it for lag: ``lag = tail - checkpoint``.

    Args:
        settings: broker endpoint and partition count.
        partitions: which partitions (default all).
        wait_s: how long, in seconds, to wait for the last chunks after subscribing.

    Raises:
        StreamDoesNotExist: a stream does not exist.
        StreamProtocolError: the broker refused, or a connection failed.
        BrokerUnreachable: no node hosting a stream answered.
    """
    chosen = list(range(settings.partitions) if partitions is None else partitions)
    tails = {p: -1 for p in chosen}
    for p, (_, last) in (await _probe(settings, chosen, OffsetSpec.LAST, wait_s)).items():
        tails[p] = last
    silent = [p for p, tail in tails.items() if tail < 0]
    if silent:
        again = await _probe(settings, silent, OffsetSpec.LAST, wait_s * 4)
        for p, (_, last) in again.items():
            tails[p] = last
    return tails
