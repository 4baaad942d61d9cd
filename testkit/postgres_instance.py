"""A PostgreSQL 15 server of a test's own, for what the shared server must never see: a real
restart (``pg_ctl restart -m fast``), a real crash (``pg_ctl stop -m immediate``) and a TLS-only
configuration.

``postgres_instance()`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/15/bin`` (or
``$PG_BIN``) as the ``postgres`` user (``runuser``) when the caller is root (PostgreSQL refuses
to run as root), else as the caller, in a temporary folder that user owns, listening on a free
port of 127.0.0.1 only (and a Unix socket in that folder, never ``/var/run/postgresql``).
Authentication is ``trust`` from 127.0.0.1; the URLs name the superuser ``postgres``
(``initdb -U postgres``): the tests connect without a password.

With ``tls=TestCA``: ``ssl = on`` with a server certificate for 127.0.0.1 and localhost issued by
that CA, and ``pg_hba.conf`` accepts TCP only over TLS (``hostssl``; ``hostnossl ... reject``).
``client_certificates=True`` also demands a client certificate signed by the CA
(``clientcert=verify-ca``, any user), so a connection that did not present
``sslcert``/``sslkey`` is refused: the proof that those parameters reached it. ``url()`` then
carries ``sslmode=verify-full`` and ``sslrootcert`` (and ``sslcert``/``sslkey``).

The server is stopped and the folder removed when the block ends, also when it fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from testkit.processes import free_port
from testkit.tls import TestCA

log = logging.getLogger(__name__)

#: Where the PostgreSQL 15 server programs are (Debian's layout), unless ``$PG_BIN`` says.
DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
#: The operating-system user the server runs as when the tests run as root (else the caller),
#: and the name of the server's superuser (``initdb -U``), whom the URLs name.
SERVER_USER = "postgres"


def _as_root() -> bool:
    return os.geteuid() == 0


def _own(path: Path) -> None:
    """Give ``path`` to the server's user (when running as root; else it is the caller's)."""
    if _as_root():
        shutil.chown(path, SERVER_USER, SERVER_USER)


#: Seconds ``pg_ctl`` waits for a start, stop or restart before it gives up.
PG_CTL_WAIT_S = 120


class PostgresInstanceError(RuntimeError):
    """``initdb`` or ``pg_ctl`` failed; the message carries their output and the server log."""


class PostgresInstance:
    """A running (or stopped) server of a test's own; made by ``postgres_instance()``.

    Attributes:
        folder: the instance's folder (data directory ``data/``, ``server.log``, the socket,
            the TLS files), owned by the server's user.
        port: the TCP port on 127.0.0.1.
        tls: whether the server accepts TLS connections only.
        start_seconds: how long each ``start()`` / ``restart()`` took until the server accepted
            connections (``pg_ctl -w``), in seconds, in order: figures for the report.
    """

    def __init__(
        self,
        folder: Path,
        port: int,
        *,
        pg_bin: Path,
        tls_query: dict[str, str] | None,
    ) -> None:
        self.folder = folder
        self.port = port
        self.tls = tls_query is not None
        self.start_seconds: list[float] = []
        self._pg_bin = pg_bin
        self._query = dict(tls_query or {})
        self._running = False

    @property
    def data_dir(self) -> Path:
        """The data directory (``PGDATA``)."""
        return self.folder / "data"

    @property
    def log_file(self) -> Path:
        """The server's log (``pg_ctl -l``)."""
        return self.folder / "server.log"

    @property
    def running(self) -> bool:
        """Whether this object started the server and has not stopped or crashed it since."""
        return self._running

    def server_url(self, **query: str) -> str:
        """``postgresql://postgres@127.0.0.1:PORT`` with the TLS parameters (if any) and
        ``query`` as the query string: a server URL without a database name, for
        ``testkit.services.Services.on_database_server``."""
        return self._with_query(f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}", query)

    def url(self, dbname: str = "postgres", **query: str) -> str:
        """The URL of database ``dbname`` on this server, with the TLS parameters (if any) and
        ``query`` (which override them: ``url(sslmode="disable")``)."""
        return self._with_query(f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{dbname}", query)

    def _with_query(self, base: str, query: dict[str, str]) -> str:
        merged = {**self._query, **query}
        return f"{base}?{urlencode(merged)}" if merged else base

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> float:
        """Start the server and wait until it accepts connections (after a crash this includes
        crash recovery).

        Returns:
            The seconds it took (also appended to ``start_seconds``).

        Raises:
            PostgresInstanceError: it did not start (the message has the server log's tail).
        """
        began = time.monotonic()
        self._pg_ctl("start", "-l", str(self.log_file), "-t", str(PG_CTL_WAIT_S))
        took = time.monotonic() - began
        self._running = True
        self.start_seconds.append(took)
        return took

    def stop(self) -> None:
        """A clean shutdown (``pg_ctl stop -m fast``: sessions ended, open transactions rolled
        back, a checkpoint written).

        Raises:
            PostgresInstanceError: ``pg_ctl`` failed.
        """
        self._pg_ctl("stop", "-m", "fast", "-t", str(PG_CTL_WAIT_S))
        self._running = False

    def restart(self) -> float:
        """``pg_ctl restart -m fast``: every session ended and every open transaction rolled
        back, the server back up.

        Returns:
            The seconds from the command until the server accepted connections again.

        Raises:
            PostgresInstanceError: ``pg_ctl`` failed.
        """
        began = time.monotonic()
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_file), "-t", str(PG_CTL_WAIT_S))
        took = time.monotonic() - began
        self._running = True
        self.start_seconds.append(took)
        return took

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every server process quits at once, without a
        checkpoint; the next ``start()`` runs crash recovery from the WAL. The server stays
        down until then.

        Raises:
            PostgresInstanceError: ``pg_ctl`` failed.
        """
        self._pg_ctl("stop", "-m", "immediate", "-t", str(PG_CTL_WAIT_S))
        self._running = False

    def _pg_ctl(self, *args: str) -> None:
        _run_as_server_user(
            [str(self._pg_bin / "pg_ctl"), "-D", str(self.data_dir), "-w", *args],
            cwd=self.folder,
            log_file=self.log_file,
        )


def _run_as_server_user(command: list[str], cwd: Path, log_file: Path | None = None) -> None:
    result = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", *command] if _as_root() else command,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = ""
        if log_file is not None and log_file.exists():
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        raise PostgresInstanceError(
            f"{' '.join(command[:1] + command[-1:])} exited with {result.returncode}: "
            f"{result.stdout.strip()} {result.stderr.strip()}\nserver log:\n{tail}"
        )


def _server_files(ca: TestCA, folder: Path, client_certificates: bool) -> tuple[str, str]:
    """Copy the server's certificate, key and the CA into ``folder`` for the server (the key
    owned by the server's user, mode 0600, as PostgreSQL demands); returns the ``postgresql.conf``
    lines and the ``pg_hba.conf`` lines."""
    server = ca.server("postgres-server")
    for source, target in (
        (server.cert, "server.crt"),
        (server.key, "server.key"),
        (ca.ca_file, "ca.crt"),
    ):
        shutil.copyfile(source, folder / target)
        _own(folder / target)
        os.chmod(folder / target, 0o600 if target.endswith(".key") else 0o644)
    conf = (
        "ssl = on\n"
        f"ssl_cert_file = '{folder / 'server.crt'}'\n"
        f"ssl_key_file = '{folder / 'server.key'}'\n"
        f"ssl_ca_file = '{folder / 'ca.crt'}'\n"
    )
    option = " clientcert=verify-ca" if client_certificates else ""
    hba = (
        "local all all trust\n"
        f"hostssl all all 127.0.0.1/32 trust{option}\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    return conf, hba


def _client_query(ca: TestCA, client_certificates: bool) -> dict[str, str]:
    """The libpq parameters of a client that verifies the server (and presents a certificate
    when asked): ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``. libpq refuses a key
    file its owner lets others read, so the client key is made mode 0600."""
    query = {"sslmode": "verify-full", "sslrootcert": str(ca.ca_file)}
    if client_certificates:
        client = ca.client(SERVER_USER, stem="postgres-client")
        os.chmod(client.key, 0o600)
        query.update({"sslcert": str(client.cert), "sslkey": str(client.key)})
    return query


@contextmanager
def postgres_instance(
    tls: TestCA | None = None,
    *,
    client_certificates: bool = False,
    settings: dict[str, str] | None = None,
) -> Iterator[PostgresInstance]:
    """A fresh PostgreSQL 15 server on a free port of 127.0.0.1, started, as a
    ``PostgresInstance``; stopped (immediately) and its folder removed when the block ends.

    Args:
        tls: a test CA: the server then accepts TLS connections only, with a certificate of
            this CA, and ``url()`` verifies it (``sslmode=verify-full``).
        client_certificates: with ``tls``, also demand a client certificate of the CA
            (``clientcert=verify-ca``); ``url()`` then carries ``sslcert`` and ``sslkey``
            (the client key file made mode 0600, as libpq demands).
        settings: more ``postgresql.conf`` settings (name -> value, written as given).

    Raises:
        PostgresInstanceError: ``initdb`` or the first start failed (the folder is removed).
        FileNotFoundError: the server programs are not installed (``$PG_BIN``).
    """
    pg_bin = Path(os.environ.get("PG_BIN", DEFAULT_PG_BIN))
    if not (pg_bin / "initdb").exists():
        raise FileNotFoundError(f"no PostgreSQL server programs in {pg_bin} (set PG_BIN)")
    folder = Path(tempfile.mkdtemp(prefix="fs-postgres-"))
    instance: PostgresInstance | None = None
    try:
        os.chmod(folder, 0o700)
        _own(folder)
        _run_as_server_user(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(folder / "data"),
                "-U",
                SERVER_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=folder,
        )
        port = free_port()
        conf = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{folder}'\n"
            "max_connections = 200\n"
        )
        hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        query: dict[str, str] | None = None
        if tls is not None:
            tls_conf, hba = _server_files(tls, folder, client_certificates)
            conf += tls_conf
            query = _client_query(tls, client_certificates)
        conf += "".join(f"{name} = {value}\n" for name, value in (settings or {}).items())
        with (folder / "data" / "postgresql.conf").open("a") as handle:
            handle.write("\n# testkit.postgres_instance\n" + conf)
        (folder / "data" / "pg_hba.conf").write_text(hba)
        _own(folder / "data" / "pg_hba.conf")
        instance = PostgresInstance(folder, port, pg_bin=pg_bin, tls_query=query)
        took = instance.start()
        log.info("own PostgreSQL on 127.0.0.1:%d started in %.1f s", port, took)
        yield instance
    finally:
        try:
            if instance is not None and (instance.data_dir / "postmaster.pid").exists():
                instance.crash()  # nothing to keep: the quickest stop
        except PostgresInstanceError as exc:  # already down (crashed by the test): say so
            log.warning("stopping the own PostgreSQL in %s: %s", folder, exc)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
