"""The rules of a batch, as one contract test suite run against every ``BatchStore``.

In the style of pyeventsourcing's shared persistence tests: ``BatchRules`` holds the cases and
reads the outcome through a small ``Backend``; ``tests/unit/applying/test_batch_rules.py`` runs
it against the in-memory store and ``tests/integration/applying/test_batch_rules.py`` against
PostgreSQL. Expected projections come from ``testkit.reference.reference_fold``, written apart
from the product's fold.
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.applying.batch import BatchResult, apply_batch
from processor.applying.errors import CheckpointConflict, FoldVersionChanged, OffsetsOutOfOrder
from processor.applying.store import BatchStore, BatchTransaction
from processor.privacy.crypto import encrypt_event
from processor.privacy.keys import Keys
from processor.reading.log_record import LogRecord
from projections.fold import CONTRACT_RULES, FoldRules
from testkit.reference import reference_fold
from testkit.rule_change import SAD_COSTS_TWO
from tests.strategies import ADJUSTED, COMPLETED, TURN_RECORDED, make_event, valid_event_logs

PARTITIONS = 4


class Backend(ABC):
    """One store under test, and how to read back what it keeps."""

    store: BatchStore
    keys: Keys

    @abstractmethod
    def reset(self) -> None:
        """Forget everything: empty tables, checkpoints back at -1, epochs at 0."""

    @abstractmethod
    def add_data_key(self, user_id: str) -> bytes:
        """Give ``user_id`` a data key (as ingest does) and return it."""

    @abstractmethod
    def erase(self, user_id: str) -> None:
        """Erase the child as ``just erase`` does."""

    @abstractmethod
    def is_encrypted(self, event_id: str) -> bool:
        """Whether the applied event's ``data`` was encrypted in the log."""

    @abstractmethod
    def rewind(self, partition: int) -> None:
        """Set the partition's checkpoint back to -1, as an operator resetting it would."""

    @abstractmethod
    def set_fold_version(self, partition: int, version: int) -> None:
        """Record ``version`` on the partition's checkpoint, as a swap of a rebuild does."""

    @abstractmethod
    def begin_lease(self, partition: int, owner: str) -> tuple[int, int]:
        """A new lease epoch: ``(committed offset, epoch)``."""

    @abstractmethod
    def projections(self) -> dict[str, dict[str, Any]]:
        """Every user's projection in ``reference_fold``'s shape."""

    @abstractmethod
    def dead_letters(self) -> dict[tuple[int, int], tuple[str | None, str, str, bytes]]:
        """``{(partition, offset): (event_id, field, reason, raw)}``."""

    @abstractmethod
    def checkpoint(self, partition: int) -> tuple[int, int, int]:
        """``(committed offset, applied count, dead-lettered count)``."""

    @abstractmethod
    def commit_log(self) -> list[tuple[int, int, int, str, int]]:
        """``(partition, first offset, last offset, owner, epoch)`` of each live commit."""

    @abstractmethod
    def applied_event(self, event_id: str) -> tuple[str, int, int] | None:
        """``(user_id, partition, offset)`` of an applied event id, None when unknown."""


def turn(user: str, sentiment: str = "happy", *, event_id: str | None = None) -> bytes:
    data = {"conversation_id": "c1", "topic": "space", "speaker": "child", "sentiment": sentiment}
    return make_event(TURN_RECORDED, user, "2024-03-01T10:00:00Z", data, event_id)


def adjusted(user: str, delta: int, *, event_id: str | None = None) -> bytes:
    data = {"delta": delta, "reason": "a test adjustment"}
    return make_event(ADJUSTED, user, "2024-03-01T11:00:00+02:00", data, event_id)


def completed(user: str, rating: str = "excellent") -> bytes:
    data = {
        "conversation_id": "c1",
        "topic": "music_2",
        "turns": 4,
        "duration_s": 12.5,
        "rating": rating,
    }
    return make_event(COMPLETED, user, "2024-03-02T09:30:00-05:00", data)


