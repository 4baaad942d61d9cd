"""The root of every error the product raises on purpose, and the exit code each one means.

Each package keeps its own errors in an ``errors.py`` under this root (``reading``,
``ownership``, ``applying``, ``publishing``, ``replay``, ``api``, and ``demo`` outside the
runtime), in the style of dramatiq's one root with a short named tree. An error carries the
exit code the CLI returns for it, so ``processor.cli`` maps errors to exit codes with one
``except ProcessorError``.

Errors of the libraries underneath (psycopg, asyncio's sockets, pika) are turned into these at
the one boundary that meets them all, ``unavailable``: a database or broker that cannot be
reached or that fails is a ``ServiceUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import ClassVar, Final


class ExitCode(IntEnum):
    """Process exit codes of every command."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    #: Ctrl-C (SIGINT) before the command had started (128 + 2, as shells report it).
    INTERRUPTED = 130


class ProcessorError(Exception):
    """Root of every error raised on purpose by the product.

    Attributes:
        exit_code: what the CLI exits with when a command ends with this error.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE


class ConfigurationError(ProcessorError):
    """A setting holds a value that cannot be used; the message names the variable."""

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE


class ServiceUnavailable(ProcessorError):
    """The database or the broker cannot be reached, or failed while a command used it."""


class LagNotZero(ProcessorError):
    """Some partition's checkpoint did not reach its log tail in time (``just wait-idle``)."""


#: SQLSTATE classes whose primary message names objects or states, never a row's values:
#: connection (08), invalid transaction state (25), rollback (40: deadlock, serialization),
#: syntax or access rule (42), resources (53), object state (55), operator (57), system (58).
#: Data exceptions (22), integrity (23) and raised exceptions (P0) may quote values.
_SAFE_SQLSTATE_CLASSES: Final = frozenset({"08", "25", "40", "42", "53", "55", "57", "58"})


def loggable(error: BaseException) -> str:
    """``error`` in words fit for a log line at INFO or above: no child's id, no payload.

    A database error is given by class, SQLSTATE and, when its SQLSTATE class never quotes a
    row's values (``_SAFE_SQLSTATE_CLASSES``), its primary message; its DETAIL and CONTEXT
    lines (``Key (user_id)=(...)``) never. A SQLAlchemy error stands for its driver's. The
    product's own errors and socket errors are written without personal data, so their text
    is kept; anything else is named by its class only.
    """
    cause = getattr(error, "orig", None)
    if cause is not None and type(cause).__module__.startswith("psycopg"):
        error = cause
    name = type(error).__name__
    if type(error).__module__.startswith("psycopg"):
        sqlstate = getattr(error, "sqlstate", None)
        lines = str(error).strip().splitlines()
        if sqlstate is None or str(sqlstate)[:2] in _SAFE_SQLSTATE_CLASSES:
            state = f" (SQLSTATE {sqlstate})" if sqlstate else ""
            return f"{name}{state}: {lines[0] if lines else ''}"
        return f"{name} (SQLSTATE {sqlstate})"
    if isinstance(error, ProcessorError | OSError):
        return f"{name}: {error}"
    return name


def unavailable(error: Exception) -> ServiceUnavailable:
    """The ``ServiceUnavailable`` that stands for a library's connection or server failure.

    Args:
        error: a psycopg error (the database) or an ``OSError`` (a socket: the broker, or a
            server that does not answer; ``TimeoutError`` is one).

    Returns:
        An error whose message names the service and keeps the library's own words.
    """
    if type(error).__module__.startswith("psycopg"):
        return ServiceUnavailable(f"database: {loggable(error)}")
    detail = str(error).strip() or "no answer"
    return ServiceUnavailable(f"{type(error).__name__}: {detail}")


@contextmanager
def services_unavailable_as_errors() -> Iterator[None]:
    """Turn a database or socket failure raised inside into ``ServiceUnavailable``.

    The one place where the libraries' errors meet the product's: psycopg errors (imported
    lazily, so pure modules that import this one stay free of the database driver) and
    ``OSError``.

    Raises:
        ServiceUnavailable: from the psycopg error or ``OSError`` raised inside.
    """
    import psycopg  # noqa: PLC0415 - only where a command talks to the database

    try:
        yield
    except (psycopg.Error, OSError) as exc:
        raise unavailable(exc) from exc
