"""The raw stream read rate: what reading the log costs before anything is decoded or stored.

Every partition is read from its first offset to its tail on one stream connection of rstream,
an independent client of the stream protocol (the product reads with its own,
``processor.reading.client``), with the live reader's credit per subscription; each entry's
body is extracted from its AMQP 1.0 envelope, the least any reader of the log does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from rstream import Consumer, ConsumerOffsetSpecification, MessageContext, OffsetType

from processor import tuning
from processor.reading.amqp_body import message_body
from processor.settings import Settings, stream_name


async def _read_all(
    settings: Settings, tails: Mapping[int, int], timeout_s: float
) -> tuple[int, float]:
    amqp = settings.amqp
    consumer = Consumer(
        amqp.host,
        settings.stream_port,
        username=amqp.username,
        password=amqp.password,
        vhost=amqp.vhost,
        connection_name="bench-raw-read",
    )
    remaining = {p for p, tail in tails.items() if tail >= 0}
    done = asyncio.Event()
    read = 0

    def make_callback(partition: int, tail: int) -> Callable[[bytes, MessageContext], None]:
        def on_message(entry: bytes, context: MessageContext) -> None:
            nonlocal read
            message_body(entry)
            read += 1
            if context.offset >= tail and partition in remaining:
                remaining.discard(partition)
                if not remaining:
                    done.set()

        return on_message

    try:
        started = time.perf_counter()
        for partition in sorted(remaining):
            await consumer.subscribe(
                stream_name(partition),
                make_callback(partition, tails[partition]),
                offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
                initial_credit=tuning.LIVE_CREDIT,
            )
        if remaining:
            await asyncio.wait_for(done.wait(), timeout=timeout_s)
        return read, time.perf_counter() - started
    finally:
        await consumer.close()


def measure_raw_read(
    settings: Settings, tails: Mapping[int, int], timeout_s: float = 300.0
) -> tuple[int, float]:
    """Read every partition from its first offset to ``tails``; returns (entries, seconds)."""
    return asyncio.run(_read_all(settings, tails, timeout_s))