def _flip_a_ciphertext_bit(body: bytes) -> bytes:
    event = json.loads(body)
    sealed = bytearray(base64.b64decode(event["data"]["ciphertext"]))
    sealed[0] ^= 1
    event["data"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    return json.dumps(event).encode()


def records(*bodies: bytes, start: int = 0) -> list[LogRecord]:
    return [LogRecord(start + i, body) for i, body in enumerate(bodies)]


class Injected(Exception):
    """A failure injected into a store's transaction."""


class _FaultyTransaction:
    """Delegates to a real transaction; ``at`` fails (``Injected``) or, for
    ``advance_checkpoint`` with ``shift``, is called with a wrong expected offset."""

    def __init__(self, tx: BatchTransaction, at: str, shift: int) -> None:
        self._tx, self._at, self._shift = tx, at, shift

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._tx, name)
        if name != self._at:
            return method
        if self._shift:
            return lambda advance: method(replace(advance, expected=advance.expected + self._shift))

        def fail(*_args: Any) -> None:
            raise Injected(name)

        return fail


class FaultyStore:
    """A store whose transactions fail at one step (after earlier steps wrote)."""

    def __init__(self, store: BatchStore, at: str, shift: int = 0) -> None:
        self._store, self._at, self._shift = store, at, shift

    @contextmanager
    def transaction(self) -> Iterator[BatchTransaction]:
        with self._store.transaction() as tx:
            yield _FaultyTransaction(tx, self._at, self._shift)  # type: ignore[misc]


