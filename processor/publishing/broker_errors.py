"""One readable reason for a failed AMQP connection, from pika's nested exceptions.

pika reports a refused connection as an ``AMQPConnectionError`` whose text is empty; the cause
sits a few levels down (``AMQPConnectionWorkflowFailed.exceptions[-1]``, then the connector
error's ``exception``, then the ``OSError``). Its own loggers meanwhile print several ERROR
lines and a traceback for the same event, which is why ``processor.logs`` quiets them: the
product says it once, in one line naming host, port and reason.
"""

from __future__ import annotations

import ssl
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
        return (
            "the broker refused the login (the user name and password, or with "
            "BROKER_SASL_MECHANISM=EXTERNAL the client certificate: is there a broker user "
            "named after its common name?)"
        )
    if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
        return "the broker refused access to the virtual host (does it exist, may the user use it?)"
    return _reason_of(_innermost(error))


def _tls_reason(error: ssl.SSLError) -> str:
    """A failed TLS handshake in words: a refused certificate says what to check."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the broker's TLS certificate was refused ({error.verify_message}; is "
            "BROKER_TLS_CA_FILE the CA that signed it, and does it name this host?)"
        )
    return f"the TLS handshake failed ({error.reason or error}; is this port TLS?)"


def _reason_of(inner: BaseException) -> str:
    """The innermost cause in words: a TLS failure, the broker's close code and text, an
    ``OSError``'s message, else the text or class name."""
    if isinstance(inner, ssl.SSLError):
        return _tls_reason(inner)
    if isinstance(inner, pika.exceptions.ConnectionClosed | pika.exceptions.ChannelClosed):
        return f"{inner.reply_code} {inner.reply_text}"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    text = str(inner).strip()
    return text or type(inner).__name__
