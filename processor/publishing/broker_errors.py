"""One readable reason for a failed AMQP connection, from pika's nested exceptions.

pika reports a refused connection as an ``AMQPConnectionError`` whose text is empty; the cause
sits a few levels down (``AMQPConnectionWorkflowFailed.exceptions[-1]``, then the connector
error's ``exception``, then the ``OSError``). Its own loggers meanwhile print several ERROR
lines and a traceback for the same event, which is why ``processor.logs`` quiets them: the
product says it once, in one line naming host, port and reason.
"""

from __future__ import annotations

from typing import Final

import pika.exceptions

#: How deep ``connection_failure_reason`` follows nested causes.
_MAX_DEPTH: Final = 8


def _innermost(error: BaseException) -> BaseException:
    """The most specific cause inside pika's wrapper exceptions."""
    for _ in range(_MAX_DEPTH):
        nested: BaseException | None = None
        exceptions = getattr(error, "exceptions", None)
        phase_error = getattr(error, "exception", None)
        if exceptions:
            nested = exceptions[-1]
        elif isinstance(phase_error, BaseException):
            nested = phase_error
        elif error.args and isinstance(error.args[0], BaseException):
            nested = error.args[0]
        elif error.__cause__ is not None:
            nested = error.__cause__
        if nested is None:
            return error
        error = nested
    return error


def connection_failure_reason(error: BaseException | str) -> str:
    """A short reason for a failed connection, e.g. ``"connection refused"``.

    Args:
        error: what pika raised or passed to an ``on_open_error`` callback.

    Returns:
        Never empty: the most specific message found, or the exception's class name.
    """
    if isinstance(error, str):
        return error or "unknown reason"
    if isinstance(error, pika.exceptions.ProbableAuthenticationError):
        return "the broker refused the user name or password"
    if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
        return "the broker refused access to the virtual host (does it exist, may the user use it?)"
    inner = _innermost(error)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    text = str(inner).strip()
    return text or type(inner).__name__
