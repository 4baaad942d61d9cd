"""One partition's batches applied in log order: transient errors retried, rejected records
isolated, the checkpoint tracked. Live owners and replay both apply through ``PartitionApplier``.

Two database failures need more than one attempt:

- *transient* ones (a deadlock, a serialization failure, a lock or statement timeout) roll the
  transaction back and leave the session alive: the same batch is tried again on the same
  connection, with jittered exponential back-off, up to ``tuning.BATCH_ATTEMPTS`` times;
- a *rejected value* (``DataError``: a value outside a column's range) fails the same way on
  every attempt, forever. The batch is then applied one record per transaction, and a record
  the database rejects on its own is dead-lettered with ``decode.rejected_reason``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import psycopg
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from processor import tuning
from processor.applying.batch import BatchResult, apply_batch
from processor.applying.decode import rejected_reason
from processor.applying.store import BatchStore
from processor.errors import loggable
from processor.privacy.keys import Keys
from processor.reading.log_record import LogRecord
from projections.fold import CONTRACT_RULES, FoldRules

log = logging.getLogger(__name__)

#: Database errors after which the same batch is tried again on the same connection (the
#: transaction was rolled back, the session and its lease live on).
TRANSIENT_ERRORS: Final = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
)

#: Applies records as one transaction, with offsets to dead-letter (``poisoned``) or None, and
#: advances the caller's checkpoint.
ApplyRecords = Callable[[Sequence[LogRecord], Mapping[int, str] | None], BatchResult]


def apply_isolating_rejects(
    apply: ApplyRecords,
    partition: int,
    records: Sequence[LogRecord],
    *,
    on_rejected_batch: Callable[[psycopg.errors.DataError], None] | None = None,
    on_rejected_record: Callable[[LogRecord, str], None] | None = None,
) -> BatchResult:
    """Apply ``records`` as one batch; when the database rejects it, isolate the culprit.

    Args:
        apply: applies records and advances the caller's checkpoint (see ``ApplyRecords``).
        partition: the records' partition.
        records: in log order.
        on_rejected_batch: told when the whole batch was rejected (before the one-by-one pass).
        on_rejected_record: told each record that is dead-lettered, with the reason.

    Returns:
        The counts of everything committed.

    Raises:
        Whatever ``apply`` raises other than ``psycopg.errors.DataError``.
    """
    try:
        return apply(records, None)
    except psycopg.errors.DataError as exc:
        if on_rejected_batch is not None:
            on_rejected_batch(exc)
    total = BatchResult(partition, records[0].offset, records[0].offset - 1)
    for record in records:
        try:
            result = apply([record], None)
        except psycopg.errors.DataError as exc:
            reason = rejected_reason(exc)
            if on_rejected_record is not None:
                on_rejected_record(record, reason)
            result = apply([record], {record.offset: reason})
        total.add(result)
    return total


class PartitionApplier:
    """Applies one partition's batches, in log order, from a known checkpoint.

    Not thread-safe: one batch at a time (the worker pool runs a partition on one thread).

    Args:
        partition: the partition.
        checkpoint: the committed offset to go on from (-1 = nothing yet).
        owner: written on the checkpoint (``host:pid``, or ``replay <id>``).
        keys: opens encrypted events and finds erased children (``apply_batch``).
        lease_epoch: the live owner's fencing token; None for a replay shadow.
        attempts: tries of one batch on transient errors (``tuning.BATCH_ATTEMPTS``).
        rules: the fold version to fold with (``projections.rules``).
        on_retry: called before each repeated attempt (the process's metrics).

    Attributes:
        checkpoint: the last committed offset, advanced by each batch.
    """

    def __init__(
        self,
        partition: int,
        checkpoint: int,
        owner: str,
        keys: Keys,
        *,
        lease_epoch: int | None = None,
        attempts: int = tuning.BATCH_ATTEMPTS,
        rules: FoldRules = CONTRACT_RULES,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.partition = partition
        self.checkpoint = checkpoint
        self.owner = owner
        self.keys = keys
        self.lease_epoch = lease_epoch
        self._attempts = attempts
        self.rules = rules
        self._on_retry = on_retry

    def apply(self, store: BatchStore, records: Sequence[LogRecord]) -> BatchResult:
        """Apply ``records`` (after the checkpoint, in log order) to ``store``.

        Returns:
            The counts of everything committed; ``checkpoint`` is then its last offset.

        Raises:
            CheckpointConflict: another owner took the partition (nothing of the failed
                transaction was applied).
            OffsetsOutOfOrder: the records do not follow the checkpoint.
            psycopg.Error: a database failure that is not transient, or a transient one that
                outlasted the attempts; the batch is not committed.
        """
        first, last = records[0].offset, records[-1].last_offset
        return apply_isolating_rejects(
            lambda batch, poisoned: self._apply_with_retries(store, batch, poisoned),
            self.partition,
            records,
            on_rejected_batch=lambda exc: log.warning(
                "partition %d: the database rejected a batch at offsets %d..%d (%s); applying "
                "its events one by one to dead-letter the culprit",
                self.partition,
                first,
                last,
                loggable(exc),
            ),
            on_rejected_record=lambda record, _reason: log.error(
                "partition %d: offset %d dead-lettered: the database rejected it (the dead "
                "letter's reason says why)",
                self.partition,
                record.offset,
            ),
        )

    def _apply_with_retries(
        self, store: BatchStore, records: Sequence[LogRecord], poisoned: Mapping[int, str] | None
    ) -> BatchResult:
        """One transaction, tried again on transient errors; advances the checkpoint."""
        for attempt in Retrying(
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(
                multiplier=tuning.BATCH_RETRY_WAIT_S, max=tuning.BATCH_RETRY_WAIT_MAX_S
            ),
            reraise=True,
        ):
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    if self._on_retry is not None:
                        self._on_retry()
                    log.warning(
                        "partition %d: retrying batch at offsets %d..%d (attempt %d)",
                        self.partition,
                        records[0].offset,
                        records[-1].offset,
                        number,
                    )
                result = apply_batch(
                    store,
                    self.partition,
                    records,
                    self.checkpoint,
                    self.owner,
                    keys=self.keys,
                    lease_epoch=self.lease_epoch,
                    poisoned=poisoned,
                    rules=self.rules,
                )
                self.checkpoint = result.last_offset
                return result
        raise AssertionError("tenacity re-raises the last error")  # pragma: no cover
