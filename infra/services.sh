#!/usr/bin/env bash
# Make the local RabbitMQ and PostgreSQL ready for this project, on a machine without Docker.
#
# - A server that is running is never stopped or restarted, unless --allow-restart (or
#   SERVICES_ALLOW_RESTART=1) is given: on a shared machine that would be an outage.
# - A server that is installed but down is started (nothing is disrupted).
# - A server that is not installed is installed with apt-get when this runs as root or with
#   non-interactive sudo (Debian's rabbitmq-server and postgresql; a fresh PostgreSQL gets trust
#   authentication on 127.0.0.1 so the default DATABASE_URL works), or both run from
#   infra/compose.yaml where a Docker engine answers; otherwise it stops with the commands to run.
# - Then it enables the plugins (rabbitmq_consistent_hash_exchange, rabbitmq_stream,
#   rabbitmq_management), waits for the AMQP, stream and management ports and creates the vhost
#   named in AMQP_URL. Safe to run twice.
#
# Supported: RabbitMQ 3.9 or newer (streams and the plugins need it; 3.10 is tested), PostgreSQL
# 13 or newer (15 is tested).
#
# --plan (or SERVICES_PLAN=1) prints what it would do and changes nothing. The ports it checks
# come from SERVICES_AMQP_PORT, SERVICES_STREAM_PORT, SERVICES_MANAGEMENT_PORT and
# SERVICES_POSTGRES_PORT (defaults 5672, 5552, 15672, 5432).
set -euo pipefail

PLUGINS=(rabbitmq_consistent_hash_exchange rabbitmq_stream rabbitmq_management)
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}
AMQP_PORT=${SERVICES_AMQP_PORT:-5672}
STREAM_PORT_=${SERVICES_STREAM_PORT:-5552}
MANAGEMENT_PORT=${SERVICES_MANAGEMENT_PORT:-15672}
POSTGRES_PORT=${SERVICES_POSTGRES_PORT:-5432}
MIN_RABBITMQ=3.9
MIN_POSTGRES=13
ALLOW_RESTART=${SERVICES_ALLOW_RESTART:-0}
PLAN=${SERVICES_PLAN:-0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for arg in "$@"; do
  case "$arg" in
    --allow-restart) ALLOW_RESTART=1 ;;
    --plan) PLAN=1 ;;
    *) echo "usage: infra/services.sh [--plan] [--allow-restart]" >&2; exit 2 ;;
  esac
done

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 tries=${3:-120}
  for ((i = 0; i < tries; i++)); do
    if port_open "$port"; then return 0; fi
    sleep 0.5
  done
  die "$what did not open port $port"
}

have() { command -v "$1" >/dev/null 2>&1; }
have_rabbitmq() { have rabbitmq-server && have rabbitmqctl; }
have_postgres() { have pg_ctlcluster || have pg_ctl || have postgres; }

# How this script may install packages: "root", "sudo" or "" (it may not).
privilege() {
  if [[ $(id -u) == 0 ]]; then echo root
  elif have sudo && sudo -n true 2>/dev/null; then echo sudo
  fi
}

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo -n "$@"; fi; }

# What to do about servers that are not installed: "none", "apt", "compose" or "manual".
install_plan() {
  local missing=$1
  if [[ -z $missing ]]; then echo none
  elif [[ -n $(privilege) ]] && have apt-get; then echo apt
  elif have docker && docker info >/dev/null 2>&1; then echo compose
  else echo manual
  fi
}

missing_packages() {
  local packages=()
  have_rabbitmq || port_open "$AMQP_PORT" || packages+=(rabbitmq-server)
  have_postgres || port_open "$POSTGRES_PORT" || packages+=(postgresql)
  echo "${packages[*]}"
}

manual_steps() {
  local packages=$1
  log "cannot install $packages here (not root, no non-interactive sudo, no apt-get, no Docker)."
  log "Run these as an administrator, then run this script again:"
  log "  sudo apt-get update && sudo apt-get install -y $packages"
  [[ $packages == *postgresql* ]] &&
    log "  # let the default DATABASE_URL in: trust on 127.0.0.1 in pg_hba.conf, then reload" &&
    log "  sudo sed -i 's/^host\( *all *all *127.0.0.1\/32 *\)[a-z0-9-]*/host\1trust/' /etc/postgresql/*/main/pg_hba.conf"
  log "or, with Docker: docker compose -f infra/compose.yaml up -d"
  log "Supported: RabbitMQ $MIN_RABBITMQ or newer, PostgreSQL $MIN_POSTGRES or newer."
}

# Trust connections from 127.0.0.1 and ::1 on a PostgreSQL this script just installed (Debian
# asks for a password there by default; the default DATABASE_URL has none).
trust_localhost() {
  local hba
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    [[ -f $hba ]] || continue
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  done
}

install_missing() {
  local packages=$1 how
  how=$(install_plan "$packages")
  case "$how" in
    none) return 0 ;;
    apt)
      log "installing $packages with apt-get (nothing runs there yet, so nothing is disrupted)"
      if ((PLAN)); then log "plan: apt-get update; apt-get install -y $packages"; return 0; fi
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
      if [[ $packages == *postgresql* ]]; then trust_localhost; fi
      ;;
    compose)
      log "starting RabbitMQ and PostgreSQL from infra/compose.yaml (Docker)"
      if ((PLAN)); then log "plan: docker compose -f $HERE/compose.yaml up -d"; return 0; fi
      docker compose -f "$HERE/compose.yaml" up -d
      ;;
    manual)
      manual_steps "$packages"
      exit 1
      ;;
  esac
}

version_at_least() { # version_at_least HAVE WANT: true when HAVE >= WANT (dotted numbers)
  [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1) == "$2" ]]
}

