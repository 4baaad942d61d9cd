"""``testkit.postgres_instance``: an own server that restarts, crashes and starts again, and is
gone (stopped, folder removed) when its block ends, also when the block fails."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

import psycopg
import pytest

from testkit.postgres_instance import PostgresInstance, postgres_instance

pytestmark = pytest.mark.integration


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def backend_start(instance: PostgresInstance) -> object:
    with psycopg.connect(instance.url(), connect_timeout=10) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def test_restart_crash_and_start_are_real_and_the_server_is_gone_after_a_failure() -> None:
    folder: Path | None = None
    port = 0
    with pytest.raises(RuntimeError, match="the block failed"), postgres_instance() as instance:
        folder, port = instance.folder, instance.port
        assert folder.owner() == ("postgres" if os.geteuid() == 0 else getpass.getuser())
        first = backend_start(instance)
        instance.restart()
        second = backend_start(instance)
        assert second != first  # a new postmaster
        instance.crash()
        assert not answers(port) and not instance.running
        instance.start()  # crash recovery
        assert backend_start(instance) != second
        assert "database system was interrupted" in instance.log_file.read_text()
        raise RuntimeError("the block failed")
    assert folder is not None and not folder.exists()
    assert not answers(port)


def test_a_crashed_server_left_down_is_cleaned_up() -> None:
    with postgres_instance() as instance:
        folder = instance.folder
        instance.crash()
    assert not folder.exists()
