"""Bearer-token authentication and scopes, on Litestar's security support.

Every route but the health probes (and ``/metrics`` when ``METRICS_PUBLIC`` is set) needs
``Authorization: Bearer TOKEN`` (RFC 6750). ``BearerTokenAuth`` is a Litestar security config:
its middleware checks the token against ``api_tokens`` on every request
(``processor.access.tokens.verify_token``: a revoked or expired token is refused on its next
use; a route may have its point read sent in the same statement, ``processor.api.prefetch``)
and puts the token's ``TokenInfo`` on the connection; each route's guard (``requires``)
checks the scope. Without a valid token the answer is ``401`` (with ``WWW-Authenticate:
Bearer``), without the scope ``403``, both in the API's error shape; the OpenAPI document
declares the scheme (``BearerToken``).

A browser signed in at ``/sign-in`` has no header but a session cookie
(``processor.api.sessions``): without an ``Authorization`` header the middleware takes the
session's token id and checks that token in ``api_tokens`` the same way (``SessionCheck``). The
auth value is then ``SessionCredentials`` (a bearer call's is the token), which the app-wide
``sessions.csrf_guard`` uses to ask cookie calls that change state for the CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.enums import HttpMethod
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.security.base import AbstractSecurityConfig
from litestar.types import (
    ASGIApp,
    ControllerRouterHandler,
    Guard,
    Method,
    Scopes,
    TypeEncodersMap,
)

from processor.access.tokens import TokenInfo
from processor.api.sessions import session_credentials

#: The OpenAPI name of the scheme.
SCHEME: Final = "BearerToken"
#: What a 401 answer asks for (RFC 6750, section 3).
CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="friendship-stream"'}

#: Checks a token against ``api_tokens`` (``None``: refuse it); Litestar's
#: ``retrieve_user_handler`` signature, ``(token, connection)``.
TokenCheck = Callable[[str, ASGIConnection[Any, Any, Any, Any]], Awaitable[TokenInfo | None]]
#: Checks the token a session names by its id (``None``: refuse it).
SessionCheck = Callable[[str], Awaitable[TokenInfo | None]]


def _unauthorized(message: str) -> NotAuthorizedException:
    return NotAuthorizedException(detail=message, headers=CHALLENGE)


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Reads ``Authorization: Bearer TOKEN`` (or, without that header, the session cookie) and
    checks the token.

    Args:
        app: the next ASGI app.
        check: the config's ``retrieve_user_handler``.
        check_session: checks the token a session names by its id; None: no sessions.
        **options: ``AbstractAuthenticationMiddleware``'s (exclusions, scopes).
    """

    def __init__(
        self,
        app: ASGIApp,
        check: TokenCheck,
        check_session: SessionCheck | None = None,
        **options: Any,
    ) -> None:
        super().__init__(app, **options)
        self.check = check
        self.check_session = check_session

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """The token's ``TokenInfo`` as the user; the token (bearer) or the session's
        ``SessionCredentials`` (cookie) as the auth value.

        Raises:
            NotAuthorizedException: no bearer token and no session, or a token that is unknown,
                revoked or expired.
        """
        if "authorization" not in connection.headers and self.check_session is not None:
            credentials = session_credentials(connection.scope.get("session"))
            if credentials is not None:
                info = await self.check_session(credentials.token_id)
                if info is None:
                    raise _unauthorized("the session's token is revoked or expired: sign in again")
                return AuthenticationResult(user=info, auth=credentials)
        kind, _, token = connection.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            raise _unauthorized("this call needs Authorization: Bearer TOKEN")
        info = await self.check(token, connection)
        if info is None:
            raise _unauthorized("the token is unknown, revoked or expired")
        return AuthenticationResult(user=info, auth=token)


@dataclass
class BearerTokenAuth(AbstractSecurityConfig[TokenInfo, str]):
    """Litestar security config for the API's bearer tokens.

    Attributes:
        retrieve_user_handler: checks a token (``TokenCheck``).
        check_session: checks a session's token by its id (``SessionCheck``); None: the
            middleware ignores session cookies.
        exclude: path patterns that need no token (the health probes).
    """

    retrieve_user_handler: TokenCheck
    check_session: SessionCheck | None = None
    exclude: str | list[str] | None = None
    authentication_middleware_class: type[AbstractAuthenticationMiddleware] = field(
        default=BearerTokenMiddleware
    )
    # The base class declares these without being a dataclass: a dataclass config names them.
    exclude_opt_key: str = "exclude_from_auth"
    exclude_http_methods: Sequence[Method] | None = field(
        default_factory=lambda: [HttpMethod.OPTIONS]
    )
    scopes: Scopes | None = None
    guards: Iterable[Guard] | None = None
    route_handlers: Iterable[ControllerRouterHandler] | None = None
    dependencies: dict[str, Provide] | None = None
    type_encoders: TypeEncodersMap | None = None

    @property
    def openapi_components(self) -> Components:
        """The ``BearerToken`` scheme (HTTP bearer)."""
        return Components(
            security_schemes={
                SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API token: `just token create --scope read --name NAME`",
                )
            }
        )

    @property
    def security_requirement(self) -> SecurityRequirement:
        """Every operation needs the scheme unless it says otherwise."""
        return {SCHEME: []}

    @property
    def middleware(self) -> DefineMiddleware:
        """The authentication middleware, with this config's check and exclusions."""
        return DefineMiddleware(
            BearerTokenMiddleware,
            check=self.retrieve_user_handler,
            check_session=self.check_session,
            exclude=self.exclude,
            exclude_from_auth_key=self.exclude_opt_key,
            exclude_http_methods=self.exclude_http_methods,
            scopes=self.scopes,
        )


def requires(scope: str) -> Guard:
    """A route guard: the request's token must allow ``scope`` (``admin`` allows all).

    A route the app opened (its path in ``app.state.open_paths``: ``/metrics`` with
    ``METRICS_PUBLIC``) passes without a token. The guard is a coroutine function although it
    never waits: Litestar runs a plain function guard in a worker thread on every request.

    Raises (from the guard):
        PermissionDeniedException: the token's scope does not allow it (403).
    """

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        if connection.scope["path"] in connection.app.state.get("open_paths", ()):
            return
        info = connection.scope.get("user")
        if not isinstance(info, TokenInfo) or not info.allows(scope):
            granted = info.scope if isinstance(info, TokenInfo) else "none"
            needed = "an admin token" if scope == "admin" else f"a {scope} (or admin) token"
            raise PermissionDeniedException(
                detail=f"this call needs {needed}; this token's scope is {granted}"
            )

    return guard


def token_of(connection: ASGIConnection[Any, Any, Any, Any]) -> TokenInfo | None:
    """The token info the middleware found for this request, None on an open route."""
    info = connection.scope.get("user")
    return info if isinstance(info, TokenInfo) else None
