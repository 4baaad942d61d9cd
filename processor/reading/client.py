"""The product's client of the RabbitMQ stream protocol: live reads, replay reads, offset probes,
tails and stream metadata all go through it (rstream is only a test oracle and a bench baseline).

Why not rstream: events reach the streams through the AMQP 0.9.1 exchange, and a stream writes
what its writer's mailbox holds as one chunk, so this log has about one or two messages per
chunk. The read rate is then decided by the cost per chunk, and rstream decodes every frame
generically and sends one ``Credit`` frame per chunk. This client parses frames out of large
socket reads, checks each chunk's CRC, and grants credit in bulk. That makes reading several
times faster.

Scope: connect (plain TCP, or TLS with ``processor.tls.broker_ssl_context`` when
``STREAM_TLS`` / ``amqps://``), peer properties, SASL mechanism negotiation (the broker lists the
mechanisms it offers; ``BROKER_SASL_MECHANISM`` ``PLAIN`` sends user and password, ``EXTERNAL``
an empty response: the broker takes the user from the client certificate's CN), tune
(``frame_max`` and heartbeat: the lower non-zero value of the broker's and ours wins), open,
``Metadata``, subscribe from an offset, deliveries, credit, ``MetadataUpdate``, heartbeats,
close. No publishing, no offset tracking, no reconnection: a connection that fails resolves
``failed`` (the live ``StreamReader`` opens another and resubscribes from its sinks' next
offsets; a replay is dropped as a whole and can be run again).

Deadlines: every answer the client waits for, and the connection as a whole, have a read
deadline (``Settings.read_deadline_s``: ``STREAM_READ_DEADLINE_S``, else two heartbeats): when
no frame at all arrives for that long (the broker sends heartbeats while it has nothing else to
say) the connection is taken as dead, closed, and ``failed`` resolves with
``ReadDeadlineExceeded``. While a consumer pushes back (a chunk handler's awaitable) the
deadline is paused: the silence is ours. Heartbeats are sent at the negotiated interval.

Errors: every response code of the protocol has its name (``RESPONSE_CODES``, from
``PROTOCOL.adoc``); the ones a caller must act on differently have their own error types
(``processor.reading.errors``: ``StreamDoesNotExist``, ``StreamNotAvailable``,
``AuthenticationFailed``, ``SaslMechanismUnavailable``, ``AccessRefused``, ``FrameTooLarge``).

Cluster: ``open_first_contact`` tries the ``STREAM_ADDRESSES`` in order (failover); ``Metadata``
answers which brokers exist (reference, advertised host and port) and, per stream, its leader
and replicas. After first contact connections go to the host and port a broker advertises
(``STREAM_ADVERTISED_ADDRESSES=ignore`` keeps every connection on the first-contact addresses,
for a proxy or load balancer in front of the nodes). ``candidates`` orders a stream's members
for reading: replicas first (least loaded first), the leader last.

Reference: ``deps/rabbitmq_stream/docs/PROTOCOL.adoc`` in rabbitmq-server. Every frame is
``uint32 size | uint16 key | uint16 version | payload``, big-endian; answers set bit 15 of the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from processor import tuning
from processor.reading.chunks import deliver_records
from processor.reading.errors import (
    AccessRefused,
    AuthenticationFailed,
    BrokerCertificateRejected,
    BrokerUnreachable,
    FrameTooLarge,
    ReadDeadlineExceeded,
    SaslMechanismUnavailable,
    StreamDoesNotExist,
    StreamNotAvailable,
    StreamProtocolError,
)
from processor.reading.log_record import LogRecord
from processor.settings import Address, Settings
from processor.tls import broker_ssl_context

log = logging.getLogger(__name__)

_PEER_PROPERTIES: Final = 0x11
_SASL_HANDSHAKE: Final = 0x12
_SASL_AUTHENTICATE: Final = 0x13
_TUNE: Final = 0x14
_OPEN: Final = 0x15
_CLOSE: Final = 0x16
_HEARTBEAT: Final = 0x17
_SUBSCRIBE: Final = 0x07
_DELIVER: Final = 0x08
_CREDIT: Final = 0x09
_UNSUBSCRIBE: Final = 0x0C
_METADATA: Final = 0x0F
_METADATA_UPDATE: Final = 0x10
_RESPONSE: Final = 0x8000
_OK: Final = 1
_NO_SUBSCRIPTION: Final = 0x04

#: The stream protocol's response codes and their names (``PROTOCOL.adoc``, "Response Codes").
RESPONSE_CODES: Final[Mapping[int, str]] = {
    0x01: "OK",
    0x02: "stream does not exist",
    0x03: "subscription ID already exists",
    0x04: "subscription ID does not exist",
    0x05: "stream already exists",
    0x06: "stream not available",
    0x07: "SASL mechanism not supported",
    0x08: "authentication failure",
    0x09: "SASL error",
    0x0A: "SASL challenge",
    0x0B: "SASL authentication failure loopback",
    0x0C: "virtual host access failure",
    0x0D: "unknown frame",
    0x0E: "frame too large",
    0x0F: "internal error",
    0x10: "access refused",
    0x11: "precondition failed",
    0x12: "publisher does not exist",
    0x13: "no offset",
}
_ERROR_TYPES: Final[Mapping[int, type[StreamProtocolError]]] = {
    0x02: StreamDoesNotExist,
    0x06: StreamNotAvailable,
    0x08: AuthenticationFailed,
    0x09: AuthenticationFailed,
    0x0B: AuthenticationFailed,
    0x0C: AccessRefused,
    0x0E: FrameTooLarge,
    0x10: AccessRefused,
}
#: The leader reference of a stream the broker has no leader for.
_NO_REFERENCE: Final = 0xFFFF

_HEADER: Final = struct.Struct(">IHH")  # size, key, version
_KEY_VERSION: Final = struct.Struct(">HH")
_CORRELATED: Final = struct.Struct(">IH")  # correlation id, response code
_UINT16: Final = struct.Struct(">H")
_UINT32: Final = struct.Struct(">I")
_INT32: Final = struct.Struct(">i")
_READ_BYTES: Final = 1 << 20
#: The asyncio stream's buffer limit, bytes: it stops reading the socket above twice this. At
#: the default (64 KiB) a read of ``_READ_BYTES`` emptied a paused buffer nearly every time, and
#: each resume registered the socket with the selector again (a system call per read).
_STREAM_BUFFER_LIMIT: Final = 4 * _READ_BYTES
#: Most subscriptions one connection carries (the protocol's ids are one byte).
MAX_SUBSCRIPTIONS: Final = 250


def describe_code(code: int) -> str:
    """``code 0x06 (stream not available)``: a response code with its protocol name."""
    return f"code 0x{code:02x} ({RESPONSE_CODES.get(code, 'not in the stream protocol')})"


def protocol_error(code: int, what: str) -> StreamProtocolError:
    """The error for response ``code`` to a request described by ``what`` (``subscribe to
    events.p003``), of the type a caller acts on (``StreamDoesNotExist``...)."""
    kind = _ERROR_TYPES.get(code, StreamProtocolError)
    return kind(f"the broker refused to {what}: {describe_code(code)}", code)


class OffsetSpec(IntEnum):
    """Where a subscription starts (the stream protocol's offset specification types)."""

    FIRST = 1
    LAST = 2
    NEXT = 3
    OFFSET = 4


#: Takes one chunk of a subscription: ``(first offset, records)``, its records in offset order
#: (``chunks.deliver_records``: unreadable entries are records with an ``error``). May return
#: an awaitable: reading pauses until it is done.
OnChunk = Callable[[int, list[LogRecord]], Awaitable[None] | None]
#: Told of a ``MetadataUpdate``: ``(stream, code)``. The broker has dropped this connection's
#: subscriptions of that stream (its member went away, or it was deleted).
OnMetadataUpdate = Callable[[str, int], None]


@dataclass(frozen=True)
class Broker:
    """A broker node as ``Metadata`` lists it: its reference and advertised stream address."""

    reference: int
    host: str
    port: int

    @property
    def address(self) -> Address:
        """``(host, port)`` as advertised."""
        return (self.host, self.port)


@dataclass(frozen=True)
class StreamMetadata:
    """One stream's answer in ``Metadata``.

    Attributes:
        stream: the stream's name.
        code: the response code for it (1 = OK, 2 = does not exist, 6 = not available).
        leader: the broker hosting its leader (None when there is none now).
        replicas: the brokers hosting its replicas (the leader is not among them).
    """

    stream: str
    code: int
    leader: Broker | None
    replicas: tuple[Broker, ...]

    @property
    def members(self) -> tuple[Broker, ...]:
        """Every broker hosting the stream: replicas, then the leader."""
        return self.replicas + ((self.leader,) if self.leader is not None else ())

    def error(self) -> StreamProtocolError | None:
        """Why the stream cannot be read now (None when it can: OK and a member exists)."""
        if self.code != _OK:
            return protocol_error(self.code, f"give the metadata of {self.stream}")
        if not self.members:
            return StreamNotAvailable(f"stream {self.stream} has no member now", 6)
        return None


@dataclass(frozen=True)
class Metadata:
    """A ``Metadata`` answer: the brokers and the streams asked about (by name)."""

    brokers: tuple[Broker, ...]
    streams: dict[str, StreamMetadata] = field(default_factory=dict)


def parse_metadata(frame: bytes) -> Metadata:
    """Decode a ``MetadataResponse`` (the frame after its size field). Pure.

    Raises:
        StreamProtocolError: the frame is shorter than its contents say.
    """
    try:
        pos = 8  # key, version, correlation id
        (count,) = _INT32.unpack_from(frame, pos)
        pos += 4
        brokers: dict[int, Broker] = {}
        for _ in range(count):
            (reference,) = _UINT16.unpack_from(frame, pos)
            host, pos = _read_string(frame, pos + 2)
            (port,) = _UINT32.unpack_from(frame, pos)
            pos += 4
            brokers[reference] = Broker(reference, host, port)
        (count,) = _INT32.unpack_from(frame, pos)
        pos += 4
        streams: dict[str, StreamMetadata] = {}
        for _ in range(count):
            name, pos = _read_string(frame, pos)
            code, leader, replica_count = struct.unpack_from(">HHi", frame, pos)
            pos += 8
            references = struct.unpack_from(f">{replica_count}H", frame, pos)
            pos += 2 * replica_count
            replicas = tuple(brokers[r] for r in references if r in brokers and r != leader)
            streams[name] = StreamMetadata(name, code, brokers.get(leader), replicas)
    except struct.error as exc:
        raise StreamProtocolError(f"a metadata answer is cut short ({exc})") from exc
    return Metadata(tuple(brokers.values()), streams)


def _read_string(frame: bytes, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from(">h", frame, pos)
    pos += 2
    if length < 0:
        return "", pos
    if pos + length > len(frame):
        raise struct.error("string beyond the frame")
    return frame[pos : pos + length].decode(errors="replace"), pos + length


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _frame(key: int, payload: bytes, version: int = 1) -> bytes:
    return _HEADER.pack(len(payload) + 4, key, version) + payload


def _properties(values: dict[str, str]) -> bytes:
    return struct.pack(">i", len(values)) + b"".join(
        _string(k) + _string(v) for k, v in values.items()
    )


def negotiate(ours: int, theirs: int) -> int:
    """The lower non-zero of two tune values (0 = no limit / no heartbeat); 0 when both are 0."""
    offered = [value for value in (ours, theirs) if value > 0]
    return min(offered) if offered else 0


@dataclass(frozen=True)
class ConnectOptions:
    """How to open a stream connection (built from ``Settings`` by ``connect_options``).

    Attributes:
        username, password: for ``PLAIN`` (ignored by ``EXTERNAL``).
        vhost: the virtual host.
        mechanism: the SASL mechanism, ``PLAIN`` or ``EXTERNAL``.
        ssl_context: TLS when set (the server's host name is verified against the address).
        heartbeat_s: the heartbeat we ask for, whole seconds (0 = the broker's).
        read_deadline_s: seconds without a frame after which the connection is dead; 0 = two
            negotiated heartbeats (30 s when no heartbeat was negotiated).
        frame_max: the largest frame we accept, bytes (0 = the broker's limit).
        follow_advertised: connect to the brokers' advertised addresses after first contact.
        ca_file: ``BROKER_TLS_CA_FILE`` (named in certificate errors only).
    """

    username: str
    password: str = field(repr=False)
    vhost: str
    mechanism: str = "PLAIN"
    ssl_context: ssl.SSLContext | None = None
    heartbeat_s: int = 0
    read_deadline_s: float = 0.0
    frame_max: int = tuning.STREAM_FRAME_MAX
    follow_advertised: bool = True
    ca_file: str = ""


def connect_options(settings: Settings) -> ConnectOptions:
    """The ``ConnectOptions`` of ``settings``: credentials and vhost (``amqp_url``, or
    ``STREAM_USERNAME``/``_PASSWORD``), TLS (``stream_tls_enabled``, ``BROKER_TLS_*``), SASL
    mechanism, heartbeat (rounded up to whole seconds) and read deadline.

    Raises:
        SettingsError: a TLS file cannot be used.
    """
    amqp = settings.amqp
    heartbeat = settings.stream_heartbeat_s
    return ConnectOptions(
        username=settings.stream_username or amqp.username,
        password=settings.stream_password if settings.stream_username else amqp.password,
        vhost=amqp.vhost,
        mechanism=settings.broker_sasl_mechanism,
        ssl_context=broker_ssl_context(settings) if settings.stream_tls_enabled else None,
        heartbeat_s=max(1, math.ceil(heartbeat)) if heartbeat > 0 else 0,
        read_deadline_s=settings.stream_read_deadline_s,
        follow_advertised=settings.stream_follow_advertised,
        ca_file=settings.broker_tls_ca_file,
    )


class StreamConnection:
    """One stream protocol connection that reads subscriptions (use on one asyncio loop).

    Args:
        host, port: the broker node and its stream port.
        options: credentials, TLS, SASL mechanism, heartbeat, read deadline, frame limit.
        name: the connection name shown in the management UI.

    Attributes:
        failed: resolves with the error that ended the connection (set by ``open``).
        frame_max, heartbeat_s: the negotiated values (after ``open``).
        read_deadline_s: the effective read deadline, seconds (after ``open``).
        on_metadata_update: called for each ``MetadataUpdate`` (the broker dropped this
            connection's subscriptions of that stream); when None the connection fails instead.
        advertised: the host and port the node advertises (its ``Open`` answer), None when it
            does not say: the key under which the node appears in ``Metadata``.
        chunks: chunks received so far.
    """

    def __init__(
        self, host: str, port: int, options: ConnectOptions, name: str = "friendship-stream"
    ) -> None:
        self.address: Address = (host, port)
        self._options = options
        self._name = name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._correlation = itertools.count(1)
        self._answers: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._handlers: dict[int, OnChunk] = {}
        self._streams: dict[int, str] = {}
        self._credit_step: dict[int, int] = {}
        self._credit_due: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: asyncio.Future[None] | None = None
        self._closing = False
        self.frame_max = options.frame_max
        self.heartbeat_s = 0
        self.read_deadline_s = options.read_deadline_s or 30.0
        self._last_frame_at = time.monotonic()
        self._paused = 0
        self.on_metadata_update: OnMetadataUpdate | None = None
        self.advertised: Address | None = None
        self.chunks = 0

    def __repr__(self) -> str:
        return f"StreamConnection({self.address[0]}:{self.address[1]})"

    @property
    def healthy(self) -> bool:
        """Open and not failed."""
        return (
            self._writer is not None
            and not self._closing
            and self.failed is not None
            and not self.failed.done()
        )

    def abort(self, error: Exception) -> None:
        """End the connection now with ``error`` (``failed`` resolves with it); the caller still
        calls ``close`` to stop its tasks."""
        self._fail(error)
        if self._writer is not None:
            self._writer.transport.abort()

    async def open(self) -> None:
        """Connect (TLS when configured), negotiate SASL, authenticate, tune and open the vhost.

        Raises:
            SaslMechanismUnavailable: the broker does not offer the configured mechanism (the
                message names the ones it offers).
            AuthenticationFailed: the broker refused the login.
            AccessRefused: the user may not use the virtual host.
            ReadDeadlineExceeded: the broker did not answer within the read deadline.
            StreamProtocolError: any other refusal or an unexpected frame.
            BrokerCertificateRejected: TLS refused the broker's certificate (not signed by
                ``BROKER_TLS_CA_FILE``, or not for this host).
            OSError: the node cannot be reached, or TLS failed otherwise (``ssl.SSLError``).
        """
        host, port = self.address
        options = self._options
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    limit=_STREAM_BUFFER_LIMIT,
                    ssl=options.ssl_context,
                    server_hostname=host if options.ssl_context is not None else None,
                ),
                self.read_deadline_s,
            )
        except TimeoutError as exc:
            raise ReadDeadlineExceeded(
                f"connecting to {host}:{port} took longer than {self.read_deadline_s:g} s"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise BrokerCertificateRejected(
                f"TLS to {host}:{port}: the broker's certificate is refused ({exc.verify_message}"
                f"); BROKER_TLS_CA_FILE={self._options.ca_file or '(system CAs)'} must hold the "
                f"CA that signed it, and it must name {host}"
            ) from exc
        self.failed = asyncio.get_running_loop().create_future()
        properties = {"product": "friendship-stream", "connection_name": self._name}
        await self._handshake(_PEER_PROPERTIES, _properties(properties), "exchange properties")
        offered = self._mechanisms(await self._handshake(_SASL_HANDSHAKE, b"", "list SASL"))
        if options.mechanism not in offered:
            raise SaslMechanismUnavailable(
                f"the broker at {host}:{port} does not offer SASL mechanism "
                f"{options.mechanism} (BROKER_SASL_MECHANISM); it offers: "
                f"{', '.join(offered) or 'none'}",
                offered,
            )
        response = (
            b"\0" + options.username.encode() + b"\0" + options.password.encode()
            if options.mechanism == "PLAIN"
            else b""
        )
        try:
            await self._handshake(
                _SASL_AUTHENTICATE,
                _string(options.mechanism) + _INT32.pack(len(response)) + response,
                f"authenticate with {options.mechanism}",
            )
        except StreamProtocolError as exc:
            if options.mechanism != "EXTERNAL" or exc.code is not None:
                raise
            # No answer, the connection just closed: the broker's stream reader crashed.
            raise AuthenticationFailed(
                f"the broker at {host}:{port} closed the connection at the EXTERNAL login "
                "instead of answering: RabbitMQ releases without the fix of "
                "rabbitmq-server#8488 (2023; 3.10.8 is one) cannot log in with EXTERNAL on "
                "the stream port; use BROKER_SASL_MECHANISM=PLAIN over TLS with them"
            ) from exc
        key, tune = await self._read_frame()
        if key != _TUNE:
            raise StreamProtocolError(f"expected tune, got frame 0x{key:04x}")
        broker_frame_max, broker_heartbeat = struct.unpack_from(">II", tune, 4)
        self.frame_max = negotiate(options.frame_max, broker_frame_max)
        self.heartbeat_s = negotiate(options.heartbeat_s, broker_heartbeat)
        self.read_deadline_s = options.read_deadline_s or (
            2.0 * self.heartbeat_s if self.heartbeat_s else 30.0
        )
        self._write(_frame(_TUNE, struct.pack(">II", self.frame_max, self.heartbeat_s)))
        opened = await self._handshake(
            _OPEN, _string(options.vhost), f"open virtual host {options.vhost}"
        )
        self.advertised = self._advertised(opened)
        self._last_frame_at = time.monotonic()
        self._tasks.append(asyncio.create_task(self._read_loop()))
        self._tasks.append(asyncio.create_task(self._watch_deadline()))
        if self.heartbeat_s > 0:
            self._tasks.append(asyncio.create_task(self._send_heartbeats(self.heartbeat_s)))

    async def metadata(self, streams: Iterable[str]) -> Metadata:
        """Ask which brokers exist and, for each of ``streams``, its leader and replicas.

        Raises:
            ReadDeadlineExceeded: no answer within the read deadline.
            StreamProtocolError: the connection failed meanwhile or the answer is malformed.
        """
        names = list(streams)
        payload = _INT32.pack(len(names)) + b"".join(_string(n) for n in names)
        # The metadata answer carries no response code: each stream has its own.
        frame = await self._request(_METADATA, payload, "give metadata", coded=False)
        return parse_metadata(frame)

    async def subscribe(
        self,
        subscription_id: int,
        stream: str,
        offset: int,
        credit: int,
        on_chunk: OnChunk,
        *,
        auto_credit: bool = True,
        start: OffsetSpec = OffsetSpec.OFFSET,
    ) -> None:
        """Read ``stream`` from ``offset`` (the chunk holding it may start earlier: callers skip
        offsets below the one they asked for); ``on_chunk`` gets every chunk in log order.

        With ``start`` FIRST, LAST or NEXT the subscription starts there and ``offset`` is not
        sent (LAST: the stream's last chunk).

        Raises:
            StreamDoesNotExist, StreamNotAvailable, AccessRefused: the broker refused.
            StreamProtocolError: another refusal; ReadDeadlineExceeded: no answer in time.
        """
        if not 0 <= subscription_id < MAX_SUBSCRIPTIONS:
            raise ValueError(f"subscription id {subscription_id} out of range")
        credit = max(2, min(credit, 0xFFFF))
        self._handlers[subscription_id] = on_chunk
        self._streams[subscription_id] = stream
        # Without auto credit the caller grants credit (``grant``) as it consumes chunks.
        self._credit_step[subscription_id] = credit // 2 if auto_credit else 0
        self._credit_due[subscription_id] = 0
        payload = (
            struct.pack(">B", subscription_id)
            + _string(stream)
            + (
                struct.pack(">HQ", start, offset)
                if start is OffsetSpec.OFFSET
                else struct.pack(">H", start)
            )
            + struct.pack(">H", credit)
            + _properties({})
        )
        try:
            await self._request(_SUBSCRIBE, payload, f"subscribe to {stream}")
        except BaseException:
            self._forget(subscription_id)
            raise

    def grant(self, subscription_id: int, chunks: int) -> None:
        """Let the broker send ``chunks`` more chunks of a subscription made without auto credit."""
        if subscription_id in self._handlers and chunks > 0 and self.healthy:
            self._write(_frame(_CREDIT, struct.pack(">BH", subscription_id, min(chunks, 0xFFFF))))

    async def unsubscribe(self, subscription_id: int) -> None:
        """Stop a subscription (chunks already on the wire are dropped).

        Raises:
            StreamProtocolError: the broker refused (other than "does not exist", which means
                it is already gone); ReadDeadlineExceeded: no answer in time.
        """
        self._forget(subscription_id)
        try:
            await self._request(_UNSUBSCRIBE, struct.pack(">B", subscription_id), "unsubscribe")
        except StreamProtocolError as exc:
            if exc.code != _NO_SUBSCRIPTION:  # already gone (a MetadataUpdate dropped it)
                raise

    async def close(self) -> None:
        """Close politely (best effort) and stop the connection's tasks."""
        writer = self._writer
        if writer is None:
            return
        polite = self.healthy
        self._closing = True
        if polite:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._request(_CLOSE, struct.pack(">H", _OK) + _string("closing"), "close"),
                    tuning.STREAM_CLOSE_ANSWER_S,
                )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), tuning.STREAM_CLOSE_ANSWER_S)
        self._writer = None
        if self.failed is not None:
            if self.failed.done():
                self.failed.exception()  # seen: the caller got it from ``failed`` or does not care
            else:
                self.failed.cancel()

    # -- internals -------------------------------------------------------------------------------

    def _forget(self, subscription_id: int) -> None:
        self._handlers.pop(subscription_id, None)
        self._streams.pop(subscription_id, None)
        self._credit_step.pop(subscription_id, None)
        self._credit_due.pop(subscription_id, None)

    @staticmethod
    def _advertised(frame: bytes) -> Address | None:
        """The node's advertised stream address from the ``Open`` answer's properties."""
        properties: dict[str, str] = {}
        try:
            (count,) = _INT32.unpack_from(frame, 10)
            pos = 14
            for _ in range(count):
                key, pos = _read_string(frame, pos)
                value, pos = _read_string(frame, pos)
                properties[key] = value
            host, port = properties["advertised_host"], int(properties["advertised_port"])
        except (struct.error, KeyError, ValueError):
            return None
        return (host, port)

    @staticmethod
    def _mechanisms(frame: bytes) -> tuple[str, ...]:
        (count,) = _INT32.unpack_from(frame, 10)
        pos = 14
        offered = []
        for _ in range(count):
            name, pos = _read_string(frame, pos)
            offered.append(name)
        return tuple(offered)

    def _write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    async def _read_frame(self) -> tuple[int, bytes]:
        """One frame before the read loop runs (connection set-up), within the read deadline."""
        assert self._reader is not None
        try:
            (size,) = _UINT32.unpack(
                await asyncio.wait_for(self._reader.readexactly(4), self.read_deadline_s)
            )
            if size > self._limit(0):
                raise FrameTooLarge(
                    f"a {size}-byte frame from {self._where()} exceeds frame_max {self.frame_max}"
                )
            frame = await asyncio.wait_for(self._reader.readexactly(size), self.read_deadline_s)
        except TimeoutError as exc:
            raise ReadDeadlineExceeded(
                f"{self._where()} sent nothing for {self.read_deadline_s:g} s while connecting"
            ) from exc
        except asyncio.IncompleteReadError as exc:
            raise StreamProtocolError(f"{self._where()} closed the connection") from exc
        key, _ = _KEY_VERSION.unpack_from(frame)
        return key, frame

    def _where(self) -> str:
        return f"the broker at {self.address[0]}:{self.address[1]}"

    def _limit(self, key: int) -> int:
        """The largest frame accepted with ``key``. A ``Deliver`` frame holds a whole chunk,
        whose size the stream's writer decides, not ``frame_max``: it may be larger, up to
        ``tuning.STREAM_MAX_CHUNK_FRAME``."""
        limit = self.frame_max or tuning.STREAM_MAX_CHUNK_FRAME
        return max(limit, tuning.STREAM_MAX_CHUNK_FRAME) if key == _DELIVER else limit

    async def _handshake(self, key: int, payload: bytes, what: str) -> bytes:
        """A request answered before the read loop runs (connection set-up)."""
        correlation = next(self._correlation)
        self._write(_frame(key, _UINT32.pack(correlation) + payload))
        answer_key, frame = await self._read_frame()
        if answer_key == _CLOSE:
            raise self._closed_by_broker(frame)
        if answer_key != key | _RESPONSE:
            raise StreamProtocolError(f"expected the answer to 0x{key:04x}, got 0x{answer_key:04x}")
        _, code = _CORRELATED.unpack_from(frame, 4)
        if code != _OK:
            raise protocol_error(code, f"{what} ({self.address[0]}:{self.address[1]})")
        return frame

    async def _request(self, key: int, payload: bytes, what: str, *, coded: bool = True) -> bytes:
        if not self.healthy:
            failed = self.failed
            if failed is not None and failed.done() and not failed.cancelled():
                cause = failed.exception()
                raise StreamProtocolError(f"cannot {what}: the connection failed ({cause})")
            raise StreamProtocolError(f"cannot {what}: the connection is closed")
        correlation = next(self._correlation)
        answer = asyncio.get_running_loop().create_future()
        self._answers[correlation] = answer
        self._write(_frame(key, _UINT32.pack(correlation) + payload))
        try:
            code, frame = await asyncio.wait_for(answer, self.read_deadline_s)
        except TimeoutError as exc:
            error = ReadDeadlineExceeded(
                f"{self._where()} did not answer in {self.read_deadline_s:g} s: {what}"
            )
            self.abort(error)  # a connection that does not answer within the deadline is dead
            raise error from exc
        finally:
            self._answers.pop(correlation, None)
        if coded and code != _OK:
            raise protocol_error(code, what)
        return bytes(frame)

    async def _send_heartbeats(self, every_s: int) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self._writer is None or self._writer.is_closing():
                return
            self._write(_frame(_HEARTBEAT, b""))

    async def _watch_deadline(self) -> None:
        """Fail the connection when no frame came for the read deadline (outside pauses)."""
        deadline = self.read_deadline_s
        while True:
            await asyncio.sleep(max(0.05, deadline / 4))
            if self._paused:
                self._last_frame_at = time.monotonic()
                continue
            silent = time.monotonic() - self._last_frame_at
            if silent > deadline:
                self.abort(
                    ReadDeadlineExceeded(
                        f"{self._where()} sent nothing for {silent:.1f} s (read deadline "
                        f"{deadline:g} s, heartbeat {self.heartbeat_s} s): connection given up"
                    )
                )
                return

    def _fail(self, error: Exception) -> None:
        if self.failed is not None and not self.failed.done():
            self.failed.set_exception(error)
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(error)

    async def _read_loop(self) -> None:
        try:
            await self._read_frames()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure ends the read, with its cause
            if not self._closing:
                self._fail(exc)

    async def _read_frames(self) -> None:
        reader = self._reader
        assert reader is not None
        buffer = bytearray()
        while True:
            data = await reader.read(_READ_BYTES)
            if not data:
                raise StreamProtocolError(f"{self._where()} closed the stream connection")
            self._last_frame_at = time.monotonic()
            buffer += data
            pos = 0
            end = len(buffer)
            frame_limit, deliver_limit = self._limit(0), self._limit(_DELIVER)
            while end - pos >= _HEADER.size:
                size, key, _ = _HEADER.unpack_from(buffer, pos)
                if size > (deliver_limit if key == _DELIVER else frame_limit):
                    raise FrameTooLarge(
                        f"a {size}-byte frame (key 0x{key:04x}) from {self._where()} exceeds "
                        f"the negotiated frame_max {self.frame_max}"
                    )
                if end - pos - _UINT32.size < size:
                    break
                # One copy of the frame, not two; the view is released before the buffer
                # is resized.
                with memoryview(buffer)[pos + 4 : pos + 4 + size] as view:
                    frame = bytes(view)
                pos += 4 + size
                waiting = self._dispatch(frame)
                if waiting is not None:
                    self._paused += 1
                    try:
                        await waiting
                    finally:
                        self._paused -= 1
                        self._last_frame_at = time.monotonic()
            del buffer[:pos]

    def _dispatch(self, frame: bytes) -> Awaitable[None] | None:
        key, _ = _KEY_VERSION.unpack_from(frame)
        if key == _DELIVER:
            return self._deliver(frame)
        if key & _RESPONSE:
            if key == _CREDIT | _RESPONSE:
                code, subscription_id = struct.unpack_from(">HB", frame, 4)
                if code == _NO_SUBSCRIPTION or subscription_id not in self._handlers:
                    # Credit for a subscription the broker already dropped (a MetadataUpdate).
                    log.debug("credit for a gone subscription %d refused", subscription_id)
                    return None
                raise protocol_error(code, f"take credit for subscription {subscription_id}")
            correlation, code = _CORRELATED.unpack_from(frame, 4)
            answer = self._answers.get(correlation)
            if answer is not None and not answer.done():
                answer.set_result((code, frame))
            return None
        if key == _CLOSE:
            raise self._closed_by_broker(frame)
        if key == _METADATA_UPDATE:
            code, length = struct.unpack_from(">Hh", frame, 4)
            stream = frame[8 : 8 + length].decode(errors="replace")
            self._metadata_update(stream, code)
        return None  # heartbeats and anything a reader need not answer

    def _closed_by_broker(self, frame: bytes) -> StreamProtocolError:
        correlation, code = _CORRELATED.unpack_from(frame, 4)
        reason, _ = _read_string(frame, 10)
        with contextlib.suppress(Exception):
            self._write(_frame(_CLOSE | _RESPONSE, _CORRELATED.pack(correlation, _OK)))
        return StreamProtocolError(
            f"{self._where()} closed the connection: {reason or 'no reason'} "
            f"({describe_code(code)})",
            code,
        )

    def _metadata_update(self, stream: str, code: int) -> None:
        """The broker dropped this connection's subscriptions of ``stream``."""
        for subscription_id in [i for i, s in self._streams.items() if s == stream]:
            self._forget(subscription_id)
        if self.on_metadata_update is None:
            raise StreamNotAvailable(
                f"stream {stream} changed ({describe_code(code)}): its member went away or it "
                "was deleted",
                code,
            )
        self.on_metadata_update(stream, code)

    def _deliver(self, frame: bytes) -> Awaitable[None] | None:
        subscription_id, first_offset, records = deliver_records(frame)
        self.chunks += 1
        handler = self._handlers.get(subscription_id)
        if handler is None:
            return None  # unsubscribed meanwhile
        step = self._credit_step[subscription_id]
        due = self._credit_due[subscription_id] + 1
        if step and due >= step:
            self._write(_frame(_CREDIT, struct.pack(">BH", subscription_id, due)))
            due = 0
        self._credit_due[subscription_id] = due
        return handler(first_offset, records)


