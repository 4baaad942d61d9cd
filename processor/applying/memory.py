"""An in-memory ``BatchStore``: the batch rules of ``apply_batch`` on dictionaries.

It keeps what the PostgreSQL store keeps (checkpoints with their lease epochs and counters,
the commit log, applied event ids, projection rows, dead letters) and behaves the same under
``apply_batch``: a transaction collects its writes and applies them only when it ends without
raising, and one transaction runs at a time (a lock stands for the row locks). The contract
tests run one suite against both stores, so the two cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from processor.applying.decode import DeadLetter
from processor.applying.errors import CheckpointConflict, CheckpointMissing, FoldVersionChanged
from processor.applying.store import BatchTransaction, CheckpointAdvance, TopicKey, WrappedKey
from processor.privacy.opening import without_erased_key
from projections.event_ids import ERASED_USER, FirstUse
from projections.fold import Friendship, TopicMetrics
from schemas.events import Event


@dataclass
class CheckpointRow:
    """One partition's checkpoint (as the ``checkpoints`` table holds it)."""

    committed_offset: int = -1
    owner: str | None = None
    lease_epoch: int = 0
    applied_count: int = 0
    dead_lettered_count: int = 0
    fold_version: int = 1


@dataclass
class MemoryState:
    """Everything an ``InMemoryStore`` keeps (replaced whole when a transaction rolls back).

    Attributes:
        checkpoints: by partition.
        commit_log: each live commit (``CheckpointAdvance`` with a lease epoch), in order.
        applied_events: the first use of each event id, by lower-cased id.
        encrypted_events: lower-cased ids of the applied events that were encrypted in the log.
        data_keys: each child's wrapped data key.
        erased: the ``Keys.user_digest`` of every erased child.
        erased_event_ids: the first use of each id an erased child had used, by lower-cased
            id, with ``ERASED_USER`` as its user.
        friendships: by user id.
        topics: by ``(user_id, topic)``.
        dead_letters: by ``(partition, offset)``.
    """

    checkpoints: dict[int, CheckpointRow] = field(default_factory=dict)
    commit_log: list[CheckpointAdvance] = field(default_factory=list)
    applied_events: dict[str, FirstUse] = field(default_factory=dict)
    encrypted_events: set[str] = field(default_factory=set)
    data_keys: dict[str, WrappedKey] = field(default_factory=dict)
    erased: set[bytes] = field(default_factory=set)
    erased_event_ids: dict[str, FirstUse] = field(default_factory=dict)
    friendships: dict[str, Friendship] = field(default_factory=dict)
    topics: dict[TopicKey, TopicMetrics] = field(default_factory=dict)
    dead_letters: dict[tuple[int, int], DeadLetter] = field(default_factory=dict)


class InMemoryStore:
    """A ``BatchStore`` in memory (see the module doc).

    Args:
        partitions: checkpoint rows to create, 0..partitions-1 at offset -1.
    """

    def __init__(self, partitions: int) -> None:
        self.state = MemoryState()
        self.state.checkpoints = {p: CheckpointRow() for p in range(partitions)}
        self._lock = threading.Lock()

    def data_keys(self, users: Sequence[str]) -> dict[str, WrappedKey]:
        """The wrapped data keys of ``users`` (``BatchStore.data_keys``)."""
        with self._lock:
            return {u: self.state.data_keys[u] for u in users if u in self.state.data_keys}

    @contextmanager
    def transaction(self) -> Iterator[BatchTransaction]:
        """One batch transaction: its writes are kept only if the block ends without raising."""
        with self._lock:
            tx = _MemoryTransaction(self.state)
            yield tx
            tx.commit()

    def erase(self, user_id: str, digest: bytes) -> None:
        """Forget ``user_id`` as ``privacy.erasure.erase_user`` does: rows, event ids, dead
        letters and data key gone, counters taken down, the digest and the child's event ids
        recorded, the child's id taken out of other children's misrouted dead letters."""
        with self._lock:
            state = self.state
            state.erased.add(digest)
            state.data_keys.pop(user_id, None)
            state.friendships.pop(user_id, None)
            for topic_key in [k for k in state.topics if k[0] == user_id]:
                del state.topics[topic_key]
            for event_id, first in list(state.applied_events.items()):
                if first.user_id == user_id:
                    del state.applied_events[event_id]
                    state.erased_event_ids[event_id] = replace(first, user_id=ERASED_USER)
                    state.encrypted_events.discard(event_id)
                    state.checkpoints[first.partition].applied_count -= 1
            for position, letter in list(state.dead_letters.items()):
                if letter.user_id == user_id:
                    del state.dead_letters[position]
                    state.checkpoints[letter.partition].dead_lettered_count -= 1
                else:
                    state.dead_letters[position] = without_erased_key(letter, {user_id})

    def begin_lease_epoch(self, partition: int, owner: str) -> tuple[int, int]:
        """A new lease epoch for ``partition`` (``checkpoint.begin_lease_epoch``).

        Returns:
            ``(committed offset, lease epoch)``.

        Raises:
            CheckpointMissing: the partition has no checkpoint.
        """
        with self._lock:
            row = self.state.checkpoints.get(partition)
            if row is None:
                raise CheckpointMissing(f"partition {partition} has no checkpoint row")
            row.lease_epoch += 1
            row.owner = owner
            return row.committed_offset, row.lease_epoch