check_versions() {
  local rabbit pg
  rabbit=$(rabbitmqctl version 2>/dev/null || true)
  if [[ -n $rabbit ]] && ! version_at_least "$rabbit" "$MIN_RABBITMQ"; then
    die "RabbitMQ $rabbit is too old: streams need $MIN_RABBITMQ or newer"
  fi
  pg=$(psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -tAc 'show server_version' 2>/dev/null || true)
  pg=${pg%% *}
  if [[ -n $pg ]] && ! version_at_least "$pg" "$MIN_POSTGRES"; then
    die "PostgreSQL $pg is too old: this project needs $MIN_POSTGRES or newer"
  fi
}

start_postgres() {
  if port_open "$POSTGRES_PORT"; then return 0; fi
  log "starting PostgreSQL (it is installed but not running)"
  if ((PLAN)); then log "plan: pg_ctlcluster ... main start"; return 0; fi
  if have pg_ctlcluster; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  wait_port "$POSTGRES_PORT" PostgreSQL
}

start_rabbitmq() {
  if ! port_open "$AMQP_PORT"; then
    log "starting RabbitMQ (it is installed but not running)"
    if ((PLAN)); then log "plan: rabbitmq-server -detached"; return 0; fi
    rabbitmq-server -detached || true
    wait_port "$AMQP_PORT" RabbitMQ 240
  fi
  # Wait until the node answers the CLI before changing plugins.
  rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  local enabled missing=()
  enabled=$(rabbitmq-plugins list -e -m 2>/dev/null || true)
  for plugin in "${PLUGINS[@]}"; do
    grep -qx "$plugin" <<<"$enabled" || missing+=("$plugin")
  done
  if ((${#missing[@]})); then
    log "enabling RabbitMQ plugins online: ${missing[*]}"
    if ((PLAN)); then log "plan: rabbitmq-plugins enable ${missing[*]}"; return 0; fi
    if ! rabbitmq-plugins enable "${missing[@]}" >/dev/null 2>&1; then
      if ((!ALLOW_RESTART)); then
        log "enabling the plugins online failed. Enabling them offline needs a restart of the"
        log "running broker, which would interrupt everyone using it; this script does not do"
        log "that by itself. To allow it: infra/services.sh --allow-restart"
        log "(or SERVICES_ALLOW_RESTART=1 just services): it runs"
        log "  rabbitmq-plugins enable --offline ${missing[*]} && rabbitmqctl stop && rabbitmq-server -detached"
        exit 1
      fi
      log "--allow-restart: enabling offline, then stopping and starting the broker"
      rabbitmq-plugins enable --offline "${missing[@]}" >/dev/null
      rabbitmqctl stop >/dev/null 2>&1 || true
      for ((i = 0; i < 60; i++)); do port_open "$AMQP_PORT" || break; sleep 0.5; done
      rabbitmq-server -detached
      wait_port "$AMQP_PORT" RabbitMQ 240
      rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
    fi
  fi
  wait_port "$STREAM_PORT_" "RabbitMQ stream plugin" 120
  wait_port "$MANAGEMENT_PORT" "RabbitMQ management plugin" 120
}

# The vhost named in AMQP_URL, created through the management API (fast, idempotent).
ensure_vhost() {
  python3 - "$AMQP_URL" "$MANAGEMENT_PORT" <<'PY'
import base64, sys, urllib.parse as u, urllib.request as r
url = u.urlsplit(sys.argv[1])
vhost = u.unquote(url.path[1:]) if len(url.path) > 1 else "/"
if vhost != "/":
    user, password = u.unquote(url.username or "guest"), u.unquote(url.password or "guest")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
            "Content-Type": "application/json"}
    name = u.quote(vhost, safe="")
    base = f"http://127.0.0.1:{sys.argv[2]}/api"
    r.urlopen(r.Request(f"{base}/vhosts/{name}", data=b"{}", method="PUT", headers=auth))
    body = b'{"configure": ".*", "write": ".*", "read": ".*"}'
    r.urlopen(r.Request(f"{base}/permissions/{name}/{u.quote(user, safe='')}", data=body,
                        method="PUT", headers=auth))
PY
}

# Everything already up, plugins included (the management API lists x-consistent-hash)?
ready() {
  port_open "$POSTGRES_PORT" && port_open "$AMQP_PORT" && port_open "$STREAM_PORT_" &&
    port_open "$MANAGEMENT_PORT" &&
    python3 -c 'import base64, sys, urllib.request as r; print(r.urlopen(r.Request(f"http://127.0.0.1:{sys.argv[1]}/api/overview", headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}), timeout=5).read().decode())' "$MANAGEMENT_PORT" 2>/dev/null |
    grep -q x-consistent-hash
}

# Only a broker and database on this machine are ours to start.
case "$AMQP_URL" in
  *@127.0.0.1[:/]* | *@localhost[:/]* | amqp://127.0.0.1* | amqp://localhost*) ;;
  *) log "AMQP_URL points elsewhere: not managing a local broker"; exit 0 ;;
esac

READY_LINE="RabbitMQ ($AMQP_PORT, stream $STREAM_PORT_, management $MANAGEMENT_PORT) and PostgreSQL ($POSTGRES_PORT) are ready"
if ready; then
  if ((PLAN)); then log "plan: everything is ready; nothing to do"; exit 0; fi
  ensure_vhost
  log "$READY_LINE"
  exit 0
fi
install_missing "$(missing_packages)"
if ((PLAN)) && [[ -n $(missing_packages) ]]; then exit 0; fi
check_versions
start_postgres
start_rabbitmq
if ((PLAN)); then exit 0; fi
ensure_vhost
log "$READY_LINE"