def stream_connection(
    settings: Settings, name: str, address: Address | None = None
) -> StreamConnection:
    """A connection (not yet open) to a node's stream port.

    Args:
        settings: credentials, vhost, TLS, SASL mechanism, heartbeat and deadline.
        name: the connection name shown in the broker's management UI.
        address: the node; default the first of ``STREAM_ADDRESSES`` (``open_first_contact``
            tries them all).

    Raises:
        SettingsError: a TLS file cannot be used.
    """
    host, port = address or settings.stream_addresses[0]
    return StreamConnection(host, port, connect_options(settings), name)


#: Errors that are the same on every node: failing over to the next address cannot help.
_FINAL: Final = (AuthenticationFailed, SaslMechanismUnavailable, AccessRefused)


async def open_connection(settings: Settings, name: str, address: Address) -> StreamConnection:
    """An open connection to ``address`` (closed again when opening fails).

    Raises:
        what ``StreamConnection.open`` raises.
    """
    connection = stream_connection(settings, name, address)
    try:
        await connection.open()
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


async def open_first_contact(
    settings: Settings, name: str, extra: Sequence[Address] = ()
) -> StreamConnection:
    """An open connection to the first ``STREAM_ADDRESSES`` entry that answers, then ``extra``
    (addresses learnt from earlier metadata), in order.

    Raises:
        AuthenticationFailed, SaslMechanismUnavailable, AccessRefused: at once (every node
            would answer the same).
        BrokerUnreachable: no address could be opened (each one's error is in the message).
    """
    tried: list[str] = []
    for address in dict.fromkeys([*settings.stream_addresses, *extra]):
        try:
            return await open_connection(settings, name, address)
        except _FINAL:
            raise
        except (OSError, StreamProtocolError) as exc:
            tried.append(f"{address[0]}:{address[1]}: {type(exc).__name__}: {exc}")
    raise BrokerUnreachable("no stream address answered: " + "; ".join(tried))


