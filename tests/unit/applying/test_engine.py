"""``processor.applying.engine.WorkerPool``: the scheduling live owners and replay share."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from processor.applying.engine import WorkerPool


class CountingLane:
    """A lane that records overlapping runs, the threads that ran it and how often it ran."""

    def __init__(self, steps: int = 1, hold_s: float = 0.0) -> None:
        self.remaining = steps
        self.hold_s = hold_s
        self.running = 0
        self.overlaps = 0
        self.runs = 0
        self.contexts: list[object] = []
        self.failures: list[Exception] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def step(self, context: object) -> bool:
        with self._lock:
            self.running += 1
            self.overlaps += self.running > 1
            self.runs += 1
            self.contexts.append(context)
        self.started.set()
        self.release.wait(5)
        time.sleep(self.hold_s)
        with self._lock:
            self.running -= 1
            self.remaining -= 1
            return self.remaining > 0

    def fail(self, error: Exception) -> None:
        self.failures.append(error)


def pool_of(threads: int) -> WorkerPool[object]:
    pool: WorkerPool[object] = WorkerPool(threads, name="test", context_factory=object)
    pool.start()
    return pool


def test_a_lane_never_runs_on_two_threads_at_once_however_often_it_is_woken() -> None:
    pool = pool_of(4)
    lane = CountingLane(steps=1, hold_s=0.002)
    for _ in range(200):
        pool.wake(lane)
    assert pool.wait_idle(10)
    assert lane.overlaps == 0
    assert 1 <= lane.runs <= 200
    pool.stop(5)


def test_a_wake_during_a_run_runs_the_lane_again_after_it() -> None:
    pool = pool_of(2)
    lane = CountingLane(steps=1)  # its step never asks to run again by itself
    lane.release.clear()
    pool.wake(lane)
    assert lane.started.wait(5)
    pool.wake(lane)  # while it runs: must not be lost
    lane.release.set()
    assert pool.wait_idle(5)
    assert lane.runs == 2
    pool.stop(5)


def test_a_lane_that_has_more_ready_runs_until_it_has_none() -> None:
    pool = pool_of(2)
    lane = CountingLane(steps=5)
    pool.wake(lane)
    assert pool.wait_idle(5)
    assert (lane.runs, lane.remaining) == (5, 0)
    pool.stop(5)


def test_lanes_run_in_parallel_on_different_threads() -> None:
    pool = pool_of(3)
    lanes = [CountingLane() for _ in range(3)]
    for lane in lanes:
        lane.release.clear()
        pool.wake(lane)
    assert all(lane.started.wait(5) for lane in lanes)  # all three started before any ended
    for lane in lanes:
        lane.release.set()
    assert pool.wait_idle(5)
    assert len({id(lane.contexts[0]) for lane in lanes}) == 3
    pool.stop(5)


def test_a_failing_lane_is_told_and_the_others_go_on() -> None:
    class Broken(CountingLane):
        def step(self, context: object) -> bool:
            raise RuntimeError("boom")

    pool = pool_of(1)
    broken, healthy = Broken(), CountingLane(steps=3)
    pool.wake(broken)
    pool.wake(healthy)
    assert pool.wait_idle(5)
    assert [str(e) for e in broken.failures] == ["boom"]
    assert healthy.runs == 3
    pool.stop(5)


def test_each_worker_has_its_own_context_closed_when_the_pool_stops() -> None:
    made: list[int] = []
    closed: list[int] = []
    counter = iter(range(100))
    lock = threading.Lock()

    def make() -> int:
        with lock:
            value = next(counter)
            made.append(value)
            return value

    pool: WorkerPool[int] = WorkerPool(
        3, name="ctx", context_factory=make, close_context=closed.append
    )
    pool.start()
    lane = CountingLane(steps=6)
    pool.wake(lane)
    assert pool.wait_idle(5)
    assert pool.stop(5) == []
    assert sorted(made) == sorted(closed) == [0, 1, 2]
    assert set(Counter(lane.contexts)) <= set(made)


def test_stop_lets_the_step_in_flight_finish_and_drops_the_queued() -> None:
    pool = pool_of(1)
    busy, queued = CountingLane(), CountingLane()
    busy.release.clear()
    pool.wake(busy)
    assert busy.started.wait(5)
    pool.wake(queued)
    stopper = threading.Thread(target=pool.stop, args=(5,))
    stopper.start()
    time.sleep(0.05)
    busy.release.set()
    stopper.join(5)
    assert (busy.runs, queued.runs) == (1, 0)
    assert pool.wait_idle(1)
    pool.wake(queued)  # a stopped pool takes no work
    assert queued.runs == 0


def test_a_step_that_outlives_the_stop_timeout_is_named() -> None:
    pool = pool_of(1)
    lane = CountingLane()
    lane.release.clear()
    pool.wake(lane)
    assert lane.started.wait(5)
    assert pool.stop(0.05) == ["test-0"]
    lane.release.set()


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        WorkerPool(0, name="none", context_factory=object)
