"""All environment variables in one place, read once into a frozen ``Settings`` (docs/contract.md
§7).

Nothing reads the environment at import time: ``Settings.from_env()`` is called by the entry
points and the object is passed down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from processor import tuning
from processor.errors import ConfigurationError

ENV_AMQP_URL: Final = "AMQP_URL"
ENV_STREAM_PORT: Final = "STREAM_PORT"
ENV_DATABASE_URL: Final = "DATABASE_URL"
ENV_PARTITIONS: Final = "PARTITIONS"
ENV_API_HOST: Final = "API_HOST"
ENV_API_PORT: Final = "API_PORT"
ENV_THREADS: Final = "PROCESSOR_THREADS"
ENV_PROCESSES: Final = "PROCESSOR_PROCESSES"
ENV_BATCH_SIZE: Final = "BATCH_SIZE"
ENV_BATCH_WAIT_S: Final = "BATCH_WAIT_S"
ENV_STREAM_MAX_AGE: Final = "STREAM_MAX_AGE"
ENV_STREAM_MAX_BYTES: Final = "STREAM_MAX_LENGTH_BYTES"
ENV_STREAM_SEGMENT_BYTES: Final = "STREAM_MAX_SEGMENT_SIZE_BYTES"
ENV_LEASE_INTERVAL_S: Final = "LEASE_INTERVAL_S"
ENV_MEMBER_TIMEOUT_S: Final = "MEMBER_TIMEOUT_S"
ENV_LOG_LEVEL: Final = "LOG_LEVEL"
ENV_STREAM_USERNAME: Final = "STREAM_USERNAME"
ENV_STREAM_PASSWORD: Final = "STREAM_PASSWORD"  # noqa: S105 - the variable's name
ENV_SECRETS_DIR: Final = "SECRETS_DIR"
ENV_HASH_KEY: Final = "HASH_KEY"
ENV_KEY_ENCRYPTION_KEY: Final = "KEY_ENCRYPTION_KEY"
ENV_METRICS_PUBLIC: Final = "METRICS_PUBLIC"
ENV_FOLD_RULES: Final = "FOLD_RULES"
ENV_METRICS_PORT: Final = "PROCESSOR_METRICS_PORT"
ENV_METRICS_HOST: Final = "PROCESSOR_METRICS_HOST"
ENV_METRICS_TOKEN: Final = "PROCESSOR_METRICS_TOKEN"  # noqa: S105 - the variable's name

#: The processor's metrics port when ``PROCESSOR_METRICS_PORT`` is unset (the port commonly
#: used by OpenTelemetry's Prometheus exporter).
DEFAULT_METRICS_PORT: Final = 9464
#: ``PROCESSOR_METRICS_PORT`` values that turn the processor's metrics server off.
METRICS_OFF: Final = frozenset({"off", "none", "disabled"})
ENV_WRITE_TOKEN_TTL_S: Final = "WRITE_TOKEN_TTL_S"  # noqa: S105 - the variable's name
ENV_WAIT_SAFETY_POLL_S: Final = "WAIT_SAFETY_POLL_S"
# -- a broker cluster, TLS and timeouts (README "A broker cluster and TLS") ----------------------
ENV_AMQP_ADDRESSES: Final = "AMQP_ADDRESSES"
ENV_STREAM_ADDRESSES: Final = "STREAM_ADDRESSES"
ENV_STREAM_REPLICATION_FACTOR: Final = "STREAM_REPLICATION_FACTOR"
ENV_STREAM_TLS: Final = "STREAM_TLS"
ENV_BROKER_TLS_CA_FILE: Final = "BROKER_TLS_CA_FILE"
ENV_BROKER_TLS_CERT_FILE: Final = "BROKER_TLS_CERT_FILE"
ENV_BROKER_TLS_KEY_FILE: Final = "BROKER_TLS_KEY_FILE"
ENV_BROKER_SASL_MECHANISM: Final = "BROKER_SASL_MECHANISM"
ENV_STREAM_HEARTBEAT_S: Final = "STREAM_HEARTBEAT_S"
ENV_STREAM_READ_DEADLINE_S: Final = "STREAM_READ_DEADLINE_S"
ENV_STREAM_ADVERTISED_ADDRESSES: Final = "STREAM_ADVERTISED_ADDRESSES"
ENV_RECONNECT_BACKOFF_S: Final = "RECONNECT_BACKOFF_S"
ENV_RECONNECT_BACKOFF_MAX_S: Final = "RECONNECT_BACKOFF_MAX_S"
ENV_API_TLS_CERT_FILE: Final = "API_TLS_CERT_FILE"
ENV_API_TLS_KEY_FILE: Final = "API_TLS_KEY_FILE"

#: SASL mechanisms the product can use with the broker (AMQP 0.9.1 and the stream protocol).
SASL_MECHANISMS: Final = ("PLAIN", "EXTERNAL")

EXCHANGE: Final = "events"
STREAM_PREFIX: Final = "events.p"


class SettingsError(ConfigurationError):
    """An environment variable holds a value that cannot be used; the message names it."""


#: Most partitions a deployment may have (stream names keep three digits).
MAX_PARTITIONS: Final = 1000


@dataclass(frozen=True)
class AmqpEndpoint:
    """Host, port, credentials and virtual host taken from ``AMQP_URL``."""

    host: str
    port: int
    username: str
    password: str
    vhost: str


def parse_amqp_url(url: str) -> AmqpEndpoint:
    """Split an ``amqp://user:pass@host:port/vhost`` URL (vhost percent-encoded, ``%2F`` = ``/``;
    the port defaults to 5672, or 5671 for ``amqps://``).

    Raises:
        SettingsError: the scheme is not amqp/amqps or the host is missing.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"amqp", "amqps"} or not parts.hostname:
        raise SettingsError(f"{ENV_AMQP_URL} must look like amqp://user:pass@host:5672/vhost")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return AmqpEndpoint(
        host=parts.hostname,
        port=parts.port or (5671 if parts.scheme == "amqps" else 5672),
        username=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        vhost=vhost,
    )


