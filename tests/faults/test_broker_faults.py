"""Broker faults: the broker closes every connection of the processor, repeatedly, mid-stream.

The stream reader must notice, log one line per reconnect (with its bounded, jittered back-off),
resubscribe every partition from the offset its feed needs next, and lose or double nothing.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from processor.settings import Settings
from testkit.services import Services
from tests.faults.scale import size
from tests.faults.support import (
    FaultReport,
    applied_count,
    assert_batches_atomic,
    close_connections,
    connection_label,
    reconnect_delays,
    slow_projection_writes,
    stream_connections,
    verify,
    wait_until,
)
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    synthetic_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_the_broker_closing_every_processor_connection_mid_stream_loses_and_doubles_nothing(
    services: Services, settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    rounds = size(3, 10)
    bodies = synthetic_events(size(12_000, 50_000), users=size(1_000, 3_000), seed=301)
    step = len(bodies) // (rounds + 1)
    chunks = [bodies[i * step : (i + 1) * step] for i in range(rounds)]
    chunks.append(bodies[rounds * step :])
    # Batches of 200 that take at least 0.1 s each keep every chunk in flight for a while, so
    # each close lands while the processor is reading and applying.
    slow_projection_writes(settings, 0.1)
    log_path = tmp_path / "processor.log"
    publish(settings, outgoing(chunks[0]))
    closed = 0
    mid_stream = 0
    with processor_process(settings.with_overrides(batch_size=200, threads=2), log_path) as process:
        reader = f"friendship-stream {socket.gethostname()}:{process.pid}"
        published = len(chunks[0])
        for round_number, chunk in enumerate(chunks[1:], start=1):
            listed: list[dict[str, Any]] = []

            def reader_listed(listed: list[dict[str, Any]] = listed) -> bool:
                listed[:] = [
                    c
                    for c in stream_connections(services, settings)
                    if connection_label(c).endswith(reader)
                    or connection_label(c).endswith("friendship-stream-probe")
                ]
                return any(connection_label(c) == reader for c in listed)

            wait_until(reader_listed, "the reader's connection in the broker's listing")
            before = applied_count(settings)
            publish(settings, outgoing(chunk))
            published += len(chunk)
            wait_until(
                lambda before=before: applied_count(settings) > before, "the processor applying"
            )
            closed += close_connections(services, listed)
            if applied_count(settings) < published:
                mid_stream += 1
            wait_until(
                lambda round_number=round_number: len(reconnect_delays(log_path)) >= round_number,
                f"reconnect log line {round_number}",
            )
            assert process.poll() is None, "the processor must survive a closed connection"
            assert_batches_atomic(settings)
        drain(settings)
    delays = reconnect_delays(log_path)
    verify(
        settings,
        fault_report,
        scenario="broker closes every processor connection (management API)",
        rounds=rounds,
        valid=bodies,
        notes=(
            f"{closed} connections closed, {mid_stream} closes mid-stream, {len(delays)} "
            f"reconnects, back-off {min(delays):.2f}-{max(delays):.2f} s"
        ),
    )
    assert mid_stream >= 1, "no close landed while events were still being applied"
    assert len(delays) >= rounds
    low, high = settings.reconnect_backoff_s, settings.reconnect_backoff_max_s
    assert all(low <= delay <= high for delay in delays), delays
    assert len(set(delays)) > 1, "the back-off has no jitter"
