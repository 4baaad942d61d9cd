"""The dashboard's routes, session cookie and CSRF rule, without a browser (docs/contract.md §6,
"Dashboard"), against the real database and broker.

The test client talks ``https://`` so its cookie jar keeps and sends the ``Secure`` cookie, as
a browser does (over plain http too, on 127.0.0.1: the browser test checks that).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from litestar.testing import TestClient

from processor.access.tokens import revoke_token, token_id_of
from processor.api import create_app
from processor.api.sessions import SESSION_COOKIE, SESSION_MAX_AGE_S
from processor.privacy.keys import new_key
from processor.publishing.topology import declare_topology
from processor.settings import Settings
from projections.database import connect
from testkit.services import Services, isolated_settings, make_token
from tests.integration.api.test_auth import adjusted, bearer, error_of

BASE_URL = "https://testserver.local"


@pytest.fixture(scope="module")
def deployment(services: Services) -> Iterator[Settings]:
    """One vhost and database for the module: every test names its tokens apart."""
    with isolated_settings(services) as isolated:
        declare_topology(isolated)
        yield isolated


@pytest.fixture
def settings(deployment: Settings) -> Settings:
    return deployment


@pytest.fixture
def browser(deployment: Settings) -> Iterator[TestClient[Any]]:
    """A client with its own cookie jar, as one browser."""
    with TestClient(app=create_app(deployment), base_url=BASE_URL) as client:
        yield client


def sign_in(client: TestClient[Any], token: str) -> Any:
    return client.post("/sign-in", data={"token": token}, follow_redirects=False)


def csrf_of(page: str) -> str:
    start = page.index('<meta name="csrf-token" content="') + len(
        '<meta name="csrf-token" content="'
    )
    return page[start : page.index('"', start)]


def set_cookie(response: Any) -> str:
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert len(cookies) == 1, cookies
    return str(cookies[0])


def test_sign_in_sets_a_secure_http_only_strict_cookie_that_names_no_secret(
    settings: Settings, browser: TestClient[Any]
) -> None:
    form = browser.get("/sign-in")
    assert form.status_code == 200 and form.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/sign-in"' in form.text
    token = make_token(settings, "read")
    answer = sign_in(browser, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = set_cookie(answer)
    name, _, rest = cookie.partition("=")
    value, *attributes = [part.strip() for part in rest.split(";")]
    assert name == SESSION_COOKIE
    flags = {a.split("=")[0].lower(): a.partition("=")[2] for a in attributes}
    assert flags.keys() >= {"secure", "httponly", "samesite", "path", "max-age"}
    assert flags["samesite"].lower() == "strict" and flags["path"] == "/"
    assert flags["max-age"] == str(SESSION_MAX_AGE_S)
    # Encrypted: neither the token's secret nor its id can be read in the cookie.
    secret = token[len("fst_") + 16 :]
    token_id = token_id_of(token)
    assert token_id is not None
    opened = base64.b64decode(value.strip('"'))
    assert secret.encode() not in opened and token_id.encode() not in opened
    assert token_id not in value and secret not in value


def test_a_session_reads_the_json_api_and_the_page(
    settings: Settings, browser: TestClient[Any]
) -> None:
    assert sign_in(browser, make_token(settings, "read", "dash-reader")).status_code == 303
    stats = browser.get("/v1/stats")
    assert stats.status_code == 200, stats.text
    assert len(stats.json()["partitions"]) == settings.partitions
    page = browser.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " on" not in page.text.replace(" one", "")
    assert "dash-reader" in page.text and len(csrf_of(page.text)) >= 40
    assert 'id="dead-letters"' not in page.text  # read scope: no dead letters
    error_of(browser.get("/v1/dead-letters"), 403, "forbidden")


def test_an_admin_session_sees_the_dead_letter_section(
    settings: Settings, browser: TestClient[Any]
) -> None:
    assert sign_in(browser, make_token(settings, "admin")).status_code == 303
    page = browser.get("/")
    assert 'id="dead-letters"' in page.text and 'data-admin="true"' in page.text
    assert browser.get("/v1/dead-letters?limit=10").status_code == 200


def test_a_state_changing_call_with_the_cookie_needs_the_csrf_token(
    settings: Settings, browser: TestClient[Any]
) -> None:
    assert sign_in(browser, make_token(settings, "admin")).status_code == 303
    csrf = csrf_of(browser.get("/").text)
    body = adjusted("kid-csrf")
    missing = browser.post("/v1/events", content=body)
    assert "X-CSRF-Token" in error_of(missing, 403, "csrf_token_missing")
    wrong = browser.post("/v1/events", content=body, headers={"X-CSRF-Token": "x" * 43})
    error_of(wrong, 403, "csrf_token_invalid")
    error_of(browser.delete("/v1/users/kid-csrf"), 403, "csrf_token_missing")
    accepted = browser.post("/v1/events", content=body, headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 202, accepted.text
    erased = browser.delete("/v1/users/kid-csrf", headers={"X-CSRF-Token": csrf})
    assert erased.status_code == 200, erased.text


def test_bearer_calls_need_no_csrf_token_even_beside_a_cookie(
    settings: Settings, browser: TestClient[Any]
) -> None:
    assert sign_in(browser, make_token(settings, "read")).status_code == 303
    ingest = make_token(settings, "ingest")
    answer = browser.post("/v1/events", content=adjusted("kid-robot"), headers=bearer(ingest))
    assert answer.status_code == 202, answer.text


def test_revoking_the_token_ends_its_sessions_at_once(
    settings: Settings, browser: TestClient[Any]
) -> None:
    assert sign_in(browser, make_token(settings, "read", "dash-revoked")).status_code == 303
    assert browser.get("/v1/stats").status_code == 200
    with connect(settings.database_url) as conn:
        revoke_token(conn, "dash-revoked")
    refused = browser.get("/v1/stats")
    assert "sign in again" in error_of(refused, 401, "unauthorized")
    assert refused.headers["set-cookie"].startswith(f"{SESSION_COOKIE}=null")  # cleared
    browser.cookies.clear()
    assert sign_in(browser, make_token(settings, "read", "dash-other")).status_code == 303
    with connect(settings.database_url) as conn:
        revoke_token(conn, "dash-other")
    page = browser.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/sign-in"


def test_without_credentials_the_page_redirects_and_the_json_api_answers_401(
    browser: TestClient[Any],
) -> None:
    page = browser.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/sign-in"
    error_of(browser.get("/v1/stats"), 401, "unauthorized")
    script = browser.get("/static/dashboard.js")
    assert script.status_code == 200  # public, no data
    # The page lists dead letters without their bytes: it never downloads them.
    assert "/v1/dead-letters?limit=10&include_raw=false" in script.text
    assert "set-cookie" not in browser.get("/static/dashboard.css").headers


@pytest.mark.parametrize(
    "token", ["fst_0123456789abcdef" + "A" * 43, "not a token <script>", "  "], ids=str
)
def test_a_bad_token_gets_the_form_again_with_a_clear_message_and_no_echo(
    browser: TestClient[Any], token: str
) -> None:
    answer = sign_in(browser, token)
    assert answer.status_code in (400, 401), answer.text
    assert "unknown, revoked or expired" in answer.text
    assert '<form method="post" action="/sign-in"' in answer.text
    if token.strip():
        assert token not in answer.text and "AAAAAAAA" not in answer.text
    assert "set-cookie" not in answer.headers
    assert "content-security-policy" in answer.headers


def test_an_ingest_token_cannot_open_a_dashboard_session(
    settings: Settings, browser: TestClient[Any]
) -> None:
    answer = sign_in(browser, make_token(settings, "ingest"))
    assert answer.status_code == 403 and "scope ingest cannot read" in answer.text
    assert "set-cookie" not in answer.headers


def test_a_sign_in_posted_from_another_site_is_refused(
    settings: Settings, browser: TestClient[Any]
) -> None:
    answer = browser.post(
        "/sign-in",
        data={"token": make_token(settings, "read")},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 403 and "set-cookie" not in answer.headers


def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(
    settings: Settings, browser: TestClient[Any]
) -> None:
    assert sign_in(browser, make_token(settings, "read")).status_code == 303
    csrf = csrf_of(browser.get("/").text)
    error_of(browser.post("/sign-out", data={}), 403, "csrf_token_missing")
    assert browser.get("/v1/stats").status_code == 200
    out = browser.post("/sign-out", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/sign-in"
    assert out.headers["set-cookie"].startswith(f"{SESSION_COOKIE}=null")
    error_of(browser.get("/v1/stats"), 401, "unauthorized")


def test_every_api_process_of_a_deployment_reads_its_cookies_and_no_other(
    settings: Settings, browser: TestClient[Any]
) -> None:
    assert sign_in(browser, make_token(settings, "read")).status_code == 303
    cookie = browser.cookies[SESSION_COOKIE]
    with TestClient(app=create_app(settings), base_url=BASE_URL) as other_process:
        other_process.cookies[SESSION_COOKIE] = cookie
        assert other_process.get("/v1/stats").status_code == 200
    other_keys = settings.with_overrides(hash_key=new_key())
    with TestClient(app=create_app(other_keys), base_url=BASE_URL) as other_deployment:
        other_deployment.cookies[SESSION_COOKIE] = cookie
        error_of(other_deployment.get("/v1/stats"), 401, "unauthorized")


def test_the_html_routes_stay_out_of_the_api_description(browser: TestClient[Any]) -> None:
    paths = browser.get("/schema/openapi.json").json()["paths"]
    assert "/v1/stats/throughput" in paths
    assert not {"/", "/sign-in", "/sign-out"} & set(paths)
    assert not any(path.startswith("/static") for path in paths)


def test_throughput_sums_the_committed_batches_per_interval(
    settings: Settings, browser: TestClient[Any]
) -> None:
    with connect(settings.database_url) as conn:
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        start = now[0]
        rows = [(start - timedelta(seconds=s), n) for s, n in ((0, 30), (0, 12), (75, 100))]
        rows.append((start - timedelta(minutes=30), 999))  # outside the window
        for committed_at, applied in rows:
            conn.execute(
                "INSERT INTO checkpoint_log (partition, first_offset, last_offset, owner, "
                "lease_epoch, applied, dead_lettered, committed_at) "
                "VALUES (0, 0, 0, 'test', 0, %s, 1, %s)",
                (applied, committed_at),
            )
    token = make_token(settings, "read")
    answer = browser.get("/v1/stats/throughput?minutes=5&step_s=30", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["step_s"] == 30 and len(body["intervals"]) == 10
    assert sum(i["applied"] for i in body["intervals"]) == 142
    assert body["intervals"][-1]["applied"] == 42
    assert body["intervals"][-1]["dead_lettered"] == 2
    starts = [datetime.fromisoformat(i["start"]) for i in body["intervals"]]
    assert all(b - a == timedelta(seconds=30) for a, b in pairwise(starts))
    assert starts[-1] <= datetime.now(UTC) < starts[-1] + timedelta(seconds=60)
    too_many = browser.get("/v1/stats/throughput?minutes=60&step_s=1", headers=bearer(token))
    error_of(too_many, 400, "invalid_parameters")
    error_of(browser.get("/v1/stats/throughput"), 401, "unauthorized")


def test_a_bearer_token_gets_the_page_too_without_a_session(
    settings: Settings, browser: TestClient[Any]
) -> None:
    page = browser.get("/", headers=bearer(make_token(settings, "admin", "dash-bearer")))
    assert page.status_code == 200 and "dash-bearer" in page.text
    assert csrf_of(page.text) == "" and "Sign out" not in page.text
    assert "set-cookie" not in page.headers
    ingest = browser.get("/", headers=bearer(make_token(settings, "ingest")))
    error_of(ingest, 403, "forbidden")
