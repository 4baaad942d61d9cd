"""The dashboard's HTML: the sign-in form and the page, rendered from plain strings.

Pure: no request, no database. Every value put into the HTML goes through ``html.escape``. The
pages have no inline script or style (the Content-Security-Policy, ``SECURITY_HEADERS``, allows
scripts and styles from the API's own ``/static/`` only); the page's numbers are filled in by
``static/dashboard.js``, which polls the JSON API.
"""

from __future__ import annotations

from html import escape
from string import Template
from typing import Final

#: Headers of every HTML answer: no framing, no inline or foreign script, no caching (the page
#: holds the session's CSRF token), no referrer to other sites.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make form posts say Origin: null
    "Cache-Control": "no-store",
}

_HEAD: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · friendship-stream</title>
<link rel="stylesheet" href="/static/dashboard.css">
<link rel="icon" href="data:,">
"""

_SIGN_IN: Final = Template(
    _HEAD
    + """</head>
<body class="sign-in">
<main>
<h1>friendship-stream</h1>
<p>Sign in with an API token of scope <code>read</code> or <code>admin</code>
(<code>just token create --scope read --name NAME</code> makes one; <code>just demo</code>
prints one).</p>
$message
<form method="post" action="/sign-in" autocomplete="off">
<label for="token">API token</label>
<input id="token" name="token" type="password" required autofocus spellcheck="false">
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""
)

_DASHBOARD: Final = Template(
    _HEAD
    + """<meta name="csrf-token" content="$csrf">
<script src="/static/chart.umd.min.js" defer></script>
<script src="/static/dashboard.js" defer></script>
</head>
<body data-admin="$admin">
<header>
<h1>friendship-stream</h1>
<span class="who">signed in with <b>$token_name</b> ($scope)</span>
$sign_out
</header>
<main>
<section id="totals" aria-label="totals">
<div><span class="label">events applied</span><span id="events-applied" class="value">…</span></div>
<div><span class="label">dead letters</span><span id="dead-lettered" class="value">…</span></div>
<div><span class="label">events/s, last 10 s</span><span id="rate-now" class="value">…</span></div>
<div><span class="label">fold version</span><span id="fold-version" class="value">…</span></div>
<div><span class="label">updated</span><span id="updated-at" class="value small">…</span></div>
</section>
<p id="problem" class="problem" hidden></p>
<div class="grid">
<section>
<h2>Partitions</h2>
<table id="partitions">
<thead><tr><th>partition</th><th>checkpoint</th><th>lag</th><th>owner</th></tr></thead>
<tbody></tbody>
</table>
</section>
<section>
<h2>Events applied per second, last 10 minutes</h2>
<div class="chart"><canvas id="throughput-chart" aria-label="events per second"></canvas></div>
</section>
</div>
$dead_letters
<section id="lookup">
<h2>Child lookup</h2>
<form id="lookup-form">
<label for="user-id">user_id</label>
<input id="user-id" name="user_id" required maxlength="128" spellcheck="false"
 autocomplete="off" placeholder="child-042">
<button type="submit">Look up</button>
</form>
<p id="lookup-message" class="problem" hidden></p>
<div id="child" hidden>
<dl>
<dt>score</dt><dd id="child-score"></dd>
<dt>level</dt><dd id="child-level"></dd>
<dt>events applied</dt><dd id="child-events"></dd>
<dt>last event</dt><dd id="child-last-event"></dd>
</dl>
<div class="grid">
<table id="child-topics">
<thead><tr><th>topic</th><th>conversations</th><th>turns</th><th>duration (s)</th>
<th>child turns happy/curious</th><th>last discussed</th></tr></thead>
<tbody></tbody>
</table>
<div class="chart small"><canvas id="topics-chart" aria-label="topic mix"></canvas></div>
</div>
</div>
</section>
</main>
</body>
</html>
"""
)

_DEAD_LETTERS: Final = """<section id="dead-letters-section">
<h2>Newest dead letters <small>(admin)</small></h2>
<table id="dead-letters">
<thead><tr><th>when</th><th>partition</th><th>offset</th><th>field</th><th>reason</th></tr></thead>
<tbody></tbody>
</table>
</section>"""

_SIGN_OUT: Final = Template(
    """<form method="post" action="/sign-out" class="sign-out">
<input type="hidden" name="csrf_token" value="$csrf">
<button type="submit">Sign out</button>
</form>"""
)


def sign_in_page(message: str | None = None) -> str:
    """The sign-in form, with ``message`` (plain text, escaped) above it when given."""
    shown = "" if message is None else f'<p class="problem" role="alert">{escape(message)}</p>'
    return _SIGN_IN.substitute(title="Sign in", message=shown)


def dashboard_page(*, token_name: str, scope: str, csrf_token: str | None) -> str:
    """The dashboard for a token named ``token_name`` of ``scope``.

    Args:
        token_name: the token's name (shown, escaped).
        scope: ``read`` or ``admin``; only ``admin`` gets the dead-letter section.
        csrf_token: the session's CSRF token (into a ``<meta>`` tag and the sign-out form);
            None for a page fetched with a bearer token (no session, no sign-out).
    """
    admin = scope == "admin"
    csrf = escape(csrf_token or "")
    return _DASHBOARD.substitute(
        title="Dashboard",
        csrf=csrf,
        admin="true" if admin else "false",
        token_name=escape(token_name),
        scope=escape(scope),
        sign_out="" if csrf_token is None else _SIGN_OUT.substitute(csrf=csrf),
        dead_letters=_DEAD_LETTERS if admin else "",
    )
