"""Browser sessions of the dashboard: an encrypted cookie that names an API token, and CSRF.

A person signs in at ``/sign-in`` with an API token (``read`` or ``admin``). The API then keeps,
in Litestar's client-side session (a cookie encrypted and authenticated with AES-256-GCM), the
token's public id (never its secret), a random CSRF token and the sign-in time. The cookie is
``Secure``, ``HttpOnly``, ``SameSite=Strict``, ``Path=/``.

- Every request of a session checks the token again in ``api_tokens`` by its id
  (``access.tokens.verify_token_id``): revoking or expiring the token ends its sessions on
  their next request. A session also ends ``SESSION_MAX_AGE_S`` after its sign-in.
- The cookie's key is derived from the deployment's hash key (HMAC-SHA-256 with a purpose of
  its own, ``cookie_key``): every API process of a deployment reads every session cookie, and
  there is no new secret to manage. Rotating the hash key signs everyone out.
- A state-changing call (``POST``, ``PUT``, ``PATCH``, ``DELETE``) authenticated by the cookie
  must carry the session's CSRF token in ``X-CSRF-Token`` (``csrf_guard``); the page gets it in
  a ``<meta>`` tag. Calls with ``Authorization: Bearer`` are not touched: a robot never sends a
  cookie or a CSRF token, and a browser never sends the header on its own.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.status_codes import HTTP_403_FORBIDDEN

from processor.api.errors import ApiError
from processor.privacy.keys import Keys

#: Name of the session cookie.
SESSION_COOKIE: Final = "fs_session"
#: Longest life of a session, seconds from its sign-in (the cookie's ``Max-Age`` too).
SESSION_MAX_AGE_S: Final = 12 * 3600
#: Seconds of clock skew tolerated between API processes: a session is accepted from
#: ``-SESSION_CLOCK_SKEW_S`` (signed in by a process whose clock runs ahead) up to
#: ``SESSION_MAX_AGE_S + SESSION_CLOCK_SKEW_S`` seconds of age.
SESSION_CLOCK_SKEW_S: Final = 60
#: Header that carries the CSRF token of a cookie-authenticated state-changing call.
CSRF_HEADER: Final = "X-CSRF-Token"
#: Form field that carries it in the dashboard's own forms (sign-out).
CSRF_FIELD: Final = "csrf_token"
#: Route option that makes ``csrf_guard`` leave the check to the handler (a form post).
CSRF_IN_FORM_OPT: Final = "csrf_in_form"
#: Methods that change state.
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_COOKIE_KEY_PURPOSE: Final = "derived-key"
_COOKIE_KEY_LABEL: Final = "dashboard-session-cookie/v1"
_TOKEN_ID: Final = re.compile(r"[0-9a-f]{16}")
_CSRF_BYTES: Final = 32


@dataclass(frozen=True)
class SessionCredentials:
    """What a valid session cookie holds; the auth value of a cookie-authenticated request.

    Attributes:
        token_id: the public id of the API token the session was opened with.
        csrf_token: the session's CSRF token (URL-safe base64, 43 characters).
        signed_in_at: Unix time of the sign-in, seconds.
    """

    token_id: str
    csrf_token: str
    signed_in_at: int


def cookie_key(keys: Keys) -> bytes:
    """The 32-byte AES-256-GCM key of the session cookie, derived from the hash key.

    HMAC-SHA-256 under the hash key of a label used for nothing else, so the cookie key
    reveals nothing about the hash key and no other keyed hash equals it.
    """
    return keys.keyed_hash(_COOKIE_KEY_PURPOSE, _COOKIE_KEY_LABEL)


def session_config(keys: Keys) -> CookieBackendConfig:
    """Litestar's client-side session (AES-GCM cookie) with the dashboard's cookie flags."""
    return CookieBackendConfig(
        secret=cookie_key(keys),
        key=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
        exclude="^/static/",  # public files: no session, no Set-Cookie
    )


def clearing_cookie() -> Cookie:
    """The ``Set-Cookie`` that removes the session cookie from a browser (a 401 sends it)."""
    return Cookie(
        key=SESSION_COOKIE,
        value="null",
        max_age=0,
        expires=0,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )


def new_session(token_id: str, now: float | None = None) -> dict[str, Any]:
    """The session data of a fresh sign-in with the token ``token_id`` (a new CSRF token).

    Raises:
        ValueError: ``token_id`` is not 16 lowercase hex digits.
    """
    if _TOKEN_ID.fullmatch(token_id) is None:
        raise ValueError("a token id is 16 lowercase hex digits")
    return {
        "token_id": token_id,
        "csrf": secrets.token_urlsafe(_CSRF_BYTES),
        "signed_in_at": int(time.time() if now is None else now),
    }


def session_credentials(session: object, now: float | None = None) -> SessionCredentials | None:
    """The credentials in a loaded session (``scope["session"]``: a mapping, or nothing), None
    when there are none, or the session is too old (``SESSION_MAX_AGE_S``) or from too far in
    the future (both give ``SESSION_CLOCK_SKEW_S`` of clock skew between API processes), or not
    in the shape ``new_session`` makes."""
    if not isinstance(session, Mapping) or not session:
        return None
    token_id = session.get("token_id")
    csrf = session.get("csrf")
    signed_in_at = session.get("signed_in_at")
    if not (
        isinstance(token_id, str)
        and _TOKEN_ID.fullmatch(token_id)
        and isinstance(csrf, str)
        and csrf
        and isinstance(signed_in_at, int)
    ):
        return None
    age = (time.time() if now is None else now) - signed_in_at
    if not -SESSION_CLOCK_SKEW_S <= age < SESSION_MAX_AGE_S + SESSION_CLOCK_SKEW_S:
        return None
    return SessionCredentials(token_id=token_id, csrf_token=csrf, signed_in_at=signed_in_at)


def csrf_matches(sent: str | None, credentials: SessionCredentials) -> bool:
    """True when ``sent`` is the session's CSRF token (compared in constant time)."""
    if not sent:
        return False
    return hmac.compare_digest(sent.encode(), credentials.csrf_token.encode())


def csrf_refused(sent: str | None) -> ApiError:
    """The 403 of a cookie-authenticated state-changing call without the right CSRF token."""
    if not sent:
        return ApiError(
            HTTP_403_FORBIDDEN,
            "csrf_token_missing",
            f"a call with the session cookie that changes state needs the {CSRF_HEADER} header "
            "(the dashboard page has it); robots use Authorization: Bearer instead",
        )
    return ApiError(
        HTTP_403_FORBIDDEN, "csrf_token_invalid", f"the {CSRF_HEADER} header is not this session's"
    )


async def csrf_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """App-wide guard: a state-changing call authenticated by the session cookie carries the
    session's CSRF token in ``X-CSRF-Token``. Bearer-token calls and safe methods pass.

    A coroutine function although it never waits: Litestar runs a plain function guard in a
    worker thread, a hop per guard on every request.

    Raises (from the guard):
        ApiError: 403 ``csrf_token_missing`` / ``csrf_token_invalid``.
    """
    if connection.scope.get("method", "GET") not in UNSAFE_METHODS:
        return
    credentials = connection.scope.get("auth")
    if not isinstance(credentials, SessionCredentials) or handler.opt.get(CSRF_IN_FORM_OPT):
        return
    sent = connection.headers.get(CSRF_HEADER.lower())
    if not csrf_matches(sent, credentials):
        raise csrf_refused(sent)
