"""TLS-only broker and database: the demo's events processed, equal to the fold.

A RabbitMQ node of its own that listens with TLS only (``infra/cluster.sh`` through
``testkit.rabbit_nodes``: AMQPS and stream TLS, no plain listeners) and a PostgreSQL of its own
that accepts TLS only, from clients with a certificate of the test CA
(``testkit.postgres_instance``). Everything the product opens goes over TLS from its settings:
``amqps://`` and the CA file for publishing and the topology, ``STREAM_TLS`` for the live reader
and the offset probes, ``DATABASE_URL`` with ``sslmode=verify-full``, ``sslrootcert``,
``sslcert`` and ``sslkey`` for the migration, the processor, the API's pool and its LISTEN
connection, and HTTPS for the API itself.

All 36,750 bundled Topical-Chat events of the demo (``demo.data``), their ``data`` encrypted
with each child's key as the demo does, are published, processed and compared with the fold of
the plain events; then the API ingests more events over HTTPS and reads them after their writes.
The row of the cluster figures table gives the times.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from demo.data import DEFAULT_DATA_DIR, iter_demo_events
from processor.api.address import api_base_url, api_client_ssl_context
from processor.api.context import APPLICATION_NAME
from processor.api.waiting import LISTENER_APPLICATION_NAME
from processor.ownership.membership import MEMBER_APPLICATION_PREFIX, OWNER_APPLICATION_PREFIX
from processor.privacy.data_keys import seal_events
from processor.privacy.keys import load_keys
from processor.publishing.publisher import OutgoingEvent, publish_events
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from projections.database import connect
from testkit.postgres_instance import postgres_instance
from testkit.processes import api_process, free_port
from testkit.rabbit_nodes import rabbit_cluster
from testkit.services import database_on, make_token
from testkit.tls import TestCA
from tests.cluster.conftest import FAST
from tests.cluster.support import ClusterReport, verify
from tests.integration.api.test_api import adjusted, encode
from tests.integration.support import drain, processor_process

pytestmark = pytest.mark.integration


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def database_sessions(settings: Settings) -> list[tuple[str, bool, str | None]]:
    """``(application_name, ssl, client certificate's subject)`` of the other sessions."""
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT a.application_name, s.ssl, s.client_dn FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
        ).fetchall()
    return [(str(name), bool(ssl), dn) for name, ssl, dn in rows]


def test_tls_only_broker_and_database_process_the_demo_events(
    tmp_path: Path, cluster_report: ClusterReport
) -> None:
    ca = TestCA(tmp_path / "ca")
    api_certificate = ca.server("api-server")
    began = time.monotonic()
    with (
        postgres_instance(ca, client_certificates=True) as database_server,
        rabbit_cluster(tmp_path, nodes=1, tls=ca, tls_only=True) as broker,
    ):
        up_s = time.monotonic() - began
        node = broker.node(1)
        assert node.amqps_port is not None and node.streams_port is not None
        assert answers(node.amqps_port) and answers(node.streams_port)
        assert not answers(node.amqp_port) and not answers(node.stream_port)  # TLS only
        with broker.settings(
            database_url=database_on(
                database_server.server_url(), f"fs_tls_{uuid.uuid4().hex[:10]}"
            ),
            api_port=free_port(),
            api_tls_cert_file=str(api_certificate.cert),
            api_tls_key_file=str(api_certificate.key),
            wait_safety_poll_s=3600.0,  # waits end by the LISTEN connection's notifications
            **FAST,
        ) as settings:
            assert settings.amqp_tls and settings.stream_tls_enabled
            assert "sslmode=verify-full" in settings.database_url
            declare_topology(settings)
            demo = list(iter_demo_events(DEFAULT_DATA_DIR))
            with connect(settings.database_url) as conn:
                sealed = seal_events(conn, [event.body for event in demo], load_keys(settings))
            outgoing = [
                OutgoingEvent(event.event_id, event.user_id, body)
                for event, body in zip(demo, sealed, strict=True)
            ]
            started = time.monotonic()
            asyncio.run(publish_events(settings, outgoing))
            published_s = time.monotonic() - started
            ingest, read = make_token(settings, "ingest"), make_token(settings, "read")
            user = f"kid-tls-{uuid.uuid4().hex[:6]}"
            posted_bodies: list[bytes] = []
            with (
                processor_process(settings, tmp_path / "processor.log"),
                api_process(settings, tmp_path / "api.log"),
                httpx.Client(
                    base_url=api_base_url(settings),
                    verify=api_client_ssl_context(settings) or True,
                    timeout=60,
                ) as client,
            ):
                assert api_base_url(settings).startswith("https://")
                drain(settings, timeout_s=900)
                processed_s = time.monotonic() - started
                for round_ in range(1, 4):  # HTTPS ingest over amqps, a read after the write
                    event = adjusted(user, 1, f"2024-03-01T00:00:{round_:02d}Z")
                    posted_bodies.append(encode(event))
                    posted = client.post(
                        "/v1/events",
                        content=encode(event),
                        headers={"Authorization": f"Bearer {ingest}"},
                    )
                    assert posted.status_code == 202, posted.text
                    waited = client.get(
                        f"/v1/users/{user}/friendship",
                        params={"after": posted.json()["token"], "wait_s": 10},
                        headers={"Authorization": f"Bearer {read}"},
                    )
                    assert waited.status_code == 200, waited.text
                    assert waited.json()["events_applied"] == round_
                child = demo[0].user_id
                answer = client.get(
                    f"/v1/users/{child}/friendship", headers={"Authorization": f"Bearer {read}"}
                )
                assert answer.status_code == 200, answer.text
                names = [name for name, _, _ in database_sessions(settings)]
                for prefix in (
                    MEMBER_APPLICATION_PREFIX,
                    OWNER_APPLICATION_PREFIX,
                    APPLICATION_NAME,
                    LISTENER_APPLICATION_NAME,
                ):
                    assert any(name.startswith(prefix) for name in names), (prefix, names)
                sessions = database_sessions(settings)
            assert all(ssl and dn for _, ssl, dn in sessions), sessions
            with connect(settings.database_url) as conn:
                dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
            assert dead == (0,)
            verify(
                settings,
                cluster_report,
                scenario="TLS-only broker (1 node) and database: the demo's events",
                must_apply=[event.body for event in demo] + posted_bodies,
                notes=(
                    f"{len(demo):,} demo events (encrypted) + 3 HTTPS ingests; node and "
                    f"PostgreSQL up in {up_s:.0f} s; published in {published_s:.1f} s, "
                    f"processed to zero lag {processed_s:.1f} s after the publish began; "
                    "amqps, stream TLS, PostgreSQL verify-full with a client certificate, "
                    "API over HTTPS"
                ),
            )
