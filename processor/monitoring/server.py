"""Serve a Prometheus registry over HTTP from a daemon thread, optionally behind a bearer token.

prometheus-client renders the registry (``make_wsgi_app``: the text format, gzip when asked,
OpenMetrics when Prometheus asks for it); the standard library's WSGI server serves it on its
own threads. The threads are daemons: a processor that stops never waits for a scrape.
"""

from __future__ import annotations

import errno
import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from processor import tuning
from processor.settings import ENV_METRICS_HOST, ENV_METRICS_PORT, SettingsError

log = logging.getLogger(__name__)

_Environ = dict[str, Any]
_StartResponse = Callable[..., object]
_App = Callable[[_Environ, _StartResponse], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    """One daemon thread per scrape."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (Prometheus scrapes every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the access line."""


def bearer_protected(app: _App, token: str) -> _App:
    """``app`` behind ``Authorization: Bearer <token>`` (compared in constant time); any other
    request is answered ``401`` with ``WWW-Authenticate: Bearer``."""
    expected = f"Bearer {token}".encode()

    def protected(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")],
        )
        return [b"401 Unauthorized: send Authorization: Bearer <PROCESSOR_METRICS_TOKEN>\n"]

    return protected


class MetricsServer:
    """``GET /metrics`` (any path, as prometheus-client serves) of ``registry`` on
    ``host:port``.

    Args:
        registry: what to render.
        host: the address to bind (``127.0.0.1``: this machine only).
        port: the TCP port; 0 = an ephemeral one (``port`` tells which once started).
        token: when not empty, scrapes need ``Authorization: Bearer <token>``.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int, token: str = "") -> None:
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._token = token
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Bind and serve from a daemon thread.

        Raises:
            SettingsError: the port is in use or the host cannot be bound (names the setting).
        """
        app: _App = make_wsgi_app(self._registry)
        if self._token:
            app = bearer_protected(app, self._token)
        try:
            server = make_server(
                self._host, self._requested_port, app, _Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"{ENV_METRICS_PORT}={self._requested_port}: {self._host}:"
                    f"{self._requested_port} is already in use (another processor on this "
                    f"machine?); give each processor its own port, 0 for any free one, or off"
                ) from exc
            raise SettingsError(
                f"{ENV_METRICS_HOST}={self._host} {ENV_METRICS_PORT}={self._requested_port}: "
                f"cannot serve the metrics there ({exc.strerror or exc})"
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="metrics-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (waits at most ``tuning.TAILS_STOP_TIMEOUT_S``)."""
        server, self._server = self._server, None
        if server is None:
            return
        port = int(server.server_address[1])
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(tuning.TAILS_STOP_TIMEOUT_S)
        self._requested_port = port
