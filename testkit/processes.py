"""Processor processes and the stored projections, for tests and the benchmark."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from processor.api.address import api_base_url, api_client_ssl_context
from processor.settings import Settings
from projections.database import connect
from projections.tables import SENTIMENT_COLUMNS
from testkit.reference import SENTIMENTS, reference_level
from testkit.services import settings_env


@contextmanager
def processor_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``python -m processor run`` process; SIGTERMed (then killed) on exit."""
    with _command_process("run", settings, log_path) as process:
        yield process


@contextmanager
def _command_process(
    command: str, settings: Settings, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m processor COMMAND`` with the environment of ``settings``, its output
    appended to ``log_path``; SIGTERMed on exit, killed after 30 s."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "processor", command],
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def api_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``python -m processor api`` process on ``API_HOST:API_PORT`` of ``settings``,
    answering ``/healthz`` when the block starts (over HTTPS, verified, when ``settings`` has
    ``api_tls_cert_file``); SIGTERMed (then killed) on exit.

    Raises:
        RuntimeError: it exited, or did not answer within 60 s (its log says why).
    """
    with _command_process("api", settings, log_path) as process:
        url = f"{api_base_url(settings)}/healthz"
        context = api_client_ssl_context(settings)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(url, timeout=1, context=context):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not answer at {url}") from None
                time.sleep(0.1)
        yield process


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for an API process of a test or the bench)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored_projections(settings: Settings) -> dict[str, dict[str, Any]]:
    """The stored projections in ``testkit.reference.reference_fold``'s shape."""
    users: dict[str, dict[str, Any]] = {}
    with connect(settings.database_url) as conn:
        for user_id, score, applied, last_at in conn.execute(
            "SELECT user_id, score, events_applied, last_event_at FROM friendships"
        ):
            users[user_id] = {
                "score": score,
                "level": reference_level(score),
                "events_applied": applied,
                "last_event_at": last_at,
                "topics": {},
            }
        columns = ", ".join(SENTIMENT_COLUMNS)
        for row in conn.execute(
            "SELECT user_id, topic, conversations, turns, duration_s, "
            f"{columns}, last_discussed_at FROM topic_metrics"
        ):
            users[row[0]]["topics"][row[1]] = {
                "conversations": row[2],
                "turns": row[3],
                "duration_s": row[4],
                "sentiment": dict(zip(SENTIMENTS, row[5:13], strict=True)),
                "last_discussed_at": row[13],
            }
    return users