async def read_metadata(settings: Settings, streams: Iterable[str]) -> Metadata:
    """The ``Metadata`` of ``streams``, asked on a first-contact connection closed afterwards.

    Raises:
        BrokerUnreachable, AuthenticationFailed, SaslMechanismUnavailable, AccessRefused: see
            ``open_first_contact``; ReadDeadlineExceeded: no answer in time.
    """
    connection = await open_first_contact(settings, "friendship-stream metadata")
    try:
        return await connection.metadata(streams)
    finally:
        await connection.close()


def candidates(
    metadata: StreamMetadata, load: Mapping[Address, int] | None = None
) -> list[Address]:
    """Where to read a stream, best first: its replicas (the least ``load``ed first: the
    partitions already read from each node), then its leader. Empty when it has no member."""
    load = load or {}
    replicas = sorted(
        (broker.address for broker in metadata.replicas),
        key=lambda address: (load.get(address, 0), address),
    )
    leader = [metadata.leader.address] if metadata.leader is not None else []
    return list(dict.fromkeys(replicas + leader))


class Nodes:
    """Open connections by node address for short-lived readers (probes, tails, replay), on one
    loop: each stream is read on a connection to a node that hosts it (``candidates``), or on
    the first-contact connection when ``STREAM_ADVERTISED_ADDRESSES=ignore``.

    Args:
        settings: as for ``stream_connection``.
        name: the connections' name in the management UI.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._follow = settings.stream_follow_advertised
        self._open: dict[Address, StreamConnection] = {}
        self._first: StreamConnection | None = None
        self.metadata = Metadata(())

    @property
    def connections(self) -> list[StreamConnection]:
        """Every connection opened so far (first contact included)."""
        opened = list(self._open.values())
        if self._first is not None and self._first not in opened:
            opened.append(self._first)
        return opened

    async def first(self) -> StreamConnection:
        """The first-contact connection (opened on first use).

        Raises:
            see ``open_first_contact``.
        """
        if self._first is None or not self._first.healthy:
            learnt = [b.address for b in self.metadata.brokers]
            self._first = await open_first_contact(self._settings, self._name, learnt)
            known = self._open.get(self._first.advertised or ("", 0))
            if self._first.advertised is not None and (known is None or not known.healthy):
                # The node it reached serves the streams it hosts too: no second connection.
                self._open[self._first.advertised] = self._first
        return self._first

    async def locate(self, streams: Iterable[str]) -> dict[str, StreamMetadata]:
        """Ask the metadata of ``streams`` (kept in ``metadata``).

        Raises:
            see ``open_first_contact``; ``StreamProtocolError`` for a failed answer.
        """
        answer = await (await self.first()).metadata(streams)
        self.metadata = Metadata(
            answer.brokers or self.metadata.brokers, {**self.metadata.streams, **answer.streams}
        )
        return answer.streams

    async def for_stream(
        self, stream: str, load: Mapping[Address, int] | None = None
    ) -> StreamConnection:
        """A connection to a node hosting ``stream`` (tried in ``candidates`` order).

        Raises:
            StreamDoesNotExist, StreamNotAvailable: per the metadata.
            BrokerUnreachable: no node hosting it could be connected to.
        """
        if not self._follow:
            return await self.first()
        known = self.metadata.streams.get(stream) or (await self.locate([stream]))[stream]
        problem = known.error()
        if problem is not None:
            raise problem
        tried: list[str] = []
        for address in candidates(known, load):
            connection = self._open.get(address)
            if connection is not None and connection.healthy:
                return connection
            try:
                connection = await open_connection(self._settings, self._name, address)
            except _FINAL:
                raise
            except (OSError, StreamProtocolError) as exc:
                tried.append(f"{address[0]}:{address[1]}: {type(exc).__name__}: {exc}")
                continue
            self._open[address] = connection
            return connection
        raise BrokerUnreachable(f"no node hosting {stream} answered: " + "; ".join(tried))

    async def close(self) -> None:
        """Close every connection."""
        for connection in self.connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), tuning.STREAM_CLOSE_TIMEOUT_S)
        self._open.clear()
        self._first = None
