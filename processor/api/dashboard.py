"""The dashboard's routes: ``GET /`` (the page), ``GET``/``POST /sign-in``, ``POST /sign-out``,
and its static files under ``/static/`` (the page's script and style, and Chart.js).

None of them is in the OpenAPI document. ``GET /`` needs a ``read`` (or ``admin``) token, from
``Authorization: Bearer`` or from the session cookie that ``POST /sign-in`` sets
(``processor.api.sessions``); without one it redirects to ``/sign-in``. The page itself holds
no data: its script polls the JSON API with the cookie.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.response import Redirect
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_303_SEE_OTHER,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
)

from processor.access.tokens import token_id_of
from processor.api.auth import requires, token_of
from processor.api.context import ApiContext
from processor.api.errors import SIGN_IN_REDIRECT_OPT
from processor.api.pages import SECURITY_HEADERS, dashboard_page, sign_in_page
from processor.api.sessions import (
    CSRF_FIELD,
    CSRF_IN_FORM_OPT,
    SessionCredentials,
    csrf_matches,
    csrf_refused,
    new_session,
    session_credentials,
)

#: The page's script and style, and the vendored Chart.js (see ``static/README.md``).
STATIC_DIR: Final = Path(__file__).parent / "static"
#: Largest sign-in form, bytes (a token is 63 characters).
SIGN_IN_MAX_BYTES: Final = 4096


def html(body: str, status_code: int = HTTP_200_OK) -> Response[str]:
    """An HTML answer with the dashboard's security headers (``pages.SECURITY_HEADERS``)."""
    return Response(body, status_code=status_code, media_type="text/html", headers=SECURITY_HEADERS)


def static_files() -> Router:
    """``/static/``: public files (no token needed: they hold no data)."""
    return create_static_files_router(
        path="/static",
        directories=[STATIC_DIR],
        opt={"exclude_from_auth": True},
        include_in_schema=False,
    )


@get(
    "/",
    include_in_schema=False,
    guards=[requires("read")],
    opt={SIGN_IN_REDIRECT_OPT: True},
)
async def dashboard(request: Request[Any, Any, Any]) -> Response[str]:
    """The dashboard page (HTML). Admin tokens also see the newest dead letters."""
    info = token_of(request)
    credentials = request.scope.get("auth")
    csrf = credentials.csrf_token if isinstance(credentials, SessionCredentials) else None
    if info is None:  # the guard let an open route through: never the case for "/"
        return Redirect("/sign-in", status_code=HTTP_303_SEE_OTHER)
    return html(dashboard_page(token_name=info.name, scope=info.scope, csrf_token=csrf))


@get("/sign-in", include_in_schema=False, exclude_from_auth=True)
async def sign_in_form() -> Response[str]:
    """The sign-in form (HTML)."""
    return html(sign_in_page())


def _same_origin(request: Request[Any, Any, Any]) -> bool:
    """False when the browser says the form was posted from another origin (login CSRF);
    requests without an ``Origin`` header (not from a browser's form) pass."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


@post(
    "/sign-in",
    include_in_schema=False,
    exclude_from_auth=True,
    request_max_body_size=SIGN_IN_MAX_BYTES,
)
async def sign_in(
    request: Request[Any, Any, Any], ctx: NamedDependency[ApiContext]
) -> Response[Any]:
    """Check the form's ``token``; when it is a valid ``read`` or ``admin`` token, open a session
    (the cookie) and redirect to ``/`` (303). Otherwise the form again, with why (401 for an
    unknown, revoked or expired token, 403 for an ``ingest`` token or a foreign origin); the
    token is never echoed."""
    if not _same_origin(request):
        return html(sign_in_page("Sign in from this site's own form."), HTTP_403_FORBIDDEN)
    form = await request.form()
    token = str(form.get("token", "")).strip()
    token_id = token_id_of(token)
    info = None if token_id is None else await ctx.check_token(token)
    if info is None or token_id is None:
        return html(
            sign_in_page("That token is unknown, revoked or expired."), HTTP_401_UNAUTHORIZED
        )
    if not info.allows("read"):
        message = f"A token of scope {info.scope} cannot read: use a read or admin token."
        return html(sign_in_page(message), HTTP_403_FORBIDDEN)
    request.set_session(new_session(token_id))
    return Redirect("/", status_code=HTTP_303_SEE_OTHER)


@post(
    "/sign-out",
    include_in_schema=False,
    exclude_from_auth=True,
    request_max_body_size=SIGN_IN_MAX_BYTES,
    opt={CSRF_IN_FORM_OPT: True},
)
async def sign_out(request: Request[Any, Any, Any]) -> Response[Any]:
    """End the session (the cookie is cleared) and redirect to ``/sign-in`` (303). The form
    carries the session's CSRF token; without it the answer is 403 and the session stays.

    Errors: 403 ``csrf_token_missing`` / ``csrf_token_invalid``.
    """
    credentials = session_credentials(request.scope.get("session"))
    if credentials is not None:
        form = await request.form()
        sent = str(form.get(CSRF_FIELD, ""))
        if not csrf_matches(sent, credentials):
            raise csrf_refused(sent)
    request.clear_session()
    return Redirect("/sign-in", status_code=HTTP_303_SEE_OTHER)
