"""A minimal read-only client of the RabbitMQ stream protocol: the live reader and replay use it.

Why not rstream: events reach the streams through the AMQP 0.9.1
exchange, and a stream writes what its writer's mailbox holds as one chunk, so this log has about
one or two messages per chunk. The read rate is then decided by the cost per chunk, and rstream
decodes every frame generically and sends one ``Credit`` frame per chunk. This client parses
frames out of large socket reads, checks each chunk's CRC, and grants credit in bulk (one
``Credit`` frame per half of the initial credit). That makes reading several times faster.

Scope: connect (peer properties, SASL PLAIN, tune, open), subscribe from an offset, deliveries,
credit, heartbeats, close. Nothing else: no publishing, no offset tracking, no reconnection (a
lost connection resolves ``failed``: the live ``StreamReader`` reconnects and resubscribes from
its sinks' next offsets; a replay is dropped as a whole and can be run again).
It connects to the node named by ``AMQP_URL`` on ``STREAM_PORT``. Any member of a stream serves
consumers, so in a cluster that node must host a member of every partition stream.

Reference: ``deps/rabbitmq_stream/docs/PROTOCOL.adoc`` in rabbitmq-server. Every frame is
``uint32 size | uint16 key | uint16 version | payload``, big-endian; answers set bit 15 of the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import Final

from processor import tuning
from processor.reading.chunks import ChunkEntry, chunk_entries
from processor.reading.errors import StreamProtocolError
from processor.settings import Settings

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
_METADATA_UPDATE: Final = 0x10
_RESPONSE: Final = 0x8000
_OK: Final = 1

_HEADER: Final = struct.Struct(">IHH")  # size, key, version
_KEY_VERSION: Final = struct.Struct(">HH")
_CORRELATED: Final = struct.Struct(">IH")  # correlation id, response code
_UINT16: Final = struct.Struct(">H")
_UINT32: Final = struct.Struct(">I")
_READ_BYTES: Final = 1 << 20
#: Most subscriptions one connection carries (the protocol's ids are one byte).
MAX_SUBSCRIPTIONS: Final = 250

_RESPONSE_CODES: Final = {
    2: "stream does not exist",
    3: "subscription id already exists",
    4: "subscription id does not exist",
    6: "stream not available",
    8: "authentication failure",
    12: "virtual host access failure",
    13: "unknown frame",
    14: "frame too large",
    15: "internal error",
    16: "access refused",
    17: "precondition failed",
}


class OffsetSpec(IntEnum):
    """Where a subscription starts (the stream protocol's offset specification types)."""

    FIRST = 1
    LAST = 2
    NEXT = 3
    OFFSET = 4


#: Takes one chunk of a subscription: ``(first offset, entries)`` in offset order. May return
#: an awaitable: reading pauses until it is done.
OnChunk = Callable[[int, list[ChunkEntry]], Awaitable[None] | None]


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _frame(key: int, payload: bytes, version: int = 1) -> bytes:
    return _HEADER.pack(len(payload) + 4, key, version) + payload


def _properties(values: dict[str, str]) -> bytes:
    return struct.pack(">i", len(values)) + b"".join(
        _string(k) + _string(v) for k, v in values.items()
    )


def _describe(code: int) -> str:
    return f"code {code} ({_RESPONSE_CODES.get(code, 'see the stream protocol')})"


class StreamConnection:
    """One stream protocol connection that reads subscriptions (use on one asyncio loop).

    Args:
        host, port: the broker node and its stream port.
        username, password, vhost: credentials and virtual host.
        name: the connection name shown in the management UI.
        timeout_s: seconds allowed for connecting and for each request's answer.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        vhost: str,
        name: str = "friendship-stream",
        timeout_s: float = tuning.STREAM_REQUEST_TIMEOUT_S,
    ) -> None:
        self._address = (host, port)
        self._credentials = (username, password, vhost)
        self._name = name
        self._timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._correlation = itertools.count(1)
        self._answers: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._handlers: dict[int, OnChunk] = {}
        self._credit_step: dict[int, int] = {}
        self._credit_due: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: asyncio.Future[None] | None = None
        self._closing = False
        self.chunks = 0

    async def open(self) -> None:
        """Connect, authenticate (SASL PLAIN), tune and open the virtual host.

        Raises:
            StreamProtocolError: the broker refused the login or the virtual host.
            OSError, TimeoutError: the node cannot be reached.
        """
        host, port = self._address
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), self._timeout_s
        )
        self.failed = asyncio.get_running_loop().create_future()
        properties = {"product": "friendship-stream", "connection_name": self._name}
        await self._handshake(_PEER_PROPERTIES, _properties(properties))
        await self._handshake(_SASL_HANDSHAKE, b"")
        username, password, vhost = self._credentials
        sasl = b"\0" + username.encode() + b"\0" + password.encode()
        await self._handshake(
            _SASL_AUTHENTICATE, _string("PLAIN") + struct.pack(">i", len(sasl)) + sasl
        )
        key, tune = await self._read_frame()
        if key != _TUNE:
            raise StreamProtocolError(f"expected tune, got frame 0x{key:04x}")
        frame_max, heartbeat_s = struct.unpack_from(">II", tune, 4)
        self._write(_frame(_TUNE, struct.pack(">II", frame_max, heartbeat_s)))
        await self._handshake(_OPEN, _string(vhost))
        self._tasks.append(asyncio.create_task(self._read_loop()))
        if heartbeat_s > 0:
            self._tasks.append(asyncio.create_task(self._send_heartbeats(heartbeat_s)))

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
            StreamProtocolError: the broker refused (for example: the stream does not exist).
        """
        if not 0 <= subscription_id < MAX_SUBSCRIPTIONS:
            raise ValueError(f"subscription id {subscription_id} out of range")
        credit = max(2, min(credit, 0xFFFF))
        self._handlers[subscription_id] = on_chunk
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
        await self._request(_SUBSCRIBE, payload, f"subscribe to {stream}")

    def grant(self, subscription_id: int, chunks: int) -> None:
        """Let the broker send ``chunks`` more chunks of a subscription made without auto credit."""
        if subscription_id in self._handlers and chunks > 0:
            self._write(_frame(_CREDIT, struct.pack(">BH", subscription_id, min(chunks, 0xFFFF))))

    async def unsubscribe(self, subscription_id: int) -> None:
        """Stop a subscription (chunks already on the wire are dropped)."""
        self._handlers.pop(subscription_id, None)
        await self._request(_UNSUBSCRIBE, struct.pack(">B", subscription_id), "unsubscribe")

    async def close(self) -> None:
        """Close politely (best effort) and stop the connection's tasks."""
        writer = self._writer
        if writer is None:
            return
        self._closing = True
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
            await writer.wait_closed()
        self._writer = None
        if self.failed is not None and self.failed.done():
            self.failed.exception()  # seen: the caller got it from ``failed`` or does not care

    # -- internals -------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    async def _read_frame(self) -> tuple[int, bytes]:
        assert self._reader is not None
        (size,) = _UINT32.unpack(
            await asyncio.wait_for(self._reader.readexactly(4), self._timeout_s)
        )
        frame = await asyncio.wait_for(self._reader.readexactly(size), self._timeout_s)
        key, _ = _KEY_VERSION.unpack_from(frame)
        return key, frame

    async def _handshake(self, key: int, payload: bytes) -> bytes:
        """A request answered before the read loop runs (connection set-up)."""
        correlation = next(self._correlation)
        self._write(_frame(key, _UINT32.pack(correlation) + payload))
        answer_key, frame = await self._read_frame()
        if answer_key != key | _RESPONSE:
            raise StreamProtocolError(f"expected the answer to 0x{key:04x}, got 0x{answer_key:04x}")
        _, code = _CORRELATED.unpack_from(frame, 4)
        if code != _OK:
            raise StreamProtocolError(f"broker refused request 0x{key:04x}: {_describe(code)}")
        return frame

    async def _request(self, key: int, payload: bytes, what: str) -> bytes:
        correlation = next(self._correlation)
        answer = asyncio.get_running_loop().create_future()
        self._answers[correlation] = answer
        self._write(_frame(key, _UINT32.pack(correlation) + payload))
        try:
            code, frame = await asyncio.wait_for(answer, self._timeout_s)
        finally:
            self._answers.pop(correlation, None)
        if code != _OK:
            raise StreamProtocolError(f"broker refused to {what}: {_describe(code)}")
        return bytes(frame)

    async def _send_heartbeats(self, every_s: int) -> None:
        while True:
            await asyncio.sleep(every_s)
            self._write(_frame(_HEARTBEAT, b""))

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
                raise StreamProtocolError("the broker closed the stream connection")
            buffer += data
            pos = 0
            end = len(buffer)
            while end - pos >= _UINT32.size:
                (size,) = _UINT32.unpack_from(buffer, pos)
                if end - pos - _UINT32.size < size:
                    break
                frame = bytes(buffer[pos + 4 : pos + 4 + size])
                pos += 4 + size
                waiting = self._dispatch(frame)
                if waiting is not None:
                    await waiting
            del buffer[:pos]

    def _dispatch(self, frame: bytes) -> Awaitable[None] | None:
        key, _ = _KEY_VERSION.unpack_from(frame)
        if key == _DELIVER:
            return self._deliver(frame)
        if key & _RESPONSE:
            if key == _CREDIT | _RESPONSE:
                (code,) = _UINT16.unpack_from(frame, 4)
                raise StreamProtocolError(f"broker refused credit: {_describe(code)}")
            correlation, code = _CORRELATED.unpack_from(frame, 4)
            answer = self._answers.get(correlation)
            if answer is not None and not answer.done():
                answer.set_result((code, frame))
            return None
        if key == _CLOSE:
            correlation, code = _CORRELATED.unpack_from(frame, 4)
            (length,) = struct.unpack_from(">h", frame, 10)
            reason = frame[12 : 12 + length].decode(errors="replace")
            self._write(_frame(_CLOSE | _RESPONSE, _CORRELATED.pack(correlation, _OK)))
            raise StreamProtocolError(f"the broker closed the connection: {reason} ({code})")
        if key == _METADATA_UPDATE:
            (length,) = struct.unpack_from(">h", frame, 6)
            stream = frame[8 : 8 + length].decode(errors="replace")
            raise StreamProtocolError(f"stream {stream} changed (deleted or moved)")
        return None  # heartbeats and anything a reader need not answer

    def _deliver(self, frame: bytes) -> Awaitable[None] | None:
        subscription_id, first_offset, entries = chunk_entries(frame)
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
        return handler(first_offset, entries)


def stream_connection(settings: Settings, name: str) -> StreamConnection:
    """A connection (not yet open) to the stream port of the broker in ``settings``.

    Args:
        settings: ``AMQP_URL`` gives host, credentials and vhost; ``STREAM_PORT`` the port.
        name: the connection name shown in the broker's management UI.
    """
    amqp = settings.amqp
    return StreamConnection(
        amqp.host,
        settings.stream_port,
        username=settings.stream_username or amqp.username,
        password=settings.stream_password if settings.stream_username else amqp.password,
        vhost=amqp.vhost,
        name=name,
    )
