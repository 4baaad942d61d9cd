"""A silent stream connection: a TCP proxy between the processor and the stream port stops
forwarding in both directions mid-drain without closing anything (a half-open connection, a
frozen middlebox). The reader must give the silent connection up after its read deadline
(``STREAM_READ_DEADLINE_S``), keep reconnecting with back-off while the proxy stays silent, and,
once it forwards again, resume every partition from its next offset: lost 0, applied twice 0.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from processor.settings import Settings
from testkit.tcp_proxy import TcpProxy
from tests.faults.scale import size
from tests.faults.support import (
    FaultReport,
    applied_count,
    assert_batches_atomic,
    log_text,
    reconnect_delays,
    slow_projection_writes,
    verify,
    wait_until,
)
from tests.integration.support import drain, outgoing, processor_process, publish, synthetic_events

pytestmark = [pytest.mark.integration, pytest.mark.faults]

GIVEN_UP = re.compile(r"stream connection to \S+ failed \(ReadDeadlineExceeded: ")


def test_a_proxy_that_goes_silent_mid_drain_is_given_up_and_nothing_is_lost_or_doubled(
    settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    bodies = synthetic_events(size(20_000, 60_000), users=size(1_500, 3_000), seed=311)
    publish(settings, outgoing(bodies))
    # Batches of 200 that take at least 0.1 s each keep the backlog in flight for a while.
    slow_projection_writes(settings, 0.1)
    log_path = tmp_path / "processor.log"
    host, port = settings.stream_addresses[0]
    with TcpProxy(host, port) as proxy:
        through_proxy = settings.with_overrides(
            stream_addresses_raw=f"127.0.0.1:{proxy.address[1]}",
            stream_follow_advertised=False,  # every stream connection goes through the proxy
            stream_heartbeat_s=1.0,
            stream_read_deadline_s=2.0,
            reconnect_backoff_s=0.1,
            reconnect_backoff_max_s=1.0,
            batch_size=200,
            threads=2,
        )
        with processor_process(through_proxy, log_path) as process:
            wait_until(
                lambda: applied_count(settings) > len(bodies) // 10, "the processor applying"
            )
            proxy.stall()
            stalled_at = time.monotonic()
            at_stall = applied_count(settings)
            wait_until(
                lambda: GIVEN_UP.search(log_text(log_path)) is not None,
                "the reader giving the silent connection up",
            )
            given_up_s = time.monotonic() - stalled_at
            # Still silent: attempts through the proxy fail on the deadline too, with back-off.
            wait_until(
                lambda: len(reconnect_delays(log_path)) >= 3, "reconnect attempts while silent"
            )
            assert process.poll() is None, "the processor must survive a silent connection"
            assert_batches_atomic(settings)
            proxy.resume()
            resumed_at = time.monotonic()
            drain(settings)
            drained_s = time.monotonic() - resumed_at
        delays = reconnect_delays(log_path)
    verify(
        settings,
        fault_report,
        scenario="TCP proxy goes silent mid-drain (no close either way)",
        rounds=1,
        valid=bodies,
        notes=(
            f"given up {given_up_s:.1f} s after the stall (deadline 2 s, heartbeat 1 s); "
            f"{len(delays)} reconnect lines; drained {drained_s:.1f} s after resume"
        ),
    )
    assert at_stall < len(bodies), "the stall must land mid-drain"
