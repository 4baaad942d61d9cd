"""Real RabbitMQ and PostgreSQL for the integration tests, each test in its own vhost and database.

The local services are used when their URLs answer (this machine, CI); otherwise testcontainers
starts them where a Docker engine exists. Nothing here is mocked.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from processor.access.principals import remove as remove_principals
from processor.access.tokens import create_token
from processor.privacy.keys import load_keys, new_key
from processor.settings import Settings
from projections.database import connect, drop_database, migrate


@dataclass(frozen=True)
class Services:
    """Where the broker (AMQP, stream, management HTTP) and the database server are."""

    amqp_host: str
    amqp_port: int
    stream_port: int
    management_url: str
    postgres_url: str  # server URL without a database name (a query string is kept)

    def on_database_server(self, postgres_url: str) -> Services:
        """The same broker with the databases on another PostgreSQL server: ``postgres_url``
        without a database name, its query string kept in every database URL made on it
        (``testkit.postgres_instance.PostgresInstance.server_url()``)."""
        return dataclasses.replace(self, postgres_url=postgres_url)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def local_services() -> Services | None:
    """The machine's own services when RabbitMQ (AMQP, stream) and PostgreSQL answer."""
    host = os.environ.get("TEST_SERVICES_HOST", "127.0.0.1")
    if all(_answers(host, port) for port in (5672, 5552, 15672, 5432)):
        return Services(
            amqp_host=host,
            amqp_port=5672,
            stream_port=5552,
            management_url=f"http://guest:guest@{host}:15672",
            postgres_url=f"postgresql://postgres@{host}:5432",
        )
    return None


@contextmanager
def container_services() -> Iterator[Services]:
    """Start RabbitMQ (stream and consistent-hash plugins) and PostgreSQL with testcontainers."""
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415
    from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

    rabbit = (
        DockerContainer("rabbitmq:3.10-management")
        .with_exposed_ports(5672, 5552, 15672)
        .with_command(
            "bash -c 'rabbitmq-plugins enable --offline rabbitmq_stream "
            "rabbitmq_consistent_hash_exchange && rabbitmq-server'"
        )
    )
    postgres = PostgresContainer("postgres:15", username="postgres", password="postgres")
    with rabbit, postgres:
        host = rabbit.get_container_host_ip()
        pg_host = postgres.get_container_host_ip()
        pg_port = postgres.get_exposed_port(5432)
        yield Services(
            amqp_host=host,
            amqp_port=int(rabbit.get_exposed_port(5672)),
            stream_port=int(rabbit.get_exposed_port(5552)),
            management_url=f"http://guest:guest@{host}:{rabbit.get_exposed_port(15672)}",
            postgres_url=f"postgresql://postgres:postgres@{pg_host}:{pg_port}",
        )


def _management(services: Services, method: str, path: str, body: object | None = None) -> None:
    parts = urllib.parse.urlsplit(services.management_url)
    url = f"{parts.scheme}://{parts.hostname}:{parts.port}/api/{path}"
    credentials = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as exc:
        if not (method == "DELETE" and exc.code == 404):
            raise