class BatchRules(ABC):
    """The rules every store obeys under ``apply_batch`` (subclass and give ``backend``)."""

    #: Hypothesis examples per property (the database store runs fewer).
    examples: ClassVar[int] = 60

    @pytest.fixture
    @abstractmethod
    def backend(self) -> Iterator[Backend]:
        """A fresh, empty store with checkpoints for ``PARTITIONS`` partitions."""

    def apply(
        self,
        backend: Backend,
        partition: int,
        batch: Sequence[LogRecord],
        checkpoint: int,
        *,
        epoch: int | None = None,
        poisoned: dict[int, str] | None = None,
        rules: FoldRules = CONTRACT_RULES,
    ) -> BatchResult:
        return apply_batch(
            backend.store,
            partition,
            batch,
            checkpoint,
            "owner-a",
            keys=backend.keys,
            lease_epoch=epoch,
            poisoned=poisoned,
            rules=rules,
        )

    # -- effects -------------------------------------------------------------------------------

    def test_valid_events_fold_as_the_reference_fold(self, backend: Backend) -> None:
        bodies = [turn("alice"), turn("alice", "angry"), completed("alice"), adjusted("bob", 30)]
        result = self.apply(backend, 0, records(*bodies), -1)
        assert (result.applied, result.duplicates, result.dead_lettered) == (4, 0, 0)
        assert backend.projections() == reference_fold(bodies)
        assert backend.checkpoint(0) == (3, 4, 0)

    def test_clamping_makes_order_matter_within_and_across_batches(self, backend: Backend) -> None:
        self.apply(backend, 0, records(adjusted("up-down", -5), adjusted("up-down", 10)), -1)
        self.apply(backend, 1, records(adjusted("down-up", 10)), -1)
        self.apply(backend, 1, records(adjusted("down-up", -5), start=1), 0)
        projections = backend.projections()
        assert (projections["up-down"]["score"], projections["down-up"]["score"]) == (10, 5)

    def test_offsets_may_have_holes_and_the_checkpoint_is_the_last(self, backend: Backend) -> None:
        batch = [LogRecord(0, turn("a")), LogRecord(2, turn("a")), LogRecord(7, turn("a"))]
        self.apply(backend, 2, batch, -1)
        assert backend.checkpoint(2)[0] == 7

    # -- event ids -------------------------------------------------------------------------------

    def test_a_repeated_event_id_changes_nothing_within_or_across_batches(
        self, backend: Backend
    ) -> None:
        first = turn("alice", event_id=str(uuid.uuid4()))
        repeat = first.replace(b"happy", b"angry")  # same id: the repeat is not even read
        result = self.apply(backend, 0, records(first, first), -1)
        later = self.apply(backend, 0, records(repeat, start=2), 1)
        assert (result.applied, result.duplicates, later.applied, later.duplicates) == (1, 1, 0, 1)
        assert backend.projections() == reference_fold([first])
        assert backend.checkpoint(0) == (2, 1, 0)

    def test_an_id_reused_for_another_user_is_dead_lettered_naming_where_it_was_first_used(
        self, backend: Backend
    ) -> None:
        event_id = str(uuid.uuid4())
        alice, bob = turn("alice", event_id=event_id), turn("bob", event_id=event_id)
        result = self.apply(backend, 0, records(alice, bob), -1)
        assert (result.applied, result.dead_lettered) == (1, 1)
        letter_id, field, reason, raw = backend.dead_letters()[(0, 1)]
        assert (letter_id, field, raw) == (event_id, "event_id", bob)
        assert "partition 0, offset 0" in reason
        assert "alice" not in reason, "a row of bob's must not carry another child's id"
        assert backend.applied_event(event_id) == ("alice", 0, 0)

    def test_event_ids_compare_as_uuids_whatever_their_case(self, backend: Backend) -> None:
        event_id = str(uuid.uuid4())
        self.apply(backend, 0, records(turn("alice", event_id=event_id)), -1)
        result = self.apply(
            backend, 0, records(turn("alice", event_id=event_id.upper()), start=1), 0
        )
        assert (result.applied, result.duplicates) == (0, 1)

    # -- dead letters ----------------------------------------------------------------------------

    def test_invalid_records_are_dead_lettered_and_the_checkpoint_moves_past_them(
        self, backend: Backend
    ) -> None:
        naive = turn("alice").replace(b"10:00:00Z", b"10:00:00")
        bodies = [b"not json", naive, turn("alice"), b'{"event_id": "x"}']
        result = self.apply(backend, 3, records(*bodies), -1)
        assert (result.applied, result.dead_lettered) == (1, 3)
        dead = backend.dead_letters()
        assert set(dead) == {(3, 0), (3, 1), (3, 3)}
        assert dead[(3, 1)][1] == "occurred_at" and dead[(3, 1)][3] == naive
        assert dead[(3, 3)][0] == "x"
        assert backend.checkpoint(3) == (3, 1, 3)

    def test_an_unreadable_entry_is_one_dead_letter_for_all_its_offsets(
        self, backend: Backend
    ) -> None:
        entry = LogRecord(0, b"\x78raw", "unreadable stream entry: zstd", records=3)
        result = self.apply(backend, 1, [entry, LogRecord(3, turn("kid"))], -1)
        assert (result.applied, result.dead_lettered, result.last_offset) == (1, 1, 3)
        assert backend.dead_letters()[(1, 0)][2] == "unreadable stream entry: zstd"
        assert backend.checkpoint(1) == (3, 1, 1)

    def test_an_event_routed_by_another_key_is_dead_lettered_naming_both(
        self, backend: Backend
    ) -> None:
        body = turn("alice")
        result = self.apply(backend, 0, [LogRecord(0, body, routing_key="mallory")], -1)
        assert (result.applied, result.dead_lettered) == (0, 1)
        _, field, reason, _ = backend.dead_letters()[(0, 0)]
        assert field == "user_id" and "'mallory'" in reason and "'alice'" in reason
        assert backend.projections() == {}

    def test_an_erased_childs_id_as_routing_key_is_taken_out_of_the_reason(
        self, backend: Backend
    ) -> None:
        self.apply(backend, 0, [LogRecord(0, turn("alice"), routing_key="mallory")], -1)
        backend.erase("mallory")
        later = LogRecord(1, turn("alice"), routing_key="mallory")
        result = self.apply(backend, 0, [later], 0)
        assert (result.dead_lettered, result.erased_skipped) == (1, 0), "alice's letter stays"
        letters = backend.dead_letters()
        assert set(letters) == {(0, 0), (0, 1)}
        for _, field, reason, _ in letters.values():
            assert field == "user_id" and "mallory" not in reason
            assert "routing key (an erased child's id) is not the user_id 'alice'" in reason

    def test_versions_1_and_2_apply_alike_and_an_unknown_newer_one_is_a_dead_letter(
        self, backend: Backend
    ) -> None:
        v2 = json.loads(turn("alice", "sad"))
        v2["version"] = 2
        v2["data"]["sentiment"] = {"label": "sad", "confidence": 0.4}
        v3 = {**json.loads(turn("alice")), "version": 3}
        bodies = [turn("alice", "happy"), json.dumps(v2).encode(), json.dumps(v3).encode()]
        result = self.apply(backend, 0, records(*bodies), -1)
        assert (result.applied, result.dead_lettered) == (2, 1)
        assert backend.projections() == reference_fold(bodies[:2])
        _, field, reason, raw = backend.dead_letters()[(0, 2)]
        assert field == "version" and raw == bodies[2]
        assert "version 3 of conversation.turn_recorded is newer than this processor" in reason

    def test_poisoned_offsets_are_dead_lettered_with_their_reason(self, backend: Backend) -> None:
        batch = records(turn("alice"), turn("poison"))
        result = self.apply(backend, 0, batch, -1, poisoned={1: "the database rejected this event"})
        assert (result.applied, result.dead_lettered) == (1, 1)
        assert backend.dead_letters()[(0, 1)][2] == "the database rejected this event"
        assert set(backend.projections()) == {"alice"}

    # -- fencing and order -----------------------------------------------------------------------

    def test_a_batch_from_another_checkpoint_is_refused_whole(self, backend: Backend) -> None:
        self.apply(backend, 0, records(turn("alice")), -1)
        with pytest.raises(CheckpointConflict):
            self.apply(backend, 0, records(turn("alice"), adjusted("bob", 9), start=1), -1)
        assert backend.checkpoint(0) == (0, 1, 0)
        assert set(backend.projections()) == {"alice"}

    def test_a_superseded_lease_epoch_commits_nothing(self, backend: Backend) -> None:
        checkpoint, old = backend.begin_lease(2, "owner-a")
        self.apply(backend, 2, records(turn("alice")), checkpoint, epoch=old)
        _, new = backend.begin_lease(2, "owner-b")
        with pytest.raises(CheckpointConflict):
            self.apply(backend, 2, records(adjusted("alice", 50), start=1), 0, epoch=old)
        assert backend.projections()["alice"]["score"] == 1  # +1 from the turn, not +50
        assert new == old + 1
        assert backend.checkpoint(2) == (0, 1, 0)

    def test_a_batch_of_another_fold_version_than_the_checkpoints_commits_nothing(
        self, backend: Backend
    ) -> None:
        self.apply(backend, 3, records(turn("alice", "sad")), -1)
        backend.set_fold_version(3, SAD_COSTS_TWO.version)  # a rebuild with the new rule is live
        with pytest.raises(FoldVersionChanged) as fenced:
            self.apply(backend, 3, records(turn("alice", "happy"), start=1), 0)
        assert (fenced.value.live_version, fenced.value.batch_version) == (2, 1)
        assert backend.checkpoint(3) == (0, 1, 0)
        result = self.apply(
            backend, 3, records(turn("bob", "sad"), start=1), 0, rules=SAD_COSTS_TWO
        )
        assert result.applied == 1
        assert backend.projections()["bob"]["score"] == 0  # -2, clamped
        assert backend.projections()["alice"]["score"] == 0

    def test_the_batch_folds_with_its_rules(self, backend: Backend) -> None:
        self.apply(backend, 0, records(adjusted("alice", 10), turn("alice", "sad")), -1)
        backend.set_fold_version(1, SAD_COSTS_TWO.version)
        bodies = [adjusted("bob", 10), turn("bob", "sad")]
        self.apply(backend, 1, records(*bodies), -1, rules=SAD_COSTS_TWO)
        scores = {user: p["score"] for user, p in backend.projections().items()}
        assert scores == {"alice": 9, "bob": 8}

    def test_live_commits_are_logged_with_their_epoch_and_replay_commits_are_not(
        self, backend: Backend
    ) -> None:
        _, epoch = backend.begin_lease(1, "owner-a")
        self.apply(backend, 1, records(turn("a"), turn("b")), -1, epoch=epoch)
        self.apply(backend, 0, records(turn("c")), -1)
        assert backend.commit_log() == [(1, 0, 1, "owner-a", epoch)]

    @pytest.mark.parametrize("offsets", [[0, 0], [3, 2], [-1]], ids=["repeat", "back", "at"])
    def test_offsets_that_do_not_increase_after_the_checkpoint_are_refused(
        self, backend: Backend, offsets: list[int]
    ) -> None:
        batch = [LogRecord(offset, turn("alice")) for offset in offsets]
        with pytest.raises(OffsetsOutOfOrder):
            self.apply(backend, 0, batch, -1)
        assert backend.checkpoint(0) == (-1, 0, 0)
        assert backend.projections() == {}

    def test_an_empty_batch_is_an_error(self, backend: Backend) -> None:
        with pytest.raises(ValueError, match="at least one record"):
            self.apply(backend, 0, [], -1)

    @pytest.mark.parametrize(
        "step", ["record_event_ids", "write_rows", "write_dead_letters", "advance_checkpoint"]
    )
    def test_a_transaction_that_fails_midway_leaves_nothing_behind(
        self, backend: Backend, step: str
    ) -> None:
        first = self.apply(backend, 0, records(turn("alice")), -1)
        before = (backend.projections(), backend.dead_letters(), backend.checkpoint(0))
        event_id = str(uuid.uuid4())
        batch = records(turn("alice", event_id=event_id), b"not json", start=1)
        with pytest.raises(Injected):
            apply_batch(
                FaultyStore(backend.store, step),
                0,
                batch,
                first.last_offset,
                "owner-a",
                keys=backend.keys,
            )
        assert (backend.projections(), backend.dead_letters(), backend.checkpoint(0)) == before
        assert backend.applied_event(event_id) is None
        again = self.apply(backend, 0, batch, first.last_offset)  # and it applies whole later
        assert (again.applied, again.dead_lettered) == (1, 1)

    def test_the_checkpoint_moves_only_by_compare_and_set(self, backend: Backend) -> None:
        faulty = FaultyStore(backend.store, "advance_checkpoint", shift=1)
        with pytest.raises(CheckpointConflict):
            apply_batch(faulty, 0, records(turn("alice")), -1, "owner-a", keys=backend.keys)
        assert backend.checkpoint(0) == (-1, 0, 0)
        assert backend.projections() == {}

    def test_an_id_first_used_in_another_partition_keeps_its_first_user(
        self, backend: Backend
    ) -> None:
        event_id = str(uuid.uuid4())
        self.apply(backend, 0, records(turn("alice", event_id=event_id)), -1)
        result = self.apply(
            backend,
            1,
            records(turn("bob", event_id=event_id), turn("alice", event_id=event_id)),
            -1,
        )
        assert (result.applied, result.duplicates, result.dead_lettered) == (0, 1, 1)
        assert "partition 0, offset 0" in backend.dead_letters()[(1, 0)][2]
        assert backend.applied_event(event_id) == ("alice", 0, 0)

    def test_the_first_dead_letter_at_an_offset_is_kept(self, backend: Backend) -> None:
        self.apply(backend, 2, records(b"first garbage"), -1)
        backend.rewind(2)  # an operator set the checkpoint back; the offset is read again
        self.apply(backend, 2, records(b"second garbage"), -1)
        assert backend.dead_letters()[(2, 0)][3] == b"first garbage"

    # -- children's data: encryption and erasure ----------------------------------------------

    def test_encrypted_events_fold_as_their_plain_text(self, backend: Backend) -> None:
        data_key = backend.add_data_key("alice")
        plain = [turn("alice"), completed("alice"), adjusted("alice", -7)]
        sealed = [encrypt_event(body, data_key) for body in plain]
        result = self.apply(backend, 0, records(*sealed), -1)
        assert (result.applied, result.dead_lettered) == (3, 0)
        assert backend.projections() == reference_fold(plain)
        assert backend.is_encrypted(json.loads(plain[0])["event_id"])

    def test_an_encrypted_event_without_its_key_or_altered_is_dead_lettered(
        self, backend: Backend
    ) -> None:
        other_key = backend.add_data_key("bob")
        no_key = encrypt_event(turn("carol"), other_key)  # carol has no key here
        altered = _flip_a_ciphertext_bit(encrypt_event(turn("bob"), other_key))
        result = self.apply(backend, 0, records(no_key, altered), -1)
        assert (result.applied, result.dead_lettered) == (0, 2)
        dead = backend.dead_letters()
        assert "no data key" in dead[(0, 0)][2] and dead[(0, 0)][3] == no_key
        assert "does not open" in dead[(0, 1)][2] and dead[(0, 1)][3] == altered

    def test_an_erased_childs_events_are_skipped_and_counted_never_applied(
        self, backend: Backend
    ) -> None:
        data_key = backend.add_data_key("erased-kid")
        self.apply(backend, 0, records(turn("erased-kid"), b'{"user_id": "erased-kid"}'), -1)
        backend.erase("erased-kid")
        assert backend.projections() == {} and backend.dead_letters() == {}
        assert backend.checkpoint(0) == (1, 0, 0), "the counters lose what the erasure removed"
        late = [
            turn("erased-kid"),  # published in plain text after the erasure
            encrypt_event(turn("erased-kid"), data_key),  # its key is gone now
            b'{"user_id": "erased-kid", "type": "nonsense"}',  # invalid, but names the child
            turn("other-kid"),
        ]
        result = self.apply(backend, 0, records(*late, start=2), 1)
        assert (result.applied, result.dead_lettered, result.erased_skipped) == (1, 0, 3)
        assert set(backend.projections()) == {"other-kid"}
        assert backend.dead_letters() == {}

    def test_an_id_the_erased_child_used_stays_used_by_nobody_else(self, backend: Backend) -> None:
        used = str(uuid.uuid4())
        self.apply(backend, 0, records(adjusted("erased-kid", 5, event_id=used)), -1)
        self.apply(backend, 0, records(adjusted("other-kid", 7, event_id=used), start=1), 0)
        backend.erase("erased-kid")
        later = records(adjusted("late-kid", 9, event_id=used.upper()), start=2)
        result = self.apply(backend, 0, later, 1)
        assert (result.applied, result.dead_lettered) == (0, 1)
        assert backend.projections() == {}
        reasons = {reason for _, _, reason, _ in backend.dead_letters().values()}
        first_use = "event_id already applied for another user (partition 0, offset 0)"
        assert reasons == {f"{first_use}; not applied"}, "both dead letters point at the first use"

    def test_a_broken_body_that_names_the_erased_child_is_skipped_after_the_erasure(
        self, backend: Backend
    ) -> None:
        cut_short = b'{"user_id": "erased-kid", "type": "turn_rec'
        self.apply(backend, 0, records(cut_short), -1)
        assert len(backend.dead_letters()) == 1
        backend.erase("erased-kid")
        assert backend.dead_letters() == {}, "the erasure finds a broken body by its user_id"
        result = self.apply(backend, 0, records(cut_short, start=1), 0)
        assert (result.dead_lettered, result.erased_skipped) == (0, 1)

    # -- batching does not matter ----------------------------------------------------------------

    def test_the_result_does_not_depend_on_where_batches_end(self, backend: Backend) -> None:
        @settings(
            max_examples=self.examples,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(
            log=valid_event_logs(max_size=30),
            cuts=st.sets(st.integers(1, 29)),
            partition=st.integers(0, PARTITIONS - 1),
        )
        def check(log: list[bytes], cuts: set[int], partition: int) -> None:
            backend.reset()
            log = log + log[: len(log) // 3]  # re-published copies: duplicates
            batch_records = records(*log)
            bounds = [0, *sorted(c for c in cuts if c < len(log)), len(log)]
            checkpoint = -1
            for start, end in itertools.pairwise(bounds):
                if end > start:
                    result = self.apply(backend, partition, batch_records[start:end], checkpoint)
                    checkpoint = result.last_offset
            assert backend.projections() == reference_fold(log)
            assert backend.checkpoint(partition)[:2] == (len(log) - 1, len(set(log)))

        check()
