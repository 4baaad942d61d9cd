"""PostgreSQL over TLS from settings: the ``DATABASE_URL`` query parameters (``sslmode``,
``sslrootcert``, ``sslcert``, ``sslkey``) reach every database connection the product opens.

The server is a PostgreSQL 15 of the test's own (``testkit.postgres_instance``) that accepts TCP
only over TLS (``hostnossl ... reject``) and only from clients presenting a certificate of the
test CA (``clientcert=verify-ca``). libpq's default ``sslmode=prefer`` would negotiate TLS
anyway; the client certificate is what a connection gets only from the URL's ``sslcert`` and
``sslkey``. So every connection that works here got the query string: the migration (database
creation on the ``postgres`` database, then Alembic through SQLAlchemy), the processor's
control and lease connections, the API's pool and its LISTEN connection, replay (its shadow
schema) and the status command, and the
least-privilege roles' URLs derived from ``DATABASE_URL`` (``processor.access.principals``).
The server's ``pg_stat_ssl`` confirms each session is TLS with the client certificate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from processor.access.principals import provision, settings_as
from processor.api.context import APPLICATION_NAME
from processor.api.waiting import LISTENER_APPLICATION_NAME
from processor.ownership.membership import MEMBER_APPLICATION_PREFIX, OWNER_APPLICATION_PREFIX
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from projections.database import connect
from testkit.postgres_instance import PostgresInstance, postgres_instance
from testkit.processes import api_process, free_port
from testkit.reference import reference_fold
from testkit.services import Services, isolated_settings, make_token, settings_env
from testkit.tls import TestCA
from tests.integration.api.test_api import adjusted, encode
from tests.integration.support import (
    assert_projections_equal,
    drain,
    outgoing,
    processor_process,
    publish,
    run_command,
    stored_projections,
    synthetic_events,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    """A throwaway CA for the server's and the client's certificates."""
    return TestCA(tmp_path / "ca")


@pytest.fixture
def tls_postgres(ca: TestCA) -> Iterator[PostgresInstance]:
    """A TLS-only PostgreSQL that also demands a client certificate of ``ca``."""
    with postgres_instance(ca, client_certificates=True) as instance:
        yield instance


@pytest.fixture
def settings(services: Services, tls_postgres: PostgresInstance) -> Iterator[Settings]:
    """A vhost of the machine's broker and a database on the TLS-only server, made and
    migrated over TLS (``DATABASE_URL`` with ``sslmode=verify-full`` and the test CA)."""
    with isolated_settings(services.on_database_server(tls_postgres.server_url())) as isolated:
        declare_topology(isolated)
        yield isolated


def sessions(settings: Settings) -> list[tuple[str, bool, str | None]]:
    """``(application_name, ssl, client certificate's subject)`` of every other session on
    the deployment's database (from the server's ``pg_stat_ssl``)."""
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT a.application_name, s.ssl, s.client_dn FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
        ).fetchall()
    return [(str(name), bool(ssl), dn) for name, ssl, dn in rows]


def wait_for_sessions(settings: Settings, prefixes: tuple[str, ...]) -> None:
    """Wait (up to 60 s) until a session of each application-name prefix is connected."""

    deadline = time.monotonic() + 60
    while True:
        names = [name for name, _, _ in sessions(settings)]
        missing = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if not missing:
            return
        assert time.monotonic() < deadline, f"no session of {missing} within 60 s: {names}"
        time.sleep(0.1)


def test_the_processor_and_the_api_run_on_a_tls_only_database(
    settings: Settings, tmp_path: Path
) -> None:
    assert "sslmode=verify-full" in settings.database_url
    assert "sslcert=" in settings.database_url
    settings = settings.with_overrides(api_port=free_port(), wait_safety_poll_s=3600.0)
    bodies = synthetic_events(3_000, users=200, seed=501)
    publish(settings, outgoing(bodies))
    ingest, read = make_token(settings, "ingest"), make_token(settings, "read")
    user = f"kid-tls-{uuid.uuid4().hex[:6]}"
    with (
        processor_process(settings, tmp_path / "processor.log"),
        api_process(settings, tmp_path / "api.log"),
        httpx.Client(
            base_url=f"http://{settings.api_host}:{settings.api_port}", timeout=60
        ) as client,
    ):
        drain(settings)
        expected = reference_fold(bodies)
        assert_projections_equal(stored_projections(settings), expected)
        # The API's pool: a plain read.
        some_user = sorted(expected)[0]
        answer = client.get(
            f"/v1/users/{some_user}/friendship", headers={"Authorization": f"Bearer {read}"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["score"] == expected[some_user]["score"]
        # The LISTEN connection: with no safety re-check, only the commit's notification
        # ends these waits.
        for round_ in range(1, 4):
            event = adjusted(user, 1, f"2024-03-01T00:00:{round_:02d}Z")
            posted = client.post(
                "/v1/events", content=encode(event), headers={"Authorization": f"Bearer {ingest}"}
            )
            assert posted.status_code == 202, posted.text
            waited = client.get(
                f"/v1/users/{user}/friendship",
                params={"after": posted.json()["token"], "wait_s": 10},
                headers={"Authorization": f"Bearer {read}"},
            )
            assert waited.status_code == 200, waited.text
            assert waited.json()["events_applied"] == round_
        # Replay (its shadow schema made through SQLAlchemy and Alembic, its own connections)
        # and the status command, with the same DATABASE_URL.
        for command in (["replay", "--verify", "--no-read-rate"], ["status"]):
            done = run_command(command, settings_env(settings), timeout_s=300)
            assert done.returncode == 0, done.stdout + done.stderr
        wait_for_sessions(
            settings,
            (
                MEMBER_APPLICATION_PREFIX,
                OWNER_APPLICATION_PREFIX,
                APPLICATION_NAME,
                LISTENER_APPLICATION_NAME,
            ),
        )
        seen = sessions(settings)
    assert all(ssl for _, ssl, _ in seen), seen
    assert all(dn and "CN=postgres" in dn for _, _, dn in seen), seen


def test_the_least_privilege_roles_connect_over_tls_too(settings: Settings, tmp_path: Path) -> None:
    """The roles' URLs are derived from ``DATABASE_URL`` (other credentials): they keep its
    TLS parameters."""
    principals = provision(settings.with_overrides(secrets_dir=str(tmp_path / "secrets")))
    for process in ("processor", "api", "ingest"):
        scoped = settings_as(settings, principals, process)
        assert scoped.database_url.split("?", 1)[1] == settings.database_url.split("?", 1)[1]
        with connect(scoped.database_url) as conn:
            row = conn.execute(
                "SELECT current_user, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        assert row is not None
        assert row[0] == principals.role(process) and row[1] is True and row[2], row


def run_processor(command: str, database_url: str, settings: Settings) -> tuple[int, str]:
    """``python -m processor COMMAND`` with ``DATABASE_URL=database_url``; exit code and log."""
    env = settings_env(settings) | {"DATABASE_URL": database_url}
    result = run_command([command], env, timeout_s=120)
    return result.returncode, result.stdout + result.stderr


def test_a_server_certificate_of_another_ca_is_refused_with_a_clear_error(
    settings: Settings, tmp_path: Path
) -> None:
    other = TestCA(tmp_path / "other-ca", name="some other CA")
    parts = urlsplit(settings.database_url)
    query = dict(parse_qsl(parts.query)) | {"sslrootcert": str(other.ca_file)}
    wrong = urlunsplit(parts._replace(query=urlencode(query)))
    for command in ("migrate", "run"):
        code, output = run_processor(command, wrong, settings)
        assert code == 1, output
        assert "certificate verify failed" in output, output
        assert "Traceback" not in output, output


def test_the_server_refuses_plain_tcp_and_tls_without_a_client_certificate(
    tls_postgres: PostgresInstance, ca: TestCA
) -> None:
    """What makes the tests above a proof: without TLS, or without the URL's client
    certificate, the server refuses the connection."""
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(tls_postgres.url(sslmode="disable"), connect_timeout=10)
    without_certificate = (
        f"postgresql://postgres@127.0.0.1:{tls_postgres.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={ca.ca_file}"
    )
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(without_certificate, connect_timeout=10)
    with psycopg.connect(tls_postgres.url(), connect_timeout=10) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)
