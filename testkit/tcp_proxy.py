"""A TCP forwarding proxy for fault tests: put it between a client and a server, then ``stall()``
it to make every connection through it silent (nothing forwarded either way, nothing closed:
what a half-open connection or a frozen middlebox looks like to both ends), and ``resume()``.
With ``cut_after_bytes`` it cuts connections instead (both ends aborted, as a lost network or
a node's crash looks to a client) once one has sent that many bytes to the server: the cut
lands while the client is sending, so whatever it sent just then is unanswered.

It runs its own asyncio loop in a daemon thread, so synchronous tests and subprocesses can use
it. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

_READ_BYTES = 1 << 16


class TcpProxy:
    """Forwards every connection made to ``address`` to ``target``.

    Args:
        target_host, target_port: where connections are forwarded.
        port: the port to listen on (0: a free one; see ``address``).
        cut_after_bytes: cut a connection once it forwarded this many bytes from the client to
            the server (None: never).
        cuts: how many connections are cut that way, the first ones to reach the limit.

    Attributes:
        accepted: connections accepted so far.
        cut: connections cut so far.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        port: int = 0,
        *,
        cut_after_bytes: int | None = None,
        cuts: int = 1,
    ) -> None:
        self._target = (target_host, target_port)
        self._cut_after = cut_after_bytes
        self._cuts_left = cuts
        self.cut = 0
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._forwarding = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)`` the proxy listens on."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def start(self) -> TcpProxy:
        """Start listening and forwarding; returns self."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stall(self) -> None:
        """Stop forwarding in both directions; connections stay open, bytes wait."""
        self._loop.call_soon_threadsafe(self._forwarding.clear)

    def resume(self) -> None:
        """Forward again (what waited is forwarded first)."""
        self._loop.call_soon_threadsafe(self._forwarding.set)

    def close(self) -> None:
        """Close the listener and every connection, and end the thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # -- the loop's side ----------------------------------------------------------------------

    async def _start(self) -> None:
        self._forwarding.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer, cut=(writer, upstream_writer)),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )
        for end in (writer, upstream_writer):
            self._writers.discard(end)
            end.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cut: tuple[asyncio.StreamWriter, asyncio.StreamWriter] | None = None,
    ) -> None:
        """Forward ``reader`` to ``writer``; with ``cut`` (the client's and the server's ends)
        this is the client-to-server direction, counted against ``cut_after_bytes``."""
        sent = 0
        try:
            while True:
                await self._forwarding.wait()
                data = await reader.read(_READ_BYTES)
                if not data:
                    break
                await self._forwarding.wait()
                writer.write(data)
                await writer.drain()
                sent += len(data)
                if (
                    cut is not None
                    and self._cut_after is not None
                    and sent >= self._cut_after
                    and self._cuts_left > 0
                ):
                    self._cuts_left -= 1
                    self.cut += 1
                    for end in cut:
                        end.transport.abort()
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass  # one end went away: the other is closed by ``_serve``
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
