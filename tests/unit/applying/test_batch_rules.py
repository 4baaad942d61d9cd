"""The rules of a batch (``tests/batch_rules.py``) against the in-memory store."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from processor.applying.memory import InMemoryStore
from processor.privacy.crypto import new_data_key, wrap_data_key
from processor.privacy.keys import Keys
from projections.fold import level_of
from schemas.events import SENTIMENTS
from tests.batch_rules import PARTITIONS, Backend, BatchRules


class MemoryBackend(Backend):
    """An ``InMemoryStore`` and its state read in the suite's shapes."""

    def __init__(self) -> None:
        self.store: InMemoryStore = InMemoryStore(PARTITIONS)
        self.keys = Keys(secrets.token_bytes(32), secrets.token_bytes(32))

    def reset(self) -> None:
        self.store = InMemoryStore(PARTITIONS)

    def add_data_key(self, user_id: str) -> bytes:
        data_key = new_data_key()
        wrapped = wrap_data_key(self.keys.kek, data_key, user_id)
        self.store.state.data_keys[user_id] = (wrapped, self.keys.kek_id)
        return data_key

    def erase(self, user_id: str) -> None:
        self.store.erase(user_id, self.keys.user_digest(user_id))

    def is_encrypted(self, event_id: str) -> bool:
        return event_id.lower() in self.store.state.encrypted_events

    def rewind(self, partition: int) -> None:
        self.store.state.checkpoints[partition].committed_offset = -1

    def set_fold_version(self, partition: int, version: int) -> None:
        self.store.state.checkpoints[partition].fold_version = version

    def begin_lease(self, partition: int, owner: str) -> tuple[int, int]:
        return self.store.begin_lease_epoch(partition, owner)

    def projections(self) -> dict[str, dict[str, Any]]:
        state = self.store.state
        users: dict[str, dict[str, Any]] = {
            user: {
                "score": f.score,
                "level": level_of(f.score),
                "events_applied": f.events_applied,
                "last_event_at": f.last_event_at,
                "topics": {},
            }
            for user, f in state.friendships.items()
        }
        for (user, topic), m in state.topics.items():
            users[user]["topics"][topic] = {
                "conversations": m.conversations,
                "turns": m.turns,
                "duration_s": m.duration_s,
                "sentiment": dict(zip(SENTIMENTS, m.sentiment, strict=True)),
                "last_discussed_at": m.last_discussed_at,
            }
        return users

    def dead_letters(self) -> dict[tuple[int, int], tuple[str | None, str, str, bytes]]:
        return {
            key: (d.event_id, d.field, d.reason, d.raw)
            for key, d in self.store.state.dead_letters.items()
        }

    def checkpoint(self, partition: int) -> tuple[int, int, int]:
        row = self.store.state.checkpoints[partition]
        return row.committed_offset, row.applied_count, row.dead_lettered_count

    def commit_log(self) -> list[tuple[int, int, int, str, int]]:
        return [
            (a.partition, a.first_offset, a.last_offset, a.owner, a.lease_epoch)
            for a in self.store.state.commit_log
        ]

    def applied_event(self, event_id: str) -> tuple[str, int, int] | None:
        first = self.store.state.applied_events.get(event_id.lower())
        return None if first is None else (first.user_id, first.partition, first.offset)


class TestBatchRulesInMemory(BatchRules):
    examples = 150

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        yield MemoryBackend()
