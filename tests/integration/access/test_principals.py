"""Least privilege: the processor and the API run as their own broker users and database roles,
and each may do its job and nothing more."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest
from litestar.testing import TestClient
from psycopg import sql

from processor.access.principals import provision, remove, settings_as
from processor.api import create_app
from processor.publishing.errors import PublishingError
from processor.publishing.publisher import OutgoingEvent, publish_events
from processor.reading.errors import StreamProtocolError
from processor.reading.probes import read_tail_offsets
from processor.settings import Settings
from projections.database import connect
from testkit.services import make_token
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    run_command,
    settings_env,
)
from tests.strategies import ADJUSTED, make_event


def adjusted(user: str, second: int) -> bytes:
    data = {"delta": 4, "reason": "a test"}
    return make_event(ADJUSTED, user, f"2024-02-01T00:00:{second:02d}Z", data)


def refused(settings: Settings, statement: str) -> bool:
    with connect(settings.database_url) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_the_processor_and_the_api_run_with_least_privilege(
    settings: Settings, tmp_path: Path
) -> None:
    principals = provision(settings.with_overrides(secrets_dir=str(tmp_path / "secrets")))
    as_processor = settings_as(settings, principals, "processor")
    as_api = settings_as(settings, principals, "api")
    as_ingest = settings_as(settings, principals, "ingest")
    ingest = {"Authorization": f"Bearer {make_token(settings, 'ingest')}"}
    admin = {"Authorization": f"Bearer {make_token(settings, 'admin')}"}
    bodies = [adjusted(f"kid-{n % 4}", n) for n in range(20)]

    with (
        processor_process(as_processor, tmp_path / "processor.log"),
        TestClient(app=create_app(as_api)) as api,
    ):
        response = api.post("/v1/events", content=b"[" + b",".join(bodies) + b"]", headers=ingest)
        assert response.status_code == 202, response.text
        misrouted = adjusted("kid-0", 30)  # with kid-2's id as key: the erasure edits its reason
        publish(settings, [OutgoingEvent(json.loads(misrouted)["event_id"], "kid-2", misrouted)])
        drain(settings)
        # The API's role stores write tokens (ingest) and reads them (a read after its writes).
        friendship = api.get(
            "/v1/users/kid-1/friendship",
            params={"after": response.json()["token"], "wait_s": 5},
            headers=admin,
        )
        assert friendship.status_code == 200 and friendship.json()["events_applied"] == 5
        stats = api.get("/v1/stats", headers=admin)  # tails read as the reader
        assert stats.status_code == 200
        owners = {p["owner"] for p in stats.json()["partitions"]}
        assert len(owners) == 1 and next(iter(owners)).count(":") == 1, owners  # host:pid
        erased = api.delete("/v1/users/kid-2", headers=admin)
        assert erased.status_code == 200, erased.text
        assert erased.json()["redacted_dead_letters"] == 1
        assert api.get("/v1/users/kid-2/friendship", headers=admin).status_code == 404

    verify = run_command(["replay", "--verify"], settings_env(settings))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # A swap keeps the replaced tables in a snapshot schema; the API's role erases there too.
    swap = run_command(["replay", "--swap"], settings_env(settings))
    assert swap.returncode == 0, swap.stdout + swap.stderr
    with TestClient(app=create_app(as_api)) as api:
        erased = api.delete("/v1/users/kid-3", headers=admin)
        assert erased.status_code == 200, erased.text
    with connect(settings.database_url) as conn:
        (snapshot,) = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'replay\\_%\\_replaced'"
        ).fetchone() or ("",)
        left = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE user_id = 'kid-3'").format(
                sql.Identifier(snapshot, "friendships")
            )
        ).fetchone()
    assert left == (0,), "the snapshot a swap kept still holds the erased child"

    # The reader may not publish, the publisher may not read the log.
    with pytest.raises(PublishingError):
        asyncio.run(publish_events(as_processor, outgoing([adjusted("kid-9", 1)])))
    with pytest.raises(StreamProtocolError, match="access"):
        asyncio.run(read_tail_offsets(as_api.with_overrides(stream_username="")))
    # No role may change the schema; each sees only what its job needs.
    for scoped in (as_processor, as_api, as_ingest):
        assert refused(scoped, "CREATE TABLE intruder (x int)")
        assert refused(scoped, "TRUNCATE friendships")
    assert refused(as_processor, "SELECT * FROM api_tokens")
    for scoped in (as_processor, as_ingest):  # write tokens are the API's alone
        assert refused(scoped, "SELECT * FROM write_tokens")
    assert not refused(as_api, "DELETE FROM write_tokens WHERE expires_at < now()")
    assert refused(as_processor, "DELETE FROM data_keys")
    assert refused(as_processor, "DELETE FROM friendships")
    with connect(settings.database_url) as conn:
        server_wide = conn.execute(
            "SELECT pg_has_role(%s, 'pg_signal_backend', 'MEMBER')",
            (principals.role("processor"),),
        ).fetchone()
    assert server_wide == (False,), "fencing needs no right over other deployments' sessions"
    assert refused(
        as_api, "INSERT INTO friendships (user_id, score, events_applied) VALUES ('x', 0, 0)"
    )
    assert refused(as_ingest, "SELECT * FROM friendships")
    stored = json.loads((tmp_path / "secrets" / "principals.json").read_text())
    assert set(stored) == {principals.prefix}
    remove(settings.with_overrides(secrets_dir=str(tmp_path / "secrets")))
    stored = json.loads((tmp_path / "secrets" / "principals.json").read_text())
    assert stored == {}, "the removed roles' passwords stay behind"
