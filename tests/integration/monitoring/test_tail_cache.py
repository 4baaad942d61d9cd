"""``TailCache`` against the real broker: empty streams, tails that move, a subset of partitions,
and a broker that cannot be reached."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from processor.reading.probes import read_tail_offsets
from processor.reading.tails import TailCache
from processor.settings import Settings
from tests.integration.support import outgoing, publish, synthetic_events

pytestmark = pytest.mark.integration


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_tails_follow_the_log_on_one_connection(settings: Settings) -> None:
    cache = TailCache(settings, refresh_s=0.2)
    cache.start()
    try:
        assert cache.wait_first(15)
        first = cache.snapshot()
        assert first.offsets == {p: -1 for p in range(16)}  # empty streams
        assert first.read_at is not None and first.error is None
        publish(settings, outgoing(synthetic_events(300, users=50, seed=3)))
        expected = asyncio.run(read_tail_offsets(settings))
        wait_until(lambda: cache.snapshot().offsets == expected, "the cache to see the tails")
        rounds = cache.rounds
        wait_until(lambda: cache.rounds >= rounds + 3, "three more rounds")
        age = cache.snapshot().age_s()
        assert age is not None and age < 5
        assert cache.connections_opened == 1
    finally:
        cache.stop()


def test_only_the_chosen_partitions_are_read(settings: Settings) -> None:
    cache = TailCache(settings, lambda: [3, 5], refresh_s=0.2)
    cache.start()
    try:
        assert cache.wait_first(15)
        assert set(cache.snapshot().offsets) == {3, 5}
        assert cache.tail(4) is None
    finally:
        cache.stop()


def test_a_broker_that_refuses_leaves_no_tails_and_says_why(settings: Settings) -> None:
    missing = settings.with_overrides(
        amqp_url=settings.amqp_url.rsplit("/", 1)[0] + f"/fs_test_missing_{uuid.uuid4().hex[:8]}"
    )
    cache = TailCache(missing, refresh_s=0.2)
    cache.start()
    try:
        assert not cache.wait_first(2)
        wait_until(lambda: cache.snapshot().error is not None, "the failure recorded")
        assert cache.snapshot().read_at is None and cache.snapshot().age_s() is None
    finally:
        cache.stop()
