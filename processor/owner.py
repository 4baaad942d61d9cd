"""A partition owner: the lease connection, the in-memory checkpoint and the feed of one partition.

An owner exists only while its process holds the partition's lease. A worker thread applies the
owner's next batch with ``projections.batch.apply_batch``; only one worker at a time runs an owner
(``scheduled`` flag), which keeps the partition's log order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from processor.feed import PartitionFeed
from projections.batch import BatchResult, LogRecord, apply_batch, apply_isolating_rejects

log = logging.getLogger(__name__)

#: Database errors after which the same batch is retried on the same connection (the lease is
#: still held: the transaction was rolled back, the session lives on).
TRANSIENT_ERRORS: Final = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
)
#: Attempts of one batch before the owner gives the partition up.
BATCH_ATTEMPTS: Final = 5


@dataclass
class OwnerStats:
    """Counts of what an owner committed (events, batches)."""

    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0


class PartitionOwner:
    """Owns one partition while holding its lease on ``conn``.

    Args:
        partition: the partition number.
        conn: the autocommit connection that holds the lease; batches commit on it.
        checkpoint: the committed offset read after the lease was taken.
        member: this process's owner name (``host:pid``), written on each checkpoint.
        batch_size: most records per transaction.
        lease_epoch: the fencing token taken with the lease; every batch commits under it.
    """

    def __init__(
        self,
        partition: int,
        conn: psycopg.Connection,
        *,
        checkpoint: int,
        member: str,
        batch_size: int,
        lease_epoch: int,
    ) -> None:
        self.partition = partition
        self.conn = conn
        self.checkpoint = checkpoint
        self.member = member
        self.batch_size = batch_size
        self.lease_epoch = lease_epoch
        self.feed: PartitionFeed | None = None
        self.stats = OwnerStats()
        self.lock = threading.Lock()
        self.scheduled = False
        self.released = False
        #: Set when the partition is being handed off: no new batch starts, then it is released.
        self.draining = False
        self.stopped_error: Exception | None = None

    def apply_next_batch(self) -> BatchResult | None:
        """Take the next records from the feed and apply them in one transaction.

        Returns:
            The committed batch, or None when there was nothing to apply.

        Raises:
            projections.batch.CheckpointConflict: another owner committed (this one is fenced).
            psycopg.OperationalError: the connection, and with it the lease, is gone.
            Exception: the feed failed (for example ``LogTruncated``).
        """
        feed = self.feed
        if feed is None:
            return None
        if feed.error is not None:
            raise feed.error
        records = feed.take(self.batch_size)
        if not records:
            return None
        return apply_isolating_rejects(
            self._apply,
            self.partition,
            records,
            on_rejected_batch=lambda exc: log.warning(
                "partition %d: the database rejected a batch at offsets %d..%d (%s); applying "
                "its events one by one to dead-letter the culprit",
                self.partition,
                records[0].offset,
                records[-1].last_offset,
                exc,
            ),
            on_rejected_record=lambda record, reason: log.error(
                "partition %d: offset %d dead-lettered: %s", self.partition, record.offset, reason
            ),
        )

    def _apply(
        self, records: Sequence[LogRecord], poisoned: Mapping[int, str] | None = None
    ) -> BatchResult:
        """One transaction, retried on transient database errors; advances the checkpoint."""
        result: BatchResult | None = None
        for attempt in Retrying(
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            stop=stop_after_attempt(BATCH_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        ):
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    log.warning(
                        "partition %d: retrying batch at offsets %d..%d (attempt %d)",
                        self.partition,
                        records[0].offset,
                        records[-1].offset,
                        number,
                    )
                result = apply_batch(
                    self.conn,
                    self.partition,
                    records,
                    self.checkpoint,
                    self.member,
                    lease_epoch=self.lease_epoch,
                    poisoned=poisoned,
                )
        assert result is not None
        self.checkpoint = result.last_offset
        self.stats.applied += result.applied
        self.stats.duplicates += result.duplicates
        self.stats.dead_lettered += result.dead_lettered
        self.stats.batches += 1
        return result
