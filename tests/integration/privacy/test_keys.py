"""Rotating the key-encryption key: every data key re-wrapped, the events still open."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from litestar.testing import TestClient

from processor.api import create_app
from processor.privacy.crypto import decrypt_event
from processor.privacy.data_keys import ensure_data_keys, rewrap_data_keys, seal_events
from processor.privacy.errors import KeyMissing, UserErased
from processor.privacy.key_ids import check_keys, record_kek
from processor.privacy.keys import init_keys, load_keys, new_key, read_key_file, write_new_key
from processor.settings import Settings
from projections.advisory_locks import CHILD_CLASS, child_lock_key
from projections.database import connect
from testkit.services import make_token
from tests.integration.support import run_command, settings_env
from tests.strategies import ADJUSTED, make_event


def test_rotating_the_kek_rewraps_every_data_key_and_keeps_the_old_file(
    settings: Settings, tmp_path: Path
) -> None:
    keyed = settings.with_overrides(
        secrets_dir=str(tmp_path / "secrets"), hash_key="", key_encryption_key=""
    )
    init_keys(keyed)
    before = load_keys(keyed)
    bodies = [
        make_event(ADJUSTED, f"kid-{n}", "2024-01-01T00:00:00Z", {"delta": 1, "reason": "r"})
        for n in range(5)
    ]
    with connect(keyed.database_url) as conn:
        sealed = seal_events(conn, bodies, before)

    rotated = run_command(["keys", "rotate"], settings_env(keyed))
    assert rotated.returncode == 0, rotated.stderr

    after = load_keys(keyed)
    assert after.kek != before.kek and after.hash_key == before.hash_key
    assert (tmp_path / "secrets" / f"kek.key.retired-{before.kek_id}").exists()
    with connect(keyed.database_url) as conn:
        kek_ids = {r[0] for r in conn.execute("SELECT kek_id FROM data_keys")}
        data_keys = ensure_data_keys(conn, [f"kid-{n}" for n in range(5)], after)
    assert kek_ids == {after.kek_id}
    for n, body in enumerate(sealed):
        assert decrypt_event(body, data_keys[f"kid-{n}"]) == bodies[n]


def test_rotation_is_refused_for_an_inline_key_and_while_a_processor_runs(
    settings: Settings, tmp_path: Path
) -> None:
    inline = run_command(["keys", "rotate"], settings_env(settings))
    assert inline.returncode == 1 and "KEY_ENCRYPTION_KEY is set" in inline.stderr
    keyed = settings.with_overrides(
        secrets_dir=str(tmp_path / "secrets"), hash_key="", key_encryption_key=""
    )
    init_keys(keyed)
    kek = (tmp_path / "secrets" / "kek.key").read_text()
    with connect(keyed.database_url) as conn:
        conn.execute(
            "INSERT INTO members (member_id, started_at, heartbeat_at) "
            "VALUES ('host:1', now(), now())"
        )
    running = run_command(["keys", "rotate"], settings_env(keyed))
    assert running.returncode == 1 and "processors are running" in running.stderr
    assert (tmp_path / "secrets" / "kek.key").read_text() == kek


def test_a_process_with_another_kek_than_the_stored_keys_stops_with_a_clear_error(
    settings: Settings, tmp_path: Path
) -> None:
    with connect(settings.database_url) as conn:
        ensure_data_keys(conn, ["kid-1"], load_keys(settings))
    other = settings.with_overrides(key_encryption_key=new_key())
    for command in (["run"], ["replay", "--verify"], ["api"]):
        result = run_command(command, settings_env(other), timeout_s=60)
        assert result.returncode == 2, (command, result.stderr)
        assert "wrapped by the key-encryption key" in result.stderr
        assert other.key_encryption_key not in result.stderr


def test_a_process_with_another_hash_key_stops_instead_of_missing_the_erasures(
    settings: Settings, tmp_path: Path
) -> None:
    """With another hash key no erasure would be found: the erased child's plain events would
    be applied again and the child given a new data key. Every process refuses to start, and
    the ingest makes no key."""
    with connect(settings.database_url) as conn:
        ensure_data_keys(conn, ["kid-1"], load_keys(settings))  # records the deployment's ids
    other = settings.with_overrides(hash_key=new_key())
    for command in (["run"], ["replay", "--verify"], ["api"]):
        result = run_command(command, settings_env(other), timeout_s=60)
        assert result.returncode == 2, (command, result.stderr)
        assert "erasures and tokens were made with the hash key" in result.stderr
        assert other.hash_key not in result.stderr
    body = make_event(ADJUSTED, "kid-new", "2024-01-01T00:00:00Z", {"delta": 1, "reason": "r"})
    with connect(settings.database_url) as conn:
        with pytest.raises(KeyMissing, match="hash key"):
            seal_events(conn, [body], load_keys(other))
        made = conn.execute("SELECT count(*) FROM data_keys WHERE user_id = 'kid-new'")
        assert made.fetchone() == (0,)


def test_a_childs_data_key_is_made_once_when_first_events_race(settings: Settings) -> None:
    keys = load_keys(settings)
    barrier = threading.Barrier(6)
    made: list[bytes] = []

    def first_event() -> None:
        with connect(settings.database_url) as conn:
            barrier.wait(10)
            made.append(ensure_data_keys(conn, ["racing-kid"], keys)["racing-kid"])

    threads = [threading.Thread(target=first_event) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(made) == 6 and len(set(made)) == 1
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM data_keys WHERE user_id = 'racing-kid'")
        assert rows.fetchone() == (1,)


def test_no_data_key_is_made_for_a_child_whose_erasure_commits_meanwhile(
    settings: Settings,
) -> None:
    """The ingest checks the erasures under the child's lock, which an erasure holds until it
    commits: an erasure that commits between the check and the insert cannot be missed."""
    keys = load_keys(settings)
    digest = keys.user_digest("kid-racing-erasure")
    body = make_event(
        ADJUSTED, "kid-racing-erasure", "2024-01-01T00:00:00Z", {"delta": 1, "reason": "r"}
    )
    outcome: list[object] = []
    with connect(settings.database_url) as eraser:
        with eraser.transaction():  # an erasure in progress: the child's lock, then its row
            eraser.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (CHILD_CLASS, child_lock_key(digest))
            )

            def ingest() -> None:
                with connect(settings.database_url) as conn:
                    try:
                        outcome.append(seal_events(conn, [body], keys))
                    except UserErased as exc:
                        outcome.append(exc)

            ingesting = threading.Thread(target=ingest)
            ingesting.start()
            ingesting.join(1.0)
            assert ingesting.is_alive(), "the ingest must wait for the erasure's lock"
            eraser.execute(
                "INSERT INTO erasures (user_digest, friendships, topic_rows, applied_events, "
                "plain_events, dead_letters, data_key_destroyed) "
                "VALUES (%s, 0, 0, 0, 0, 0, false)",
                (digest,),
            )
        ingesting.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], UserErased), outcome
    assert outcome[0].indexes == (0,)
    with connect(settings.database_url) as conn:
        made = conn.execute(
            "SELECT count(*) FROM data_keys WHERE user_id = 'kid-racing-erasure'"
        ).fetchone()
    assert made == (0,)


def test_a_rotation_that_stopped_part_way_is_finished_with_the_same_new_key(
    settings: Settings, tmp_path: Path
) -> None:
    keyed = settings.with_overrides(
        secrets_dir=str(tmp_path / "secrets"), hash_key="", key_encryption_key=""
    )
    init_keys(keyed)
    before = load_keys(keyed)
    body = make_event(ADJUSTED, "kid-r", "2024-01-01T00:00:00Z", {"delta": 1, "reason": "r"})
    with connect(keyed.database_url) as conn:
        (sealed,) = seal_events(conn, [body], before)
    staged = tmp_path / "secrets" / "kek.key.new"
    # The first run wrote kek.key.new and committed the re-wrap, then stopped.
    write_new_key(staged)
    with connect(keyed.database_url) as conn:
        rewrap_data_keys(conn, before, read_key_file(staged))
    staged_text = staged.read_text()

    again = run_command(["keys", "rotate"], settings_env(keyed))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "secrets" / "kek.key").read_text() == staged_text, "the staged key won"
    assert not staged.exists()
    after = load_keys(keyed)
    with connect(keyed.database_url) as conn:
        data_key = ensure_data_keys(conn, ["kid-r"], after)["kid-r"]
    assert decrypt_event(sealed, data_key) == body


def test_an_api_left_running_across_a_rotation_answers_503_for_a_new_child(
    settings: Settings,
) -> None:
    """It keeps the old KEK in memory: it refuses to make a data key under it, clearly."""
    admin = {"Authorization": f"Bearer {make_token(settings, 'admin')}"}
    body = make_event(ADJUSTED, "kid-after", "2024-01-01T00:00:00Z", {"delta": 1, "reason": "r"})
    with TestClient(app=create_app(settings)) as api:
        with connect(settings.database_url) as conn:
            ensure_data_keys(conn, ["kid-before"], load_keys(settings))
            record_kek(conn, "0123456789abcdef")  # what a rotation by another process records
        response = api.post("/v1/events", content=body, headers=admin)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "keys_mismatch"
    with connect(settings.database_url) as conn:
        made = conn.execute("SELECT count(*) FROM data_keys WHERE user_id = 'kid-after'")
        assert made.fetchone() == (0,)


def test_a_refused_process_records_nothing(settings: Settings) -> None:
    """A process with the wrong keys must not leave its ids behind: the right ones would be
    refused afterwards."""
    keys = load_keys(settings)
    with connect(settings.database_url) as conn:
        ensure_data_keys(conn, ["kid-1"], keys)
        conn.execute("DELETE FROM deployment_keys WHERE name = 'hash_key'")  # as after 0008
        wrong = load_keys(settings.with_overrides(hash_key=new_key(), key_encryption_key=new_key()))
        with pytest.raises(KeyMissing):
            check_keys(conn, wrong)
        names = conn.execute("SELECT name FROM deployment_keys ORDER BY name").fetchall()
        assert names == [("kek",)]
        check_keys(conn, keys)  # the deployment's own keys still start
        names = conn.execute("SELECT name FROM deployment_keys ORDER BY name").fetchall()
        assert names == [("hash_key",), ("kek",)]


def test_an_erasure_with_another_hash_key_is_refused(settings: Settings) -> None:
    with connect(settings.database_url) as conn:
        ensure_data_keys(conn, ["kid-1"], load_keys(settings))
    other = settings.with_overrides(hash_key=new_key())
    result = run_command(["erase", "kid-1"], settings_env(other))
    assert result.returncode == 2, result.stderr
    assert "hash key" in result.stderr
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM erasures").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM data_keys").fetchone() == (1,)
