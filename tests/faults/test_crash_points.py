"""Crash points: SIGKILL at random moments, round after round, during one long stream.

Each round starts a processor and kills it with SIGKILL: mostly once the applied count passed a
random target (so the kills spread over the whole stream and land inside the batch cycle), and
every fourth round at a random time after start (during start-up: migration, membership, lease
takes). After every kill the committed state must be whole (``assert_batches_atomic``); after the
last, one more processor drains the log and the projections must equal the fold.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from processor.settings import Settings
from tests.faults.scale import size
from tests.faults.support import (
    FaultReport,
    applied_count,
    assert_batches_atomic,
    verify,
)
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    synthetic_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    rounds = size(5, 20)
    total = size(10_000, 50_000)
    bodies = synthetic_events(total, users=size(1_000, 5_000), seed=501)
    publish(settings, outgoing(bodies))
    rng = random.Random(501)
    targets = sorted(rng.sample(range(total // 20, total * 7 // 10), rounds))
    small = settings.with_overrides(batch_size=200, threads=2)
    during_startup = 0
    mid_stream = 0
    for round_number, target in enumerate(targets):
        log_path = tmp_path / f"round-{round_number:02d}.log"
        with processor_process(small, log_path) as process:
            started = time.monotonic()
            if round_number % 4 == 3:
                kill_at = started + rng.uniform(0.1, 0.6)
                while time.monotonic() < kill_at and process.poll() is None:
                    time.sleep(0.01)
                if applied_count(settings) == 0 or "lease taken" not in log_path.read_text():
                    during_startup += 1
            else:
                deadline = started + 120
                while applied_count(settings) < target:
                    assert process.poll() is None, "the processor exited on its own"
                    assert time.monotonic() < deadline, "no progress towards the kill target"
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.02))
            assert process.poll() is None, "the processor exited on its own"
            process.kill()
            process.wait()
        if applied_count(settings) < total:
            mid_stream += 1
        assert_batches_atomic(settings)
    with processor_process(settings, tmp_path / "final.log"):
        drain(settings)
    verify(
        settings,
        fault_report,
        scenario="SIGKILL at random moments",
        rounds=rounds,
        valid=bodies,
        notes=f"{mid_stream} kills mid-stream, {during_startup} during start-up",
    )
    assert mid_stream == rounds, "every kill should land before the stream was drained"
