"""The dashboard in a real browser: Debian's Chromium (``infra/browser.sh`` installs it; never a
downloaded one) driven by Playwright, against the demo pipeline run to zero lag.

The demo runs as ``python -m processor demo`` in a working directory, vhost, database and API
port of the test's own, and is stopped with ``python -m processor down`` at the end. The test
signs in through the form over plain http on 127.0.0.1 (the ``Secure`` cookie is kept there:
Chromium treats 127.0.0.1 as potentially trustworthy), checks that the page's numbers are the
JSON API's, that the charts drew, that a read session sees no dead letters, that a cookie POST
without the CSRF token is refused, and that revoking the token ends the session. The screenshot
goes to the test's ``tmp_path`` and to ``test-output/dashboard.png`` (git-ignored; the README's
``docs/dashboard.png`` is a copy of one).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from demo import background
from processor.access.tokens import revoke_token
from processor.settings import Settings
from projections.database import connect
from testkit.services import make_token
from tests.integration.support import run_command, settings_env

REPO = Path(__file__).resolve().parents[3]
#: The browser: Debian's Chromium unless CHROMIUM names another (infra/browser.sh reads it too).
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Where the last screenshot is kept beside the test's own output (git-ignored).
STABLE_SCREENSHOT = REPO / "test-output" / "dashboard.png"
#: A child of the demo (child-000 .. child-199).
CHILD = "child-042"
WAIT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _api(base: str, path: str, token: str) -> Any:
    request = urllib.request.Request(
        base + path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


@pytest.fixture
def demo(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, str]]:
    """The demo run to zero lag on the test's own deployment; its API's base URL. ``down``
    stops it afterwards, even when the test failed."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `just browser`"
    work = tmp_path / "demo"
    work.mkdir()
    monkeypatch.chdir(work)  # background.stop finds the demo's .run/ there
    port = _free_port()
    env = settings_env(settings.with_overrides(api_port=port))
    env["SECRETS_DIR"] = str(tmp_path / "secrets")
    env["TERM"] = "dumb"
    env["COLUMNS"] = "100"
    try:
        started = run_command(["demo"], env, cwd=work)
        assert started.returncode == 0, started.stdout + started.stderr
        # Two invalid events, so the dead-letter table has rows; then zero lag again.
        bad = work / "bad.jsonl"
        bad.write_text('{"type": "no.such_type", "user_id": "child-007"}\nnot json at all\n')
        published = run_command(["publish", "--allow-invalid", str(bad)], env, cwd=work)
        assert published.returncode == 0, published.stderr
        idle = run_command(["wait-idle", "--timeout", "60"], env, cwd=work)
        assert idle.returncode == 0, idle.stderr
        yield settings, f"http://127.0.0.1:{port}"
    finally:
        down = run_command(["down"], env, cwd=work)
        for name in ("api", "processor"):
            background.stop(name, timeout_s=10)
        assert down.returncode == 0, down.stderr


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _signed_in(browser: Browser, base: str, token: str) -> tuple[BrowserContext, Page, list[str]]:
    """A fresh browser context signed in through the form; the page's console errors."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    assert page.url == base + "/sign-in"  # not signed in: the form
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    page.wait_for_selector("body[data-stats-loaded=true]", timeout=WAIT_MS)
    return context, page, errors


def _check_cookie(context: BrowserContext, page: Page) -> None:
    (cookie,) = [c for c in context.cookies() if c["name"] == "fs_session"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert "fs_session" not in page.evaluate("document.cookie")  # HttpOnly: not for scripts


def _check_stats(page: Page, stats: dict[str, Any]) -> None:
    assert page.get_attribute("#events-applied", "data-value") == str(stats["events_applied"])
    assert page.get_attribute("#dead-lettered", "data-value") == str(stats["dead_lettered"])
    rows = page.eval_on_selector_all(
        "#partitions tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
    )
    expected = [
        [str(p["partition"]), str(p["checkpoint"]), str(p["lag"]), p["owner"] or "—"]
        for p in stats["partitions"]
    ]
    assert rows == expected
    assert all(p["lag"] == 0 and p["owner"] for p in stats["partitions"])


def _check_throughput(page: Page, base: str, token: str, applied: int) -> None:
    page.wait_for_selector("#throughput-chart[data-points]", timeout=WAIT_MS)
    for _attempt in range(5):
        answer = _api(base, "/v1/stats/throughput?minutes=10&step_s=10", token)
        drawn = page.evaluate(
            "() => { const c = Chart.getChart('throughput-chart');"
            " return {labels: c.data.labels, values: c.data.datasets[0].data}; }"
        )
        labels = [i["start"][11:19] for i in answer["intervals"]]
        if drawn["labels"] == labels:
            break
        time.sleep(2)  # an interval ended between the page's poll and ours
    assert drawn["labels"] == labels and len(labels) == 60
    assert drawn["values"][:-1] == [i["per_s"] for i in answer["intervals"][:-1]]
    assert max(drawn["values"]) > 0
    # The demo ran in the last ten minutes: every event it applied is in the window.
    # (Its fixture's two invalid events are dead letters, not applied.)
    assert sum(i["applied"] for i in answer["intervals"]) == applied


def _check_child(page: Page, base: str, token: str) -> None:
    friendship = _api(base, f"/v1/users/{CHILD}/friendship", token)
    topics = _api(base, f"/v1/users/{CHILD}/topics", token)
    page.fill("#user-id", CHILD)
    page.click("#lookup-form button")
    page.wait_for_selector("#child[data-user-loaded=true]", timeout=WAIT_MS)
    assert page.inner_text("#child-score") == str(friendship["score"])
    assert page.inner_text("#child-level") == friendship["level"]
    assert page.inner_text("#child-events") == str(friendship["events_applied"])
    shown = page.eval_on_selector_all(
        "#child-topics tbody tr",
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent,"
        " r.cells[2].textContent])",
    )
    assert shown == [
        [t["topic"], str(t["conversations"]), str(t["turns"])] for t in topics["topics"]
    ]
    mix = page.evaluate("Chart.getChart('topics-chart').data.datasets[0].data")
    assert mix == [t["turns"] for t in topics["topics"]] and sum(mix) > 0
    # An id that breaks the contract's rule is refused by the page itself, with a clear
    # message that does not echo it.
    page.fill("#user-id", "<b>x</b>")
    page.click("#lookup-form button")
    page.wait_for_selector("#lookup-message:not([hidden])", timeout=WAIT_MS)
    shown = page.inner_text("#lookup-message")
    assert "1 to 128 characters" in shown and "<b>" not in shown
    assert page.is_hidden("#child")


def _check_dead_letters(page: Page, base: str, token: str) -> None:
    page.wait_for_selector("#dead-letters[data-loaded=true]", timeout=WAIT_MS)
    newest = _api(base, "/v1/dead-letters?limit=10", token)["dead_letters"]
    rows = page.eval_on_selector_all(
        "#dead-letters tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert len(newest) == 2
    assert [[r[1], r[2], r[4]] for r in rows] == [
        [str(d["partition"]), str(d["offset"]), d["reason"]] for d in newest
    ]
    assert not any(d["raw"] and d["raw"] in page.content() for d in newest)  # never raw bytes


def _post_status(page: Page, with_csrf: bool) -> int:
    script = """async (withCsrf) => {
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const headers = {"Content-Type": "application/json"};
        if (withCsrf) headers["X-CSRF-Token"] = csrf;
        const answer = await fetch("/v1/events", {method: "POST", headers, body: "{}"});
        return answer.status;
    }"""
    return int(page.evaluate(script, with_csrf))


def test_the_dashboard_shows_what_the_json_api_answers(
    demo: tuple[Settings, str], browser: Browser, tmp_path: Path
) -> None:
    settings, base = demo
    admin = make_token(settings, "admin", "dashboard-admin")
    context, page, errors = _signed_in(browser, base, admin)
    _check_cookie(context, page)
    stats = _api(base, "/v1/stats", admin)
    _check_stats(page, stats)
    _check_throughput(page, base, admin, stats["events_applied"])
    _check_dead_letters(page, base, admin)
    _check_child(page, base, admin)

    page.wait_for_timeout(500)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    STABLE_SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, STABLE_SCREENSHOT)
    assert shot.stat().st_size > 20_000
    assert not errors, errors  # no script error, no Content-Security-Policy violation

    # A state-changing call with the cookie: refused without the CSRF token, let through with
    # it (to the body check: "{}" is no event, so nothing is published).
    assert _post_status(page, with_csrf=False) == 403
    assert _post_status(page, with_csrf=True) == 422

    # Signing out (the page's form, with its CSRF token) ends the session. Litestar clears the
    # cookie with "null" expiring now: within that second the browser may still list it.
    page.click("form.sign-out button")
    page.wait_for_url(base + "/sign-in")
    left = [c["value"] for c in context.cookies() if c["name"] == "fs_session"]
    assert left in ([], ["null"])
    page.goto(base + "/")
    assert page.url == base + "/sign-in"
    context.close()

    # A read session: no dead letters on its page.
    reader_token = make_token(settings, "read", "dashboard-reader")
    context, page, errors = _signed_in(browser, base, reader_token)
    assert page.query_selector("#dead-letters") is None
    assert page.get_attribute("body", "data-admin") == "false"
    assert not errors, errors

    # Revoking the token ends the session: the page's own poll goes back to the sign-in form,
    # and the JSON API answers 401 to the cookie.
    with connect(settings.database_url) as conn:
        revoke_token(conn, "dashboard-reader")
    page.wait_for_url(base + "/sign-in", timeout=WAIT_MS)
    assert page.evaluate("fetch('/v1/stats').then(a => a.status)") == 401
    page.goto(base + "/")
    assert page.url == base + "/sign-in"
    context.close()
