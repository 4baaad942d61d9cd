"""Where a batch is applied: the operations of one batch transaction, as a protocol.

``processor.applying.batch.apply_batch`` holds the rules of a batch (order, fencing, event ids,
the fold, dead letters) and calls these operations, in this order, inside one
``BatchStore.transaction()``. Two stores implement them: ``PostgresStore`` (the product: one
PostgreSQL transaction on the owner's connection) and ``InMemoryStore`` (dictionaries; the
reference the contract tests hold the PostgreSQL store to, in the style of pyeventsourcing's
shared persistence tests). A transaction that raises leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from processor.applying.decode import DeadLetter
from projections.event_ids import FirstUse
from projections.fold import Friendship, TopicMetrics
from schemas.events import Event

#: A topic row's key: ``(user_id, topic)``.
TopicKey = tuple[str, str]
#: A child's data key as the store keeps it: ``(wrapped key, id of the KEK that wrapped it)``.
WrappedKey = tuple[bytes, str]


@dataclass(frozen=True, slots=True)
class CheckpointAdvance:
    """How a committed batch moves its partition's checkpoint (offsets are stream offsets).

    Attributes:
        partition: the partition.
        expected: the committed offset the batch started from (compare-and-set).
        first_offset: the batch's first offset.
        last_offset: the batch's last offset: the new checkpoint.
        owner: who commits (``host:pid``, or ``replay <id>``).
        applied: events applied by the batch.
        dead_lettered: records dead-lettered by the batch.
        lease_epoch: the owner's fencing token; None for a replay shadow (no epoch, no log).
    """

    partition: int
    expected: int
    first_offset: int
    last_offset: int
    owner: str
    applied: int
    dead_lettered: int
    lease_epoch: int | None


class BatchTransaction(Protocol):
    """The operations of one batch, inside its transaction."""

    def lock_checkpoint(
        self,
        partition: int,
        expected: int,
        lease_epoch: int | None,
        fold_version: int | None = None,
    ) -> None:
        """Lock the partition's checkpoint for the transaction and fence a stale owner.

        Raises:
            CheckpointConflict: the checkpoint is not ``expected``, or another owner took the
                lease since (a newer epoch than ``lease_epoch``; None checks no epoch).
            FoldVersionChanged: the projections are at another fold version than
                ``fold_version`` (None checks none).
        """
        ...

    def erased(self, digests: Mapping[str, bytes]) -> set[str]:
        """The users among ``digests`` (user -> ``Keys.user_digest``) who were erased."""
        ...

    def record_event_ids(
        self,
        partition: int,
        first_seen: Mapping[str, tuple[Event, int]],
        encrypted: Set[int] = frozenset(),
    ) -> dict[str, FirstUse]:
        """Record the batch's event ids that are new to the store.

        Args:
            partition: the batch's partition.
            first_seen: the first ``(event, offset)`` of each lower-cased id in the batch.
            encrypted: offsets whose ``data`` was encrypted in the log.

        Returns:
            The recorded first use of every id that was not new (any partition), by
            lower-cased id.
        """
        ...

    def lock_rows(
        self, users: Sequence[str], topics: Sequence[TopicKey]
    ) -> tuple[dict[str, Friendship], dict[TopicKey, TopicMetrics]]:
        """Create the missing rows of ``users`` and ``topics`` (sorted), lock them all in key
        order, and return their current state."""
        ...

    def write_rows(
        self, friendships: Mapping[str, Friendship], topics: Mapping[TopicKey, TopicMetrics]
    ) -> None:
        """Write the folded state of every locked row (the write may be sent with
        ``advance_checkpoint``, or when the transaction ends: nothing reads it before; its
        errors, such as a ``DataError``, may then come from there)."""
        ...

    def write_dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        """Keep the batch's invalid records (a record already kept at its offset stays; sent
        like ``write_rows``)."""
        ...

    def advance_checkpoint(self, advance: CheckpointAdvance) -> None:
        """Move the checkpoint by compare-and-set and, for a live owner, log the commit.

        Raises:
            CheckpointConflict: the row no longer holds ``advance.expected`` and the epoch.
            psycopg.Error: a write sent with the advance failed (``write_rows``).
        """
        ...


class BatchStore(Protocol):
    """Something a batch can be applied to."""

    def data_keys(self, users: Sequence[str]) -> dict[str, WrappedKey]:
        """The wrapped data key of each of ``users`` that has one (read outside a batch's
        transaction: a key is written once, and an erasure is seen inside it)."""
        ...

    def transaction(self) -> AbstractContextManager[BatchTransaction]:
        """One batch transaction: committed when the block ends, rolled back if it raises."""
        ...
