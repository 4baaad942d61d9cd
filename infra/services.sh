#!/usr/bin/env bash
# Make the local RabbitMQ and PostgreSQL ready for this project, on a machine without Docker.
# Starts them when they are down, enables the RabbitMQ plugins the project needs, waits for the
# AMQP, stream and management ports, and creates the vhost named in AMQP_URL. Safe to run twice.
set -euo pipefail

PLUGINS=(rabbitmq_consistent_hash_exchange rabbitmq_stream rabbitmq_management)
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}

log() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 tries=${3:-120}
  for ((i = 0; i < tries; i++)); do
    if port_open "$port"; then return 0; fi
    sleep 0.5
  done
  log "$what did not open port $port"
  return 1
}

start_postgres() {
  if port_open 5432; then return 0; fi
  log "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  wait_port 5432 PostgreSQL
}

start_rabbitmq() {
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached || true
    wait_port 5672 RabbitMQ 240
  fi
  # Wait until the node answers the CLI before changing plugins.
  rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  local enabled
  enabled=$(rabbitmq-plugins list -e -m 2>/dev/null || true)
  local missing=()
  for plugin in "${PLUGINS[@]}"; do
    grep -qx "$plugin" <<<"$enabled" || missing+=("$plugin")
  done
  if ((${#missing[@]})); then
    log "enabling RabbitMQ plugins: ${missing[*]}"
    if ! rabbitmq-plugins enable "${missing[@]}" >/dev/null 2>&1; then
      log "online enabling failed; enabling offline and restarting the node"
      rabbitmq-plugins enable --offline "${missing[@]}" >/dev/null
      rabbitmqctl stop >/dev/null 2>&1 || true
      for ((i = 0; i < 60; i++)); do port_open 5672 || break; sleep 0.5; done
      rabbitmq-server -detached
      wait_port 5672 RabbitMQ 240
      rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
    fi
  fi
  wait_port 5552 "RabbitMQ stream plugin" 120
  wait_port 15672 "RabbitMQ management plugin" 120
}

# The vhost named in AMQP_URL, created through the management API (fast, idempotent).
ensure_vhost() {
  python3 - "$AMQP_URL" <<'PY'
import base64, sys, urllib.parse as u, urllib.request as r
url = u.urlsplit(sys.argv[1])
vhost = u.unquote(url.path[1:]) if len(url.path) > 1 else "/"
if vhost != "/":
    user, password = u.unquote(url.username or "guest"), u.unquote(url.password or "guest")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
            "Content-Type": "application/json"}
    name = u.quote(vhost, safe="")
    base = "http://127.0.0.1:15672/api"
    r.urlopen(r.Request(f"{base}/vhosts/{name}", data=b"{}", method="PUT", headers=auth))
    body = b'{"configure": ".*", "write": ".*", "read": ".*"}'
    r.urlopen(r.Request(f"{base}/permissions/{name}/{u.quote(user, safe='')}", data=body,
                        method="PUT", headers=auth))
PY
}

# Everything already up, plugins included (the management API lists x-consistent-hash)?
ready() {
  port_open 5432 && port_open 5672 && port_open 5552 && port_open 15672 &&
    python3 -c 'import base64, urllib.request as r; print(r.urlopen(r.Request("http://127.0.0.1:15672/api/overview", headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}), timeout=5).read().decode())' 2>/dev/null |
    grep -q x-consistent-hash
}

# Only a broker and database on this machine are ours to start.
case "$AMQP_URL" in
  *@127.0.0.1[:/]* | *@localhost[:/]* | amqp://127.0.0.1* | amqp://localhost*) ;;
  *) log "AMQP_URL points elsewhere: not managing a local broker"; exit 0 ;;
esac

if ! ready; then
  start_postgres
  start_rabbitmq
fi
ensure_vhost
log "RabbitMQ (5672, stream 5552, management 15672) and PostgreSQL (5432) are ready"
