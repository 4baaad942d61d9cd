"""The dashboard's session data, cookie key, CSRF rule, the guards and pages (pure: no app, no
database)."""

from __future__ import annotations

import asyncio
import inspect
import time
from types import SimpleNamespace
from typing import Any

import pytest

from processor.api.auth import requires
from processor.api.errors import ApiError
from processor.api.pages import SECURITY_HEADERS, dashboard_page, sign_in_page
from processor.api.sessions import (
    SESSION_CLOCK_SKEW_S,
    SESSION_MAX_AGE_S,
    SessionCredentials,
    cookie_key,
    csrf_guard,
    new_session,
    session_config,
    session_credentials,
)
from processor.privacy.keys import Keys

KEYS = Keys(hash_key=b"h" * 32, kek=b"k" * 32)
TOKEN_ID = "0123456789abcdef"


def test_the_cookie_key_is_derived_from_the_hash_key_for_this_purpose_only() -> None:
    key = cookie_key(KEYS)
    assert len(key) == 32 and key == cookie_key(Keys(hash_key=b"h" * 32, kek=b"x" * 32))
    assert key != cookie_key(Keys(hash_key=b"g" * 32, kek=b"k" * 32))
    assert key not in (KEYS.hash_key, KEYS.keyed_hash("api-token", ""))


def test_the_cookie_flags() -> None:
    config = session_config(KEYS)
    assert (config.secure, config.httponly, config.samesite, config.path) == (
        True,
        True,
        "strict",
        "/",
    )
    assert config.max_age == SESSION_MAX_AGE_S


def test_a_session_names_its_token_by_id_with_a_fresh_csrf_token() -> None:
    one, two = new_session(TOKEN_ID, now=1000), new_session(TOKEN_ID, now=1000)
    assert one["token_id"] == TOKEN_ID and one["csrf"] != two["csrf"]
    assert session_credentials(one, now=1001) == SessionCredentials(TOKEN_ID, one["csrf"], 1000)
    with pytest.raises(ValueError, match="16 lowercase hex"):
        new_session("fst_" + TOKEN_ID)


@pytest.mark.parametrize(
    "session",
    [
        None,
        {},
        "text",
        {"token_id": "nope", "csrf": "c", "signed_in_at": 1000},
        {"token_id": TOKEN_ID, "csrf": "", "signed_in_at": 1000},
        {"token_id": TOKEN_ID, "csrf": "c", "signed_in_at": "1000"},
    ],
)
def test_anything_else_is_no_session(session: object) -> None:
    assert session_credentials(session, now=1001) is None


def test_a_session_ends_its_max_age_after_the_sign_in() -> None:
    session = new_session(TOKEN_ID, now=1000)
    assert session_credentials(session, now=1000 + SESSION_MAX_AGE_S - 1) is not None
    assert session_credentials(session, now=1000 + SESSION_MAX_AGE_S + 61) is None


def test_a_session_survives_a_minute_of_clock_skew_between_api_processes() -> None:
    # Signed in by a process whose clock runs ahead: a little "from the future" is accepted.
    session = new_session(TOKEN_ID, now=1000)
    assert session_credentials(session, now=1000 - 1) is not None
    assert session_credentials(session, now=1000 - SESSION_CLOCK_SKEW_S) is not None
    assert session_credentials(session, now=1000 - SESSION_CLOCK_SKEW_S - 1) is None
    end = 1000 + SESSION_MAX_AGE_S + SESSION_CLOCK_SKEW_S
    assert session_credentials(session, now=end - 1) is not None
    assert session_credentials(session, now=end) is None


def _connection(method: str, auth: object, headers: dict[str, str]) -> Any:
    return SimpleNamespace(scope={"method": method, "auth": auth}, headers=headers)


def _handler(**opt: object) -> Any:
    return SimpleNamespace(opt=opt)


def test_the_csrf_guard_asks_only_cookie_calls_that_change_state() -> None:
    credentials = SessionCredentials(TOKEN_ID, "the-csrf-token", int(time.time()))

    def guard(connection: Any, handler: Any) -> None:
        asyncio.run(csrf_guard(connection, handler))

    guard(_connection("GET", credentials, {}), _handler())
    guard(_connection("POST", "fst_bearer-token", {}), _handler())
    guard(_connection("POST", credentials, {"x-csrf-token": "the-csrf-token"}), _handler())
    guard(_connection("POST", credentials, {}), _handler(csrf_in_form=True))
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(ApiError) as missing:
            guard(_connection(method, credentials, {}), _handler())
        assert (missing.value.status_code, missing.value.code) == (403, "csrf_token_missing")
    with pytest.raises(ApiError) as wrong:
        guard(_connection("DELETE", credentials, {"x-csrf-token": "other"}), _handler())
    assert wrong.value.code == "csrf_token_invalid"


def test_the_guards_are_coroutine_functions_so_litestar_calls_them_in_the_event_loop() -> None:
    # Regression: Litestar runs a plain function guard in a worker thread (sync_to_thread), and
    # these guards run on every request: two thread hops per read, queued behind the blocking
    # database calls that share the executor.
    assert inspect.iscoroutinefunction(csrf_guard)
    for scope in ("read", "ingest", "admin"):
        assert inspect.iscoroutinefunction(requires(scope))


def test_pages_escape_what_they_show_and_carry_no_inline_script() -> None:
    page = dashboard_page(token_name='<img src=x onerror="1">', scope="read", csrf_token="a&b")
    assert "<img src=x" not in page and "&lt;img src=x" in page
    assert 'content="a&amp;b"' in page
    assert "<script>" not in page and "<style" not in page and ' style="' not in page
    assert 'id="dead-letters"' not in page
    assert 'id="dead-letters"' in dashboard_page(token_name="t", scope="admin", csrf_token=None)
    assert "Sign out" not in dashboard_page(token_name="t", scope="admin", csrf_token=None)
    assert "&lt;b&gt;" in sign_in_page("<b>")
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"
