"""Tokens and scopes on the HTTP API, against the real database (docs/contract.md, "Access")."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient, TestClient

from processor.access.tokens import (
    JoinedRead,
    create_token,
    list_tokens,
    revoke_token,
    verify_tokens_with_reads_async,
)
from processor.api import create_app
from processor.privacy.keys import load_keys
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from projections.database import connect, libpq_url
from projections.fold import level_of
from testkit.services import Services, isolated_settings, make_token, settings_env
from tests.strategies import ADJUSTED, make_event


@pytest.fixture(scope="module")
def deployment(services: Services) -> Iterator[Settings]:
    """One vhost and database for the module: every test names its tokens apart."""
    with isolated_settings(services) as isolated:
        declare_topology(isolated)
        yield isolated


@pytest.fixture
def settings(deployment: Settings) -> Settings:
    return deployment


@pytest.fixture(scope="module")
def client(deployment: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(deployment)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    return str(body["error"]["message"])


def adjusted(user: str) -> bytes:
    data = {"delta": 3, "reason": "a test"}
    return make_event(ADJUSTED, user, "2024-05-01T00:00:00Z", data)


ROUTES = [
    ("GET", "/v1/users/kid-1/friendship"),
    ("GET", "/v1/users/kid-1/topics"),
    ("GET", "/v1/events/3b0f4bde-1d0f-4c9f-9a55-4f2f8d2f1a11"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/dead-letters"),
    ("GET", "/metrics"),
    ("POST", "/v1/events"),
    ("DELETE", "/v1/users/kid-1"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer fst_" + "0" * 40]
)
def test_no_or_a_bad_token_is_401_in_the_error_shape(
    client: TestClient[Any], method: str, path: str, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.request(method, path, headers=headers, content=adjusted("kid-1"))
    error_of(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("scope", "method", "path", "allowed"),
    [
        ("read", "GET", "/v1/users/kid-1/friendship", True),
        ("read", "GET", "/v1/stats", True),
        ("read", "GET", "/metrics", True),
        ("read", "POST", "/v1/events", False),
        ("read", "GET", "/v1/dead-letters", False),
        ("read", "DELETE", "/v1/users/kid-1", False),
        ("ingest", "POST", "/v1/events", True),
        ("ingest", "GET", "/v1/users/kid-1/friendship", False),
        ("ingest", "GET", "/v1/stats", False),
        ("ingest", "DELETE", "/v1/users/kid-1", False),
        ("admin", "GET", "/v1/dead-letters", True),
        ("admin", "GET", "/v1/users/kid-1/friendship", True),
        ("admin", "POST", "/v1/events", True),
        ("admin", "DELETE", "/v1/users/kid-1", True),
    ],
)
def test_a_token_may_do_what_its_scope_allows_and_nothing_else(
    settings: Settings,
    client: TestClient[Any],
    scope: str,
    method: str,
    path: str,
    allowed: bool,
) -> None:
    headers = bearer(make_token(settings, scope))
    response = client.request(method, path, headers=headers, content=adjusted("kid-1"))
    if allowed:
        assert response.status_code not in (401, 403), response.text
    else:
        message = error_of(response, 403, "forbidden")
        assert f"scope is {scope}" in message


def test_a_revoked_token_is_refused_on_its_next_use(
    settings: Settings, client: TestClient[Any]
) -> None:
    token = make_token(settings, "read", "robot-app-revoked")
    assert client.get("/v1/stats", headers=bearer(token)).status_code == 200
    with connect(settings.database_url) as conn:
        revoke_token(conn, "robot-app-revoked")
    error_of(client.get("/v1/stats", headers=bearer(token)), 401, "unauthorized")


def test_an_expired_token_is_refused(settings: Settings, client: TestClient[Any]) -> None:
    with connect(settings.database_url) as conn:
        token = create_token(conn, load_keys(settings), "brief", "read", timedelta(seconds=-1))
    error_of(client.get("/v1/stats", headers=bearer(token)), 401, "unauthorized")


def test_a_token_with_a_wrong_secret_is_refused(
    settings: Settings, client: TestClient[Any]
) -> None:
    token = make_token(settings, "admin")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    error_of(client.get("/v1/stats", headers=bearer(forged)), 401, "unauthorized")


@pytest.fixture(scope="module")
def stored_friend(deployment: Settings) -> str:
    """A child whose friendship is stored (score 70, 3 events)."""
    with connect(deployment.database_url) as conn:
        conn.execute(
            "INSERT INTO friendships (user_id, score, events_applied, last_event_at) "
            "VALUES ('kid-stored', 70, 3, '2024-05-01T00:00:00Z')"
        )
    return "kid-stored"


def test_the_friendship_read_answers_a_valid_read_token(
    settings: Settings, client: TestClient[Any], stored_friend: str
) -> None:
    # The read goes in the token check's statement: the row reaches a valid token.
    token = make_token(settings, "read")
    answer = client.get(f"/v1/users/{stored_friend}/friendship", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "user_id": stored_friend,
        "score": 70,
        "level": level_of(70),
        "events_applied": 3,
        "last_event_at": "2024-05-01T00:00:00Z",
    }
    error_of(
        client.get("/v1/users/nobody/friendship", headers=bearer(token)), 404, "user_not_found"
    )


def test_a_revoked_token_gets_no_friendship_on_its_next_use(
    settings: Settings, client: TestClient[Any], stored_friend: str
) -> None:
    token = make_token(settings, "read", "friendship-reader-revoked")
    path = f"/v1/users/{stored_friend}/friendship"
    assert client.get(path, headers=bearer(token)).status_code == 200
    with connect(settings.database_url) as conn:
        revoke_token(conn, "friendship-reader-revoked")
    answer = client.get(path, headers=bearer(token))
    error_of(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "70" not in answer.text


@pytest.mark.parametrize("refused", ["expired", "wrong secret", "unknown id"])
def test_a_refused_token_gets_no_friendship(
    settings: Settings, client: TestClient[Any], stored_friend: str, refused: str
) -> None:
    if refused == "expired":
        with connect(settings.database_url) as conn:
            token = create_token(conn, load_keys(settings), "brief-friend", "read", timedelta(0))
    else:
        token = make_token(settings, "read")
        if refused == "wrong secret":
            token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        else:
            token = "fst_" + "0" * 16 + token[len("fst_") + 16 :]
    answer = client.get(f"/v1/users/{stored_friend}/friendship", headers=bearer(token))
    error_of(answer, 401, "unauthorized")
    assert "70" not in answer.text


def test_an_ingest_token_gets_no_friendship(
    settings: Settings, client: TestClient[Any], stored_friend: str
) -> None:
    headers = bearer(make_token(settings, "ingest"))
    answer = client.get(f"/v1/users/{stored_friend}/friendship", headers=headers)
    assert "scope is ingest" in error_of(answer, 403, "forbidden")
    assert "70" not in answer.text


def test_concurrent_friendship_reads_each_get_their_own_answer(
    settings: Settings, stored_friend: str
) -> None:
    # The checks (and reads) of requests that come together may share a statement (the test
    # below checks one such statement): each request still gets what its own token and user
    # allow.
    reader = make_token(settings, "read")
    admin = make_token(settings, "admin")
    revoked = make_token(settings, "read", "friendship-batch-revoked")
    with connect(settings.database_url) as conn:
        revoke_token(conn, "friendship-batch-revoked")
    cases = [
        (reader, stored_friend, 200),
        (admin, stored_friend, 200),
        (reader, "nobody", 404),
        (make_token(settings, "ingest"), stored_friend, 403),
        (revoked, stored_friend, 401),
        (reader[:-4] + ("AAAA" if not reader.endswith("AAAA") else "BBBB"), stored_friend, 401),
        ("not-a-token", stored_friend, 401),
    ] * 5
    random.Random(16).shuffle(cases)

    async def read_all() -> list[Any]:
        async with AsyncTestClient(app=create_app(settings)) as client:
            return await asyncio.gather(
                *(
                    client.get(f"/v1/users/{user}/friendship", headers=bearer(token))
                    for token, user, _status in cases
                )
            )

    answers = asyncio.run(read_all())
    assert [a.status_code for a in answers] == [status for _t, _u, status in cases]
    for answer in answers:
        assert ('"score":70' in answer.text) == (answer.status_code == 200)


def test_one_statement_answers_each_token_and_read_on_its_own(
    settings: Settings, stored_friend: str
) -> None:
    # What the batched check answers each request whose check shares a statement with others'.
    reader = make_token(settings, "read", "batch-reader")
    ingest = make_token(settings, "ingest", "batch-ingest")
    admin = make_token(settings, "admin", "batch-admin")
    revoked = make_token(settings, "read", "batch-revoked")
    with connect(settings.database_url) as conn:
        revoke_token(conn, "batch-revoked")
    forged = reader[:-4] + ("AAAA" if not reader.endswith("AAAA") else "BBBB")
    read = JoinedRead("read", "friendships f", "f.score, f.events_applied", "f.user_id = {key}")
    pairs = [
        (reader, stored_friend),
        (forged, stored_friend),
        (reader, "nobody"),
        ("not-a-token", stored_friend),
        # An id psycopg cannot send (NUL): refused alone, not failing the others' statement.
        ("fst_" + "\x00" * 16 + "x" * 43, stored_friend),
        (ingest, stored_friend),
        (revoked, stored_friend),
        (admin, stored_friend),
    ]

    async def check() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(
            libpq_url(settings.database_url), autocommit=True
        ) as conn:
            return await verify_tokens_with_reads_async(conn, load_keys(settings), read, pairs)

    answers = [(None if i is None else i.name, row) for i, row in asyncio.run(check())]
    assert answers == [
        ("batch-reader", (70, 3)),
        (None, None),
        ("batch-reader", None),
        (None, None),
        (None, None),
        ("batch-ingest", None),
        (None, None),
        ("batch-admin", (70, 3)),
    ]


def test_a_bad_user_id_is_refused_after_the_token(
    settings: Settings, client: TestClient[Any]
) -> None:
    path = "/v1/users/a%20b/friendship"
    error_of(client.get(path, headers=bearer("fst_" + "0" * 40)), 401, "unauthorized")
    error_of(client.get(path, headers=bearer(make_token(settings, "read"))), 400, "invalid_user_id")


def test_tokens_are_stored_as_a_keyed_hash_only(settings: Settings) -> None:
    token = make_token(settings, "read", "hashed")
    secret = token[len("fst_") + 16 :]
    with connect(settings.database_url) as conn:
        stored = conn.execute("SELECT * FROM api_tokens WHERE name = 'hashed'").fetchone()
        assert stored is not None
        assert all(secret.encode() not in bytes(str(v), "utf-8") for v in stored)
        assert "hashed" in [t.name for t in list_tokens(conn)]


def test_the_health_probes_and_the_api_description_stay_open(client: TestClient[Any]) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)
    document = client.get("/schema/openapi.json")
    assert document.status_code == 200
    spec = document.json()
    assert spec["components"]["securitySchemes"]["BearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["BearerToken"]["description"],
    }
    assert spec["security"] == [{"BearerToken": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == [{}]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path not in ("/healthz", "/readyz"):
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_metrics_can_be_opened_by_a_setting(settings: Settings) -> None:
    with TestClient(app=create_app(settings.with_overrides(metrics_public=True))) as client:
        assert client.get("/metrics").status_code == 200
        error_of(client.get("/v1/stats"), 401, "unauthorized")


def test_a_dead_letters_bytes_are_for_admin_only(
    settings: Settings, client: TestClient[Any]
) -> None:
    from processor.applying.batch import apply_batch  # noqa: PLC0415
    from processor.applying.checkpoint import ensure_checkpoints  # noqa: PLC0415
    from processor.applying.postgres import PostgresStore  # noqa: PLC0415
    from processor.reading.log_record import LogRecord  # noqa: PLC0415

    body = json.dumps({"event_id": "d9e2c1f0-3f9e-4f0e-8d9a-2b9f1c3e4d5a", "type": "nope"})
    with connect(settings.database_url) as conn:
        ensure_checkpoints(conn, settings.partitions)
        record = LogRecord(0, body.encode())
        apply_batch(PostgresStore(conn), 0, [record], -1, "t", keys=load_keys(settings))
    path = "/v1/events/d9e2c1f0-3f9e-4f0e-8d9a-2b9f1c3e4d5a"
    as_reader = client.get(path, headers=bearer(make_token(settings, "read"))).json()
    as_admin = client.get(path, headers=bearer(make_token(settings, "admin"))).json()
    assert as_reader["status"] == as_admin["status"] == "dead_lettered"
    assert as_reader["raw"] is None and as_reader["raw_encoding"] is None
    assert as_admin["raw"] == body and as_admin["raw_encoding"] == "utf-8"


def test_the_token_command_prints_the_token_as_its_last_line(settings: Settings) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "processor", "token", *args],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            check=False,
        )

    created = run("create", "--scope", "read", "--name", "robot-app")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("fst_") and len(token) > 50
    with TestClient(app=create_app(settings)) as client:
        assert client.get("/v1/stats", headers=bearer(token)).status_code == 200
        listed = run("list")
        assert "robot-app" in listed.stdout and token not in listed.stdout
        assert run("create", "--scope", "read", "--name", "robot-app").returncode == 1
        assert run("revoke", "robot-app").returncode == 0
        error_of(client.get("/v1/stats", headers=bearer(token)), 401, "unauthorized")
        assert run("revoke", "no-such-token").returncode == 1
