"""The one error shape of the API, ``{"error": {"code", "message"}}``, and its exception handlers.

Every failure of the JSON API answers this shape: errors raised on purpose (``ApiError``),
Litestar's own (unknown route 404, 405, 413, query parameter validation 400), an unreachable
database (503) and anything unexpected (500, logged with its traceback; the message does not
leak internals).
A browser page (a route with the ``SIGN_IN_REDIRECT_OPT`` option, the dashboard) answers a
missing or refused token with a redirect to the sign-in form instead of a 401.

A value taken from the request is never echoed whole: ``shortened`` and ``quoted`` cut it to
``ECHO_CHARS`` characters. Logs name the route template, never the path (it may hold a user id),
and never a statement's parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import msgspec
import psycopg
import sqlalchemy.exc
from litestar import MediaType, Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Redirect
from litestar.status_codes import (
    HTTP_303_SEE_OTHER,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap

from processor.errors import ProcessorError, loggable
from processor.privacy.errors import KeyMissing

log = logging.getLogger(__name__)

#: What a failing database raises through the API's pool (SQLAlchemy) or a psycopg call.
DATABASE_ERRORS: Final = (sqlalchemy.exc.SQLAlchemyError, psycopg.Error)

#: Most characters of a request value (path, id, cursor) echoed back in an error message.
ECHO_CHARS: Final = 64

#: Route option: a 401 on this route (a browser page) redirects to the sign-in form instead.
SIGN_IN_REDIRECT_OPT: Final = "sign_in_redirect"
#: Where that redirect goes.
SIGN_IN_PATH: Final = "/sign-in"

#: Error code of each HTTP status Litestar raises by itself.
_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ErrorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """``code`` (stable, snake_case), ``message`` (for people), optional ``details``."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error answer."""

    error: ErrorInfo


def shortened(value: str) -> str:
    """``value`` for an error message, cut to ``ECHO_CHARS`` characters (its length said)."""
    if len(value) <= ECHO_CHARS:
        return value
    return f"{value[:ECHO_CHARS]}... ({len(value)} characters)"


def quoted(value: str) -> str:
    """``value`` for an error message as a Python literal (``repr``), cut like ``shortened``."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for a route's error answers (all in the ``ErrorBody`` shape)."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            description='error answer: {"error": {"code", "message"}}',
        )
        for status in statuses
    }


class ApiError(ProcessorError):
    """An error answer raised on purpose by a handler.

    Args:
        status_code: HTTP status.
        code: stable error code, e.g. ``"invalid_events"``.
        message: what went wrong, for people.
        details: optional list of objects (e.g. ``{"index", "field", "reason"}`` per bad event).
        headers: optional response headers (``Retry-After``).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    """A JSON error answer in the API's error shape."""
    return Response(
        ErrorBody(ErrorInfo(code=code, message=message, details=details)),
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _api_error(_request: Request[Any, Any, Any], exc: ApiError) -> Response[ErrorBody]:
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


def _validation_details(exc: ValidationException) -> list[dict[str, Any]] | None:
    if not isinstance(exc.extra, list):
        return None
    details = []
    for item in exc.extra:
        if isinstance(item, dict):
            source = item.get("source", "")
            details.append(
                {
                    "field": str(item.get("key", "")),
                    "source": str(getattr(source, "value", source)),
                    "reason": str(item.get("message", "")),
                }
            )
    return details or None


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if (
        exc.status_code == HTTP_401_UNAUTHORIZED
        and "route_handler" in request.scope
        and request.route_handler.opt.get(SIGN_IN_REDIRECT_OPT)
    ):
        return Redirect(SIGN_IN_PATH, status_code=HTTP_303_SEE_OTHER)
    if isinstance(exc, ValidationException):
        return error_response(
            exc.status_code,
            "invalid_parameters",
            "invalid request parameters",
            _validation_details(exc),
        )
    code = _CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail or code.replace("_", " ")
    if exc.status_code == HTTP_404_NOT_FOUND and "route_handler" not in request.scope:
        message = f"no route {shortened(request.method)} {shortened(request.url.path)}"
    elif exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE and "route_handler" in request.scope:
        limit = request.route_handler.resolve_request_max_body_size()
        message = f"the request body is larger than {limit} bytes"
    return error_response(exc.status_code, code, message, headers=exc.headers)


def _route(request: Request[Any, Any, Any]) -> str:
    """The route template of a request (``/v1/users/{user_id}/friendship``): the path itself may
    hold a user id, which is not logged."""
    return str(request.scope.get("path_template", "(no route)"))


def _database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # SQLAlchemy's message repeats the statement's parameters (user ids); the driver's does not.
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig else exc
    log.warning(
        "database unavailable on %s %s: %s", request.method, _route(request), loggable(cause)
    )
    return error_response(
        HTTP_503_SERVICE_UNAVAILABLE, "database_unavailable", "the database is not reachable"
    )


def _keys_mismatch(request: Request[Any, Any, Any], exc: KeyMissing) -> Response[ErrorBody]:
    # KeyMissing names key ids only, never a key or a child.
    log.error("keys refused on %s %s: %s", request.method, _route(request), exc)
    return error_response(
        HTTP_503_SERVICE_UNAVAILABLE,
        "keys_mismatch",
        "this API's keys are not the deployment's (was the key-encryption key rotated while it "
        "ran?): restart it with the deployment's keys",
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # The traceback goes to DEBUG: an exception's text may quote a request's values.
    log.error("unhandled error on %s %s: %s", request.method, _route(request), loggable(exc))
    log.debug("the traceback of that error", exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal server error")


def exception_handlers(
    on_unmatched: Callable[[str, int], None] | None = None,
    session_cookie: Cookie | None = None,
) -> ExceptionHandlersMap:
    """The app-level handlers that turn every exception into the error shape.

    Args:
        on_unmatched: called with ``(method, status)`` for a request no route matched (404, 405),
            which never reaches route middleware; the metrics count it there.
        session_cookie: the cookie that clears the browser session; a 401 to a request that
            sent a session cookie (its token was revoked or expired) sets it.
    """

    def http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        if on_unmatched is not None and "route_handler" not in request.scope:
            on_unmatched(request.method, exc.status_code)
        response = _http_exception(request, exc)
        if (
            session_cookie is not None
            and exc.status_code == HTTP_401_UNAUTHORIZED
            and session_cookie.key in request.cookies
        ):
            response.set_cookie(session_cookie)
        return response

    return {
        ApiError: _api_error,
        HTTPException: http_exception,
        KeyMissing: _keys_mismatch,
        sqlalchemy.exc.OperationalError: _database_unavailable,
        sqlalchemy.exc.InterfaceError: _database_unavailable,
        sqlalchemy.exc.TimeoutError: _database_unavailable,
        psycopg.OperationalError: _database_unavailable,
        psycopg.InterfaceError: _database_unavailable,
        Exception: _unexpected,
    }