class _MemoryTransaction:
    """``BatchTransaction`` on a ``MemoryState``: reads the state, collects the writes, and
    ``commit`` applies them (the store's lock is held throughout)."""

    def __init__(self, state: MemoryState) -> None:
        self._state = state
        self._applied: dict[str, FirstUse] = {}
        self._encrypted: set[str] = set()
        self._friendships: dict[str, Friendship] = {}
        self._topics: dict[TopicKey, TopicMetrics] = {}
        self._dead: dict[tuple[int, int], DeadLetter] = {}
        self._advance: CheckpointAdvance | None = None

    def lock_checkpoint(
        self,
        partition: int,
        expected: int,
        lease_epoch: int | None,
        fold_version: int | None = None,
    ) -> None:
        row = self._state.checkpoints.get(partition)
        found = None if row is None else row.committed_offset
        if found != expected:
            raise CheckpointConflict(partition, expected, found)
        if lease_epoch is not None and row is not None and row.lease_epoch != lease_epoch:
            raise CheckpointConflict(
                partition,
                expected,
                found,
                f" (lease epoch {row.lease_epoch}, this owner holds {lease_epoch})",
            )
        if fold_version is not None and row is not None and row.fold_version != fold_version:
            raise FoldVersionChanged(partition, expected, row.fold_version, fold_version)

    def erased(self, digests: Mapping[str, bytes]) -> set[str]:
        return {user for user, digest in digests.items() if digest in self._state.erased}

    def record_event_ids(
        self,
        partition: int,
        first_seen: Mapping[str, tuple[Event, int]],
        encrypted: Set[int] = frozenset(),
    ) -> dict[str, FirstUse]:
        applied, erased = self._state.applied_events, self._state.erased_event_ids
        earlier = {key: applied[key] for key in first_seen if key in applied}
        earlier.update({key: erased[key] for key in first_seen if key in erased})
        for key, (event, offset) in first_seen.items():
            if key not in earlier:
                self._applied[key] = FirstUse(event.user_id, partition, offset)
                if offset in encrypted:
                    self._encrypted.add(key)
        return earlier

    def lock_rows(
        self, users: Sequence[str], topics: Sequence[TopicKey]
    ) -> tuple[dict[str, Friendship], dict[TopicKey, TopicMetrics]]:
        state = self._state
        friendships = {user: state.friendships.get(user, Friendship()) for user in users}
        metrics = {key: state.topics.get(key, TopicMetrics()) for key in topics}
        return friendships, metrics

    def write_rows(
        self, friendships: Mapping[str, Friendship], topics: Mapping[TopicKey, TopicMetrics]
    ) -> None:
        self._friendships.update(friendships)
        self._topics.update(topics)

    def write_dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        for letter in dead:
            key = (letter.partition, letter.offset)
            if key not in self._state.dead_letters:
                self._dead.setdefault(key, letter)

    def advance_checkpoint(self, advance: CheckpointAdvance) -> None:
        row = self._state.checkpoints.get(advance.partition)
        stale_epoch = advance.lease_epoch is not None and (
            row is None or row.lease_epoch != advance.lease_epoch
        )
        if row is None or row.committed_offset != advance.expected or stale_epoch:
            raise CheckpointConflict(advance.partition, advance.expected, None)
        self._advance = advance

    def commit(self) -> None:
        """Apply the collected writes (the transaction ended without raising)."""
        state = self._state
        state.applied_events.update(self._applied)
        state.encrypted_events.update(self._encrypted)
        state.friendships.update(self._friendships)
        state.topics.update(self._topics)
        state.dead_letters.update(self._dead)
        advance = self._advance
        if advance is None:
            return
        row = state.checkpoints[advance.partition]
        row.committed_offset = advance.last_offset
        row.owner = advance.owner
        row.applied_count += advance.applied
        row.dead_lettered_count += advance.dead_lettered
        if advance.lease_epoch is not None:
            state.commit_log.append(advance)