def database_on(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url`` (``postgresql://user@host:
    port``, with or without a path), keeping its query string (``sslmode``, ``sslrootcert``...)."""
    parts = urllib.parse.urlsplit(server_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@contextmanager
def isolated_settings(services: Services, **overrides: object) -> Iterator[Settings]:
    """A fresh vhost and database, migrated, as ``Settings``; both are deleted afterwards.

    The database is made on ``services.postgres_url`` (its query string, such as ``sslmode``,
    kept in the database URL); ``services.on_database_server(url)`` puts it on another server.

    Processors started with them serve their metrics on an ephemeral port
    (``PROCESSOR_METRICS_PORT=0``), so tests in parallel never collide, and each is one member
    (``PROCESSOR_PROCESSES=1``): a test that wants a supervisor of several sets ``processes``.
    """
    name = f"fs_test_{uuid.uuid4().hex[:10]}"
    vhost = urllib.parse.quote(name, safe="")
    _management(services, "PUT", f"vhosts/{vhost}", {})
    _management(
        services,
        "PUT",
        f"permissions/{vhost}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    settings = Settings(
        amqp_url=f"amqp://guest:guest@{services.amqp_host}:{services.amqp_port}/{vhost}",
        stream_port=services.stream_port,
        database_url=database_on(services.postgres_url, name),
        hash_key=new_key(),
        key_encryption_key=new_key(),
        metrics_port=0,  # processors of parallel tests never share a metrics port
        processes=1,  # one member per processor process started: tests count members
    ).with_overrides(**overrides)
    try:
        migrate(settings.database_url)
        yield settings
    finally:
        remove_principals(settings)  # roles and broker users are server-wide: none may stay
        drop_database(settings.database_url)
        _management(services, "DELETE", f"vhosts/{vhost}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a processor subprocess needs to use ``settings``."""
    env = dict(os.environ)
    env.update(
        {
            "AMQP_URL": settings.amqp_url,
            "STREAM_PORT": str(settings.stream_port),
            "DATABASE_URL": settings.database_url,
            "PARTITIONS": str(settings.partitions),
            "PROCESSOR_THREADS": str(settings.threads),
            "PROCESSOR_PROCESSES": "auto"
            if settings.processes is None
            else str(settings.processes),
            "BATCH_SIZE": str(settings.batch_size),
            "BATCH_WAIT_S": str(settings.batch_wait_s),
            "LEASE_INTERVAL_S": str(settings.lease_interval_s),
            "MEMBER_TIMEOUT_S": str(settings.member_timeout_s),
            "STREAM_MAX_AGE": settings.stream_max_age,
            "STREAM_MAX_LENGTH_BYTES": str(settings.stream_max_length_bytes),
            "STREAM_MAX_SEGMENT_SIZE_BYTES": str(settings.stream_max_segment_size_bytes),
            "API_HOST": settings.api_host,
            "API_PORT": str(settings.api_port),
            "SECRETS_DIR": settings.secrets_dir,
            "HASH_KEY": settings.hash_key,
            "KEY_ENCRYPTION_KEY": settings.key_encryption_key,
            "METRICS_PUBLIC": "1" if settings.metrics_public else "0",
            "FOLD_RULES": settings.fold_rules,
            "STREAM_USERNAME": settings.stream_username,
            "STREAM_PASSWORD": settings.stream_password,
            "PROCESSOR_METRICS_PORT": (
                "off" if settings.metrics_port is None else str(settings.metrics_port)
            ),
            "PROCESSOR_METRICS_HOST": settings.metrics_host,
            "PROCESSOR_METRICS_TOKEN": settings.metrics_token,
            "WRITE_TOKEN_TTL_S": str(settings.write_token_ttl_s),
            "WAIT_SAFETY_POLL_S": str(settings.wait_safety_poll_s),
            "AMQP_ADDRESSES": settings.amqp_addresses_raw,
            "STREAM_ADDRESSES": settings.stream_addresses_raw,
            "STREAM_REPLICATION_FACTOR": str(settings.stream_replication_factor),
            "STREAM_TLS": "" if settings.stream_tls is None else str(int(settings.stream_tls)),
            "BROKER_TLS_CA_FILE": settings.broker_tls_ca_file,
            "BROKER_TLS_CERT_FILE": settings.broker_tls_cert_file,
            "BROKER_TLS_KEY_FILE": settings.broker_tls_key_file,
            "BROKER_SASL_MECHANISM": settings.broker_sasl_mechanism,
            "STREAM_HEARTBEAT_S": str(settings.stream_heartbeat_s),
            "STREAM_READ_DEADLINE_S": str(settings.stream_read_deadline_s),
            "STREAM_ADVERTISED_ADDRESSES": (
                "follow" if settings.stream_follow_advertised else "ignore"
            ),
            "RECONNECT_BACKOFF_S": str(settings.reconnect_backoff_s),
            "RECONNECT_BACKOFF_MAX_S": str(settings.reconnect_backoff_max_s),
            "API_TLS_CERT_FILE": settings.api_tls_cert_file,
            "API_TLS_KEY_FILE": settings.api_tls_key_file,
        }
    )
    return env


def make_token(settings: Settings, scope: str, name: str | None = None) -> str:
    """An API token of ``scope`` for the deployment of ``settings`` (a fresh name by default)."""
    with connect(settings.database_url) as conn:
        return create_token(
            conn, load_keys(settings), name or f"{scope}-{uuid.uuid4().hex[:8]}", scope
        )
