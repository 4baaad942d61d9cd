#!/usr/bin/env bash
# Make sure the browser of the dashboard's browser test is here: Debian's Chromium at
# /usr/bin/chromium (tests/integration/api/test_dashboard_browser.py drives it with Playwright;
# no browser is ever downloaded by Playwright). `just test` runs this first, as `just services`
# makes the servers ready: safe to run twice, and instant when the browser is installed.
#
# Missing browser: installed with `apt-get install -y chromium` as root or through
# passwordless sudo (after `apt-get update` when the package lists are stale or empty);
# otherwise the script prints the commands to run and fails.
#
# Environment: CHROMIUM (the executable, default /usr/bin/chromium; the browser test reads it
# too), BROWSER_PACKAGE (chromium).
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
PACKAGE=${BROWSER_PACKAGE:-chromium}

log() { printf 'browser: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

if [[ -x $CHROMIUM ]]; then
  exit 0
fi

manual() {
  log "$CHROMIUM is missing, and this script cannot install it: $1."
  log "Install Debian's Chromium, then run this again:"
  log "    sudo apt-get update && sudo apt-get install -y $PACKAGE"
  log "(or set CHROMIUM to a Chromium or Chrome executable)"
  exit 1
}

have apt-get || manual "no apt-get (not a Debian or Ubuntu system)"
if [[ $(id -u) == 0 ]]; then
  as_root=()
elif have sudo && sudo -n true >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  manual "not root, and sudo asks for a password (sudo -n true fails)"
fi

install() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$PACKAGE"
}

log "$CHROMIUM is missing: installing $PACKAGE with apt-get"
if ! install; then
  log "apt-get install failed: refreshing the package lists and trying again"
  "${as_root[@]}" apt-get update
  install
fi
if [[ ! -x $CHROMIUM ]]; then
  log "$PACKAGE is installed but $CHROMIUM is still missing: set CHROMIUM to its executable"
  exit 1
fi
log "installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
