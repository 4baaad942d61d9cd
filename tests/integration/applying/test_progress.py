"""A live batch announces its commit (``NOTIFY`` on ``PROGRESS_CHANNEL``, delivered at COMMIT);
a replay's shadow batch and a batch that rolls back announce nothing; an erasure and a replay's
swap, which can end a read's wait too, announce themselves."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from processor.applying.batch import apply_batch
from processor.applying.checkpoint import (
    PROGRESS_CHANNEL,
    begin_lease_epoch,
    ensure_checkpoints,
)
from processor.applying.errors import CheckpointConflict
from processor.applying.postgres import PostgresStore
from processor.privacy.erasure import erase_user
from processor.privacy.keys import load_keys
from processor.reading.log_record import LogRecord
from processor.settings import Settings
from projections.database import connect
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    run_command,
    settings_env,
)
from tests.strategies import ADJUSTED, make_event

pytestmark = pytest.mark.integration


def record(offset: int) -> LogRecord:
    body = make_event(ADJUSTED, "kid-1", "2024-01-01T00:00:00Z", {"delta": 1, "reason": "a"})
    assert json.loads(body)["user_id"] == "kid-1"
    return LogRecord(offset, body)


def received(listener: psycopg.Connection) -> list[str]:
    listener.execute("SELECT 1")  # reads what the server sent meanwhile
    return [n.payload for n in listener.notifies(timeout=0.5, stop_after=10)]


def test_a_live_commit_is_announced_once_and_a_shadow_or_failed_batch_is_not(
    settings: Settings,
) -> None:
    keys = load_keys(settings)
    with connect(settings.database_url) as listener, connect(settings.database_url) as conn:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(PROGRESS_CHANNEL)))
        ensure_checkpoints(conn, settings.partitions)
        _, epoch = begin_lease_epoch(conn, 2, "test:1")
        store = PostgresStore(conn)

        apply_batch(store, 2, [record(0), record(1)], -1, "test:1", keys=keys, lease_epoch=epoch)
        assert received(listener) == ["2:1"]

        with pytest.raises(CheckpointConflict):  # a stale owner: rolled back, nothing sent
            apply_batch(store, 2, [record(5)], 3, "test:1", keys=keys, lease_epoch=epoch)
        apply_batch(store, 3, [record(0)], -1, "replay", keys=keys)  # no epoch: a shadow
        assert received(listener) == []


def test_an_erasure_and_a_swap_are_announced(settings: Settings, tmp_path: Path) -> None:
    publish(settings, outgoing([record(0).body, record(1).body]))
    with processor_process(settings, tmp_path / "processor.log"):
        drain(settings)
    with connect(settings.database_url) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(PROGRESS_CHANNEL)))
        swap = run_command(["replay", "--swap"], settings_env(settings))
        assert swap.returncode == 0, swap.stdout + swap.stderr
        assert received(listener) == ["swap"]
        with connect(settings.database_url) as conn:
            erase_user(conn, "kid-1", load_keys(settings))
        assert received(listener) == ["erasure"]
