"""``PartitionOwner``'s states: active, draining, stopped, released, driven from inside."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from processor.applying.batch import BatchResult
from processor.applying.errors import CheckpointConflict
from processor.ownership.owner import ApplyCounters, OwnerLinks, OwnerState, PartitionOwner
from processor.reading.errors import LogStartUnknown, LogTruncated, MissingRange
from processor.reading.log_record import LogRecord


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False
        self.cancelled = False

    def close(self) -> None:
        self.closed = True

    def cancel_safe(self, timeout: float) -> None:
        self.cancelled = True


class FakeFeed:
    def __init__(self, count: int = 0) -> None:
        self.records = [LogRecord(i, b"{}") for i in range(count)]
        self.error: Exception | None = None

    def take(self, limit: int) -> list[LogRecord]:
        batch, self.records = self.records[:limit], self.records[limit:]
        return batch

    def has_records(self) -> bool:
        return bool(self.records)


class FakeApplier:
    """Applies by counting; ``gate`` holds a batch in flight; ``error`` makes it fail."""

    partition = 5

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.error: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()

    def apply(self, _store: Any, records: Sequence[LogRecord]) -> BatchResult:
        self.inside.set()
        self.gate.wait(5)
        if self.error is not None:
            raise self.error
        self.batches.append([r.offset for r in records])
        return BatchResult(self.partition, records[0].offset, records[-1].offset, len(records))


class Links:
    def __init__(self) -> None:
        self.woken = 0
        self.subscribed: list[int] = []
        self.unsubscribed: list[int] = []
        self.released: list[PartitionOwner] = []
        self.stopped: list[Exception] = []
        self.counters = ApplyCounters()

    def as_links(self) -> OwnerLinks:
        return OwnerLinks(
            wake=lambda _owner: self._wake(),
            subscribe=lambda partition, _feed: self.subscribed.append(partition),
            unsubscribe=self.unsubscribed.append,
            released=self.released.append,
            stopped=lambda _owner, error: self.stopped.append(error),
            counters=self.counters,
        )

    def _wake(self) -> None:
        self.woken += 1


def make_owner(records: int = 0, batch_size: int = 2) -> tuple[PartitionOwner, Any, Any, Links]:
    links = Links()
    feed, applier, conn = FakeFeed(records), FakeApplier(), FakeConnection()
    owner = PartitionOwner(
        conn,  # type: ignore[arg-type]
        applier,  # type: ignore[arg-type]
        feed,  # type: ignore[arg-type]
        batch_size=batch_size,
        links=links.as_links(),
    )
    return owner, feed, applier, links


def test_an_active_owner_applies_a_batch_per_step_and_asks_again_while_records_wait() -> None:
    owner, _, applier, links = make_owner(records=5)
    owner.start()
    assert links.subscribed == [5]
    assert owner.step() is True
    assert owner.step() is True
    assert owner.step() is False
    assert applier.batches == [[0, 1], [2, 3], [4]]
    assert links.counters.applied == 5
    assert owner.state is OwnerState.ACTIVE


def test_only_an_active_owner_wakes_its_worker() -> None:
    owner, _, _, links = make_owner()
    owner.wake()
    owner.hand_off("test")
    owner.wake()
    assert links.woken == 1


def test_an_idle_owner_handed_off_is_released_at_once() -> None:
    owner, _, _, links = make_owner()
    owner.hand_off("rebalance")
    assert owner.state is OwnerState.RELEASED
    assert owner.conn.closed and links.released == [owner] and links.unsubscribed == [5]
    assert owner.step() is False


def test_an_owner_handed_off_mid_batch_commits_the_batch_then_releases() -> None:
    owner, _, applier, links = make_owner(records=4)
    applier.gate.clear()
    worker = threading.Thread(target=owner.step)
    worker.start()
    assert applier.inside.wait(5)
    owner.hand_off("rebalance")
    assert owner.state is OwnerState.DRAINING
    assert not owner.conn.closed, "the batch in flight must commit on its connection"
    applier.gate.set()
    worker.join(5)
    assert applier.batches == [[0, 1]]
    assert owner.state is OwnerState.RELEASED and owner.conn.closed
    assert links.released == [owner]
    assert owner.step() is False
    assert applier.batches == [[0, 1]], "no batch after the hand-off"


def test_a_fenced_owner_releases_its_partition(caplog: pytest.LogCaptureFixture) -> None:
    owner, _, applier, links = make_owner(records=1)
    applier.error = CheckpointConflict(5, 3, 9)
    with caplog.at_level(logging.WARNING):
        assert owner.step() is False
    assert owner.state is OwnerState.RELEASED and links.released == [owner]
    assert "fenced" in caplog.text


@pytest.mark.parametrize(
    "error",
    [psycopg.OperationalError("server closed the connection"), LogStartUnknown(5, 0, "no answer")],
)
def test_a_lost_connection_or_an_unchecked_log_start_releases(error: Exception) -> None:
    owner, feed, applier, links = make_owner(records=1)
    if isinstance(error, LogStartUnknown):
        feed.error = error
    else:
        applier.error = error
    owner.step()
    assert owner.state is OwnerState.RELEASED and links.released == [owner]


def test_a_truncated_log_stops_the_partition_and_keeps_the_lease() -> None:
    owner, feed, _, links = make_owner(records=1)
    feed.error = LogTruncated([MissingRange(5, 0, 99)])
    assert owner.step() is False
    assert owner.state is OwnerState.STOPPED
    assert links.stopped == [feed.error] and links.released == []
    assert not owner.conn.closed and links.unsubscribed == [5]
    owner.hand_off("its lease was lost")  # a stopped owner lets go when asked
    assert owner.state is OwnerState.RELEASED and owner.conn.closed


def test_an_unexpected_failure_is_logged_and_releases(caplog: pytest.LogCaptureFixture) -> None:
    owner, _, _, links = make_owner()
    owner.fail(KeyError("bug"))
    assert owner.state is OwnerState.RELEASED and links.released == [owner]
    assert "unexpected failure" in caplog.text


def test_an_unexpected_failure_of_a_batch_handed_off_mid_way_still_lets_go() -> None:
    # Regression: the failure skipped the close, and ``fail`` found the owner RELEASED already,
    # so the lease connection stayed open and the coordinator was never told.
    owner, _, applier, links = make_owner(records=2)
    applier.gate.clear()
    applier.error = KeyError("a bug")
    failures: list[Exception] = []

    def run() -> None:
        try:
            owner.step()
        except KeyError as exc:  # what the pool does with it
            failures.append(exc)
            owner.fail(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert applier.inside.wait(5)
    owner.hand_off("rebalance")
    applier.gate.set()
    worker.join(5)
    assert len(failures) == 1
    assert owner.state is OwnerState.RELEASED and owner.conn.closed
    assert links.released == [owner]


def test_abandon_cancels_a_batch_in_flight_then_closes() -> None:
    owner, _, applier, _ = make_owner(records=2)
    applier.gate.clear()
    worker = threading.Thread(target=owner.step)
    worker.start()
    assert applier.inside.wait(5)
    owner.abandon()
    assert owner.conn.cancelled and owner.conn.closed
    assert owner.state is OwnerState.RELEASED
    applier.gate.set()
    worker.join(5)


def test_abandon_of_an_idle_owner_only_closes() -> None:
    owner, _, _, _ = make_owner()
    owner.abandon()
    assert owner.conn.closed and not owner.conn.cancelled