Address = tuple[str, int]


def parse_addresses(name: str, raw: str, default_port: int) -> tuple[Address, ...]:
    """Split a comma-separated list of ``host:port`` (``host`` alone takes ``default_port``;
    an IPv6 address in brackets: ``[::1]:5552``) into ``((host, port), ...)`` in order,
    duplicates dropped.

    Raises:
        SettingsError: an entry is empty, a port is not in 1..65535 (the message names ``name``).
    """
    addresses: list[Address] = []
    for entry in raw.split(","):
        text = entry.strip()
        if not text:
            raise SettingsError(f"{name}={raw!r} has an empty entry (host:port,host:port,...)")
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise SettingsError(f"{name}: {text!r} is not [ipv6]:port")
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, ""
        if not host:
            raise SettingsError(f"{name}: {text!r} names no host")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError as exc:
            raise SettingsError(f"{name}: {text!r} has a port that is not a number") from exc
        if not 1 <= port <= 65535:  # noqa: PLR2004 - the TCP port range
            raise SettingsError(f"{name}: port {port} must be in 1..65535")
        if (host, port) not in addresses:
            addresses.append((host, port))
    return tuple(addresses)


def default_secrets_dir(env: Mapping[str, str]) -> str:
    """``$XDG_CONFIG_HOME/friendship-stream``, else ``~/.config/friendship-stream``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return str(Path(base) / "friendship-stream")


def check_database_url(url: str) -> None:
    """Refuse a ``DATABASE_URL`` that is not ``postgresql://.../database``.

    Raises:
        SettingsError: another scheme (a SQLAlchemy driver suffix such as ``+psycopg`` is
            allowed), or no database name in the path.
    """
    parts = urlsplit(url)
    if parts.scheme.split("+", 1)[0] not in {"postgresql", "postgres"}:
        raise SettingsError(f"{ENV_DATABASE_URL} must start with postgresql://")
    if not parts.path.lstrip("/"):
        raise SettingsError(f"{ENV_DATABASE_URL} names no database (postgresql://host/NAME)")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def parse_metrics_port(raw: str | None) -> int | None:
    """``PROCESSOR_METRICS_PORT``: unset or empty = ``DEFAULT_METRICS_PORT``; ``off`` (or
    ``none``, ``disabled``) = no metrics server (None); ``0`` = an ephemeral port the processor
    logs at start; else a TCP port 1..65535.

    Raises:
        SettingsError: anything else (the message names the variable).
    """
    text = (raw or "").strip().lower()
    if not text:
        return DEFAULT_METRICS_PORT
    if text in METRICS_OFF:
        return None
    try:
        port = int(text)
    except ValueError as exc:
        raise SettingsError(
            f"{ENV_METRICS_PORT}={raw!r} is not a port (0..65535, 0 = any free port, or off)"
        ) from exc
    if not 0 <= port <= 65535:  # noqa: PLR2004 - the TCP port range
        raise SettingsError(f"{ENV_METRICS_PORT}={port} must be in 0..65535 (or off)")
    return port


def parse_processes(raw: str | None) -> int | None:
    """``PROCESSOR_PROCESSES``: unset, empty or ``auto`` = None (one member process per CPU core,
    at most the partition count: ``processor.supervisor.process_count``); else an integer >= 1.

    Raises:
        SettingsError: anything else (the message names the variable).
    """
    text = (raw or "").strip().lower()
    if text in {"", "auto"}:
        return None
    try:
        count = int(text)
    except ValueError as exc:
        raise SettingsError(
            f"{ENV_PROCESSES}={raw!r} is not a number of processes or auto"
        ) from exc
    if count < 1:
        raise SettingsError(f"{ENV_PROCESSES}={count} must be >= 1 (or auto)")
    return count


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a yes/no value (1, true, yes, on, 0, false, ...)")


def _advertised(env: Mapping[str, str]) -> bool:
    raw = (env.get(ENV_STREAM_ADVERTISED_ADDRESSES) or "follow").strip().lower()
    if raw not in {"follow", "ignore"}:
        raise SettingsError(f"{ENV_STREAM_ADVERTISED_ADDRESSES}={raw!r} must be follow or ignore")
    return raw == "follow"


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """Process configuration.

    Attributes:
        amqp_url: broker URL; its vhost isolates a deployment.
        stream_port: RabbitMQ stream protocol port (host, credentials, vhost from ``amqp_url``).
        database_url: PostgreSQL URL; its database isolates a deployment.
        partitions: number of partition streams ``events.p000``...
        threads: worker threads applying batches in one process (each batch: one transaction).
        processes: member processes ``processor run`` starts on this machine; None = ``auto``
            (one per CPU core, at most the partition count).
        batch_size: most events in one batch (one transaction).
        batch_wait_s: longest wait, in seconds, for a batch to fill before it is applied (the
            live reader hands a batch over sooner: see ``processor.reading.feed``).
        stream_max_age: stream retention by age (RabbitMQ ``x-max-age``, e.g. ``"30D"``); empty
            keeps everything, which replay needs.
        stream_max_length_bytes: stream retention by size in bytes; 0 keeps everything.
        stream_max_segment_size_bytes: size of a stream segment file in bytes (0 = broker
            default, 500 MB); retention removes whole segments.
        lease_interval_s: how often, in seconds, a process heartbeats, rebalances and looks for
            partitions to own.
        member_timeout_s: heartbeat age, in seconds, after which a member whose connections
            linger (paused, cut off) is fenced and its partitions taken over. It must exceed the
            longest pause of a healthy member's heartbeat loop; a crashed member's partitions
            are taken over within ``lease_interval_s`` without waiting for it.
        log_level: the root log level (``INFO``: no child's id or payload is ever logged).
        secrets_dir: where the key files live when the keys are not given inline
            (``hash.key``, ``kek.key``; made by ``just services``, see ``processor.privacy``).
            Default: ``$XDG_CONFIG_HOME/friendship-stream`` (``~/.config/friendship-stream``),
            one place per machine and user, like the default deployment every checkout
            shares.
        hash_key: base64 of the key of the keyed hash (HMAC-SHA-256) that stores API tokens and
            names children in logs and erasure records; empty: ``secrets_dir/hash.key``.
        key_encryption_key: base64 of the 32-byte key that wraps each child's data key;
            empty: ``secrets_dir/kek.key``.
        metrics_public: serve the API's ``/metrics`` without a token.
        fold_rules: where the fold versions come from: empty for the built-in ones
            (``projections.rules.BUILT_IN``), or ``module:attribute`` naming a sequence of
            ``FoldRules`` (a rule change rehearsed before it ships; see README "Changing a rule").
        stream_username, stream_password: credentials for the stream protocol when they differ
            from ``amqp_url``'s (the API publishes as one broker user and reads the log's tails
            as another; empty: ``amqp_url``'s).
        metrics_port: the TCP port of a processor's own Prometheus metrics (``GET /metrics``);
            0 = an ephemeral port (logged at start), None = no metrics server. Two processors
            on one machine need different ports (or 0): a port in use stops the processor at
            start with exit code 2.
        metrics_host: the address the processor's metrics server binds (``127.0.0.1``: this
            machine only; ``0.0.0.0`` for a Prometheus elsewhere).
        metrics_token: when set, a scrape of the processor's metrics needs
            ``Authorization: Bearer <token>`` (401 otherwise).
        write_token_ttl_s: how long, in seconds, the token ``POST /v1/events`` answers stays
            usable as a read's ``after`` (read-your-writes); expired rows are deleted.
        wait_safety_poll_s: seconds between two re-checks of the API's waiting reads while its
            LISTEN connection works and nothing was announced (a safety net; default
            ``tuning.WAIT_SAFETY_POLL_S``; the tests set it high so notifications alone wake).
        amqp_addresses_raw: ``AMQP_ADDRESSES``, the broker nodes' AMQP ``host:port`` list
            (empty: ``amqp_url``'s host and port). Scheme, credentials and vhost always come
            from ``amqp_url``. Publishers try them in order and fail over (``amqp_addresses``).
        stream_addresses_raw: ``STREAM_ADDRESSES``, the nodes' stream-protocol ``host:port``
            list: where the stream client makes first contact; after that it follows the
            addresses the broker advertises (empty: each AMQP address's host with
            ``stream_port``; see ``stream_addresses``).
        stream_follow_advertised: ``STREAM_ADVERTISED_ADDRESSES`` ``follow`` (default): after
            first contact, read each stream on the node hosting it, at the host and port that
            node advertises (``Metadata``); ``ignore``: every stream connection goes to the
            ``STREAM_ADDRESSES`` (a proxy or load balancer in front of the nodes, which must
            then reach a member of every stream).
        stream_replication_factor: members of each partition stream when it is declared
            (RabbitMQ ``x-initial-cluster-size``): 1 on one node, 3 on a three-node cluster.
        stream_tls: TLS on the stream port; None (unset) = the same as ``amqp_url``
            (``amqps://`` = TLS).
        broker_tls_ca_file: PEM file of the CAs that sign the broker's certificates (empty: the
            system's CAs).
        broker_tls_cert_file, broker_tls_key_file: a client certificate and its key (PEM) shown
            to the broker, for ``EXTERNAL`` authentication (both or neither).
        broker_sasl_mechanism: ``PLAIN`` (user and password of ``amqp_url``) or ``EXTERNAL``
            (the client certificate's subject; needs TLS and a client certificate). The client
            asks the broker which it offers and refuses clearly when it is not among them.
        stream_heartbeat_s: the heartbeat, in seconds, the stream client asks for at tune (the
            lower of it and the broker's wins; 0 = the broker's; rounded up to whole seconds,
            the protocol's unit).
        stream_read_deadline_s: seconds without any frame (or without the answer to a request)
            after which a stream connection is taken as dead and reconnected; 0 = two
            heartbeats: the stream client doubles the heartbeat it negotiated with the broker
            (``read_deadline_s`` is the same from the settings alone).
        reconnect_backoff_s, reconnect_backoff_max_s: the reconnect back-off of the stream
            reader and the publishers: the first wait and its cap, in seconds (exponential with
            full jitter).
        api_tls_cert_file, api_tls_key_file: HTTPS for the API (PEM certificate chain and key,
            both or neither; empty: plain HTTP).
    """

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    stream_port: int = 5552
    database_url: str = "postgresql://postgres@127.0.0.1:5432/events"
    partitions: int = 16
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    threads: int = 4
    processes: int | None = None
    batch_size: int = 2000
    batch_wait_s: float = 0.005
    stream_max_age: str = ""
    stream_max_length_bytes: int = 0
    stream_max_segment_size_bytes: int = 0
    lease_interval_s: float = 1.0
    member_timeout_s: float = 10.0
    log_level: str = "INFO"
    secrets_dir: str = field(default_factory=lambda: default_secrets_dir(os.environ))
    hash_key: str = field(default="", repr=False)
    key_encryption_key: str = field(default="", repr=False)
    metrics_public: bool = False
    fold_rules: str = ""
    stream_username: str = ""
    stream_password: str = field(default="", repr=False)
    metrics_port: int | None = DEFAULT_METRICS_PORT
    metrics_host: str = "127.0.0.1"
    metrics_token: str = field(default="", repr=False)
    write_token_ttl_s: float = 600.0
    wait_safety_poll_s: float = tuning.WAIT_SAFETY_POLL_S
    amqp_addresses_raw: str = ""
    stream_addresses_raw: str = ""
    stream_replication_factor: int = 1
    stream_tls: bool | None = None
    broker_tls_ca_file: str = ""
    broker_tls_cert_file: str = ""
    broker_tls_key_file: str = ""
    broker_sasl_mechanism: str = "PLAIN"
    stream_heartbeat_s: float = 10.0
    stream_read_deadline_s: float = 0.0
    stream_follow_advertised: bool = True
    reconnect_backoff_s: float = tuning.RECONNECT_MIN_S
    reconnect_backoff_max_s: float = tuning.RECONNECT_MAX_S
    api_tls_cert_file: str = ""
    api_tls_key_file: str = ""
    amqp: AmqpEndpoint = field(init=False)
    amqp_addresses: tuple[Address, ...] = field(init=False)
    stream_addresses: tuple[Address, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise SettingsError(
                f"{ENV_PARTITIONS}={self.partitions} must be in 1..{MAX_PARTITIONS}"
            )
        amqp = parse_amqp_url(self.amqp_url)
        object.__setattr__(self, "amqp", amqp)
        check_database_url(self.database_url)
        amqp_addresses = (
            parse_addresses(ENV_AMQP_ADDRESSES, self.amqp_addresses_raw, amqp.port)
            if self.amqp_addresses_raw.strip()
            else ((amqp.host, amqp.port),)
        )
        object.__setattr__(self, "amqp_addresses", amqp_addresses)
        if self.stream_addresses_raw.strip():
            stream_addresses = parse_addresses(
                ENV_STREAM_ADDRESSES, self.stream_addresses_raw, self.stream_port
            )
        else:
            hosts = dict.fromkeys(host for host, _ in amqp_addresses)
            stream_addresses = tuple((host, self.stream_port) for host in hosts)
        object.__setattr__(self, "stream_addresses", stream_addresses)
        if self.stream_replication_factor < 1:
            raise SettingsError(f"{ENV_STREAM_REPLICATION_FACTOR} must be >= 1")
        mechanism = self.broker_sasl_mechanism.upper()
        if mechanism not in SASL_MECHANISMS:
            raise SettingsError(
                f"{ENV_BROKER_SASL_MECHANISM}={self.broker_sasl_mechanism!r} must be one of "
                + ", ".join(SASL_MECHANISMS)
            )
        object.__setattr__(self, "broker_sasl_mechanism", mechanism)
        if bool(self.broker_tls_cert_file) != bool(self.broker_tls_key_file):
            raise SettingsError(
                f"{ENV_BROKER_TLS_CERT_FILE} and {ENV_BROKER_TLS_KEY_FILE} go together"
            )
        if bool(self.api_tls_cert_file) != bool(self.api_tls_key_file):
            raise SettingsError(f"{ENV_API_TLS_CERT_FILE} and {ENV_API_TLS_KEY_FILE} go together")
        if mechanism == "EXTERNAL" and not (self.stream_tls_enabled and self.broker_tls_cert_file):
            raise SettingsError(
                f"{ENV_BROKER_SASL_MECHANISM}=EXTERNAL needs TLS (amqps://) and a client "
                f"certificate ({ENV_BROKER_TLS_CERT_FILE}, {ENV_BROKER_TLS_KEY_FILE})"
            )
        if self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise SettingsError(
                f"{ENV_RECONNECT_BACKOFF_MAX_S} must be >= {ENV_RECONNECT_BACKOFF_S}"
            )

    @property
    def amqp_tls(self) -> bool:
        """AMQP over TLS: ``amqp_url`` is ``amqps://``."""
        return urlsplit(self.amqp_url).scheme == "amqps"

    @property
    def stream_tls_enabled(self) -> bool:
        """TLS on the stream port: ``STREAM_TLS`` when set, else the same as ``amqp_tls``."""
        return self.amqp_tls if self.stream_tls is None else self.stream_tls

    @property
    def read_deadline_s(self) -> float:
        """Seconds of silence after which a stream connection is dead: ``stream_read_deadline_s``,
        or two heartbeats when that is 0 (or 30 s when the heartbeat is off too)."""
        if self.stream_read_deadline_s > 0:
            return self.stream_read_deadline_s
        return 2 * self.stream_heartbeat_s if self.stream_heartbeat_s > 0 else 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment (or ``env``), defaults from docs/contract.md §7.

        Raises:
            SettingsError: a variable is malformed or out of range.
        """
        source = os.environ if env is None else env
        defaults = cls()
        return cls(
            amqp_url=source.get(ENV_AMQP_URL) or defaults.amqp_url,
            stream_port=_int(source, ENV_STREAM_PORT, defaults.stream_port, 1),
            database_url=source.get(ENV_DATABASE_URL) or defaults.database_url,
            partitions=_int(source, ENV_PARTITIONS, defaults.partitions, 1),
            api_host=source.get(ENV_API_HOST) or defaults.api_host,
            api_port=_int(source, ENV_API_PORT, defaults.api_port, 1),
            threads=_int(source, ENV_THREADS, defaults.threads, 1),
            processes=parse_processes(source.get(ENV_PROCESSES)),
            batch_size=_int(source, ENV_BATCH_SIZE, defaults.batch_size, 1),
            batch_wait_s=_float(source, ENV_BATCH_WAIT_S, defaults.batch_wait_s),
            stream_max_age=source.get(ENV_STREAM_MAX_AGE, defaults.stream_max_age),
            stream_max_length_bytes=_int(
                source, ENV_STREAM_MAX_BYTES, defaults.stream_max_length_bytes
            ),
            stream_max_segment_size_bytes=_int(source, ENV_STREAM_SEGMENT_BYTES, 0),
            lease_interval_s=_float(source, ENV_LEASE_INTERVAL_S, defaults.lease_interval_s, 0.05),
            member_timeout_s=_float(source, ENV_MEMBER_TIMEOUT_S, defaults.member_timeout_s, 0.5),
            log_level=source.get(ENV_LOG_LEVEL) or defaults.log_level,
            secrets_dir=source.get(ENV_SECRETS_DIR) or default_secrets_dir(source),
            hash_key=source.get(ENV_HASH_KEY, ""),
            key_encryption_key=source.get(ENV_KEY_ENCRYPTION_KEY, ""),
            metrics_public=_bool(source, ENV_METRICS_PUBLIC, defaults.metrics_public),
            fold_rules=source.get(ENV_FOLD_RULES, ""),
            stream_username=source.get(ENV_STREAM_USERNAME, ""),
            stream_password=source.get(ENV_STREAM_PASSWORD, ""),
            metrics_port=parse_metrics_port(source.get(ENV_METRICS_PORT)),
            metrics_host=(source.get(ENV_METRICS_HOST) or "").strip() or defaults.metrics_host,
            metrics_token=(source.get(ENV_METRICS_TOKEN) or "").strip(),
            write_token_ttl_s=_float(
                source, ENV_WRITE_TOKEN_TTL_S, defaults.write_token_ttl_s, 1.0
            ),
            wait_safety_poll_s=_float(
                source, ENV_WAIT_SAFETY_POLL_S, defaults.wait_safety_poll_s, 0.1
            ),
            amqp_addresses_raw=source.get(ENV_AMQP_ADDRESSES, ""),
            stream_addresses_raw=source.get(ENV_STREAM_ADDRESSES, ""),
            stream_replication_factor=_int(
                source, ENV_STREAM_REPLICATION_FACTOR, defaults.stream_replication_factor, 1
            ),
            stream_tls=(
                _bool(source, ENV_STREAM_TLS, False)
                if (source.get(ENV_STREAM_TLS) or "").strip()
                else None
            ),
            broker_tls_ca_file=source.get(ENV_BROKER_TLS_CA_FILE, ""),
            broker_tls_cert_file=source.get(ENV_BROKER_TLS_CERT_FILE, ""),
            broker_tls_key_file=source.get(ENV_BROKER_TLS_KEY_FILE, ""),
            broker_sasl_mechanism=(
                source.get(ENV_BROKER_SASL_MECHANISM) or defaults.broker_sasl_mechanism
            ),
            stream_heartbeat_s=_float(
                source, ENV_STREAM_HEARTBEAT_S, defaults.stream_heartbeat_s, 0.0
            ),
            stream_read_deadline_s=_float(
                source, ENV_STREAM_READ_DEADLINE_S, defaults.stream_read_deadline_s, 0.0
            ),
            stream_follow_advertised=_advertised(source),
            reconnect_backoff_s=_float(
                source, ENV_RECONNECT_BACKOFF_S, defaults.reconnect_backoff_s, 0.01
            ),
            reconnect_backoff_max_s=_float(
                source, ENV_RECONNECT_BACKOFF_MAX_S, defaults.reconnect_backoff_max_s, 0.01
            ),
            api_tls_cert_file=source.get(ENV_API_TLS_CERT_FILE, ""),
            api_tls_key_file=source.get(ENV_API_TLS_KEY_FILE, ""),
        )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (used by the CLI flags and the tests)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def stream_name(partition: int) -> str:
    """The stream of a partition: ``events.p`` + the partition as three digits (CONTRACT §5)."""
    return f"{STREAM_PREFIX}{partition:03d}"
