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

ensure_vhost() {
  local vhost
  vhost=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]).path; print(u.unquote(p[1:]) if len(p) > 1 else "/")' "$AMQP_URL")
  if [[ "$vhost" != "/" ]]; then
    rabbitmqctl add_vhost "$vhost" >/dev/null 2>&1 || true
    rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null 2>&1 || true
  fi
}

start_postgres
start_rabbitmq
ensure_vhost
log "RabbitMQ (5672, stream 5552, management 15672) and PostgreSQL (5432) are ready"
