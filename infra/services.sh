#!/usr/bin/env bash
# Make RabbitMQ and PostgreSQL ready for this project on this machine. `just services` runs it
# before every recipe: it is safe to run twice, and fast (a few probes) when everything is ready.
#
# Supported versions: RabbitMQ 3.9 or newer (streams and the rabbitmq_stream plugin need it;
# 3.10 is tested), PostgreSQL 13 or newer (DROP DATABASE ... WITH (FORCE); 15 is tested).
#
# Each server that AMQP_URL / DATABASE_URL place on this machine (127.0.0.1, localhost, ::1) is:
#   running          checked: its version; RabbitMQ: the missing plugins are enabled online.
#   installed, down  started (RabbitMQ: its plugins are enabled offline first, so no restart later).
#   absent           installed, as nothing runs there yet: with apt-get as root or through
#                    passwordless sudo, then set up for the default URLs (the new PostgreSQL
#                    trusts 127.0.0.1 and ::1), else with docker compose (infra/compose.yaml)
#                    when a Docker engine runs; otherwise the script stops with the commands.
# A broker that was running when the script began is never stopped or restarted unless
# --allow-restart (or SERVICES_ALLOW_RESTART=1) allows it; it only ever needs one when its
# plugins cannot be enabled online. PostgreSQL is never restarted. Other hosts are left alone.
#
# Usage: infra/services.sh [--plan] [--allow-restart]
#   --plan (or SERVICES_DRY_RUN=1, or SERVICES_PLAN=1)  print what is present and what a run
#       would do, change nothing; exit 1 when a run would stop (manual steps needed)
#   --allow-restart (or SERVICES_ALLOW_RESTART=1)  allow restarting a running broker
# Environment: AMQP_URL and DATABASE_URL (the project's, same defaults), STREAM_PORT (5552),
#   MANAGEMENT_PORT (15672), SERVICES_INSTALLER=auto|apt|compose|manual (auto: apt-get, then
#   compose), SERVICES_TIMEOUT_S (120: the longest wait for a port), SERVICES_EXTRA_PATH (the
#   sbin directories searched for the servers' tools), SERVICES_PG_ETC (/etc/postgresql).
set -euo pipefail

PLUGINS=(rabbitmq_consistent_hash_exchange rabbitmq_stream rabbitmq_management)
RABBITMQ_MIN=3.9
RABBITMQ_TESTED=3.10
POSTGRES_MIN=13
POSTGRES_TESTED=15
SUPPORTED="RabbitMQ $RABBITMQ_MIN or newer (streams need it; $RABBITMQ_TESTED is tested) and PostgreSQL $POSTGRES_MIN or newer ($POSTGRES_TESTED is tested)"
TRUST_MARK="# Added by friendship-stream infra/services.sh on this new server: local development trusts TCP from this machine."

AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}
DATABASE_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/events}
STREAM_PORT=${STREAM_PORT:-5552}
MANAGEMENT_PORT=${MANAGEMENT_PORT:-15672}
TIMEOUT_S=${SERVICES_TIMEOUT_S:-120}
PG_ETC=${SERVICES_PG_ETC:-/etc/postgresql}
PLAN=${SERVICES_DRY_RUN:-${SERVICES_PLAN:-0}}
ALLOW_RESTART=${SERVICES_ALLOW_RESTART:-0}
# Debian keeps the servers' tools in sbin directories, which a non-root PATH lacks.
EXTRA_PATH=${SERVICES_EXTRA_PATH-/usr/local/sbin:/usr/sbin:/sbin}
if [[ -n $EXTRA_PATH ]]; then PATH=$PATH:$EXTRA_PATH; fi

here=${BASH_SOURCE[0]%/*}
if [[ $here == "${BASH_SOURCE[0]}" ]]; then here=.; fi
ROOT=$(cd "$here/.." && pwd)
SELF="$ROOT/infra/services.sh"
COMPOSE_FILE="$ROOT/infra/compose.yaml"

# --- small helpers ------------------------------------------------------------------------------

log() { printf '[services] %s\n' "$*" >&2; }

# Log every argument as a line, then stop.
die() {
  local line
  for line; do log "$line"; done
  exit 1
}

truthy() { [[ ${1,,} =~ ^(1|true|yes|on)$ ]]; }

have() { command -v "$1" >/dev/null 2>&1; }

# join SEPARATOR WORD...: the words separated by SEPARATOR.
join() {
  local separator=$1 out=$2 word
  shift 2
  for word; do out+=$separator$word; done
  echo "$out"
}

IS_ROOT=""
is_root() {
  if [[ -z $IS_ROOT ]]; then
    if [[ $(id -u 2>/dev/null || true) == 0 ]]; then IS_ROOT=1; else IS_ROOT=0; fi
  fi
  [[ $IS_ROOT == 1 ]]
}

SUDO_OK=""
sudo_works() {
  if [[ -z $SUDO_OK ]]; then
    if have sudo && sudo -n true >/dev/null 2>&1; then SUDO_OK=1; else SUDO_OK=0; fi
  fi
  [[ $SUDO_OK == 1 ]]
}

# Run as root: directly when we are root, else through passwordless sudo (checked beforehand).
as_root() {
  if is_root; then "$@"; else sudo -n "$@"; fi
}

# Run a server's own tool. A system package's (under /usr, not /usr/local) acts on a system
# service and needs root: when we are not root it goes through passwordless sudo, if that works.
svc() {
  local path
  path=$(command -v "$1") || return 127
  if ! is_root && [[ $path == /usr/* && $path != /usr/local/* ]] && sudo_works; then
    sudo -n "$@"
  else
    "$@"
  fi
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  local i
  for ((i = 0; i < TIMEOUT_S * 2; i++)); do
    if port_open "$1" "$2"; then return 0; fi
    sleep 0.5
  done
  return 1
}

wait_closed() {
  local i
  for ((i = 0; i < TIMEOUT_S * 2; i++)); do
    if ! port_open "$1" "$2"; then return 0; fi
    sleep 0.5
  done
  return 1
}

# version_ge 3.10.8 3.9: is the first version (leading digits and dots) at least the second?
version_ge() {
  local -a got want
  local i g w
  IFS=. read -r -a got <<<"${1%%[^0-9.]*}"
  IFS=. read -r -a want <<<"$2"
  for i in 0 1 2; do
    g=${got[i]:-0} w=${want[i]:-0}
    if ((10#$g > 10#$w)); then return 0; fi
    if ((10#$g < 10#$w)); then return 1; fi
  done
  return 0
}

is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# --- configuration -------------------------------------------------------------------------------

parse_args() {
  local arg
  for arg; do
    case $arg in
      --plan | --dry-run) PLAN=1 ;;
      --allow-restart) ALLOW_RESTART=1 ;;
      -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"
        exit 0
        ;;
      *) die "unknown argument $arg (known: --plan, --allow-restart, --help)" ;;
    esac
  done
  [[ $TIMEOUT_S =~ ^[0-9]+$ ]] || die "SERVICES_TIMEOUT_S=$TIMEOUT_S is not a number of seconds"
  case ${SERVICES_INSTALLER:=auto} in
    auto | apt | compose | manual) ;;
    *) die "SERVICES_INSTALLER=$SERVICES_INSTALLER: use auto, apt, compose or manual" ;;
  esac
}

# Host, port and credentials out of AMQP_URL and DATABASE_URL. Probes go to 127.0.0.1 for
# "localhost"; PG_ADMIN_URL is DATABASE_URL on the maintenance database (postgres).
parse_urls() {
  local out
  out=$(
    python3 - "$AMQP_URL" "$DATABASE_URL" <<'PY'
import shlex, sys, urllib.parse as u

amqp, db = u.urlsplit(sys.argv[1]), u.urlsplit(sys.argv[2])
values = {
    "AMQP_HOST": amqp.hostname or "",
    "AMQP_PORT": amqp.port or 5672,
    "AMQP_USER": u.unquote(amqp.username or "guest"),
    "AMQP_PASS": u.unquote(amqp.password or "guest"),
    "AMQP_VHOST": u.unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/",
    "PG_HOST": db.hostname or "",
    "PG_PORT": db.port or 5432,
    "PG_ADMIN_URL": u.urlunsplit(("postgresql", db.netloc, "/postgres", db.query, "")),
}
for name, value in values.items():
    print(f"{name}={shlex.quote(str(value))}")
PY
  ) || die "cannot read AMQP_URL=$AMQP_URL or DATABASE_URL=$DATABASE_URL"
  eval "$out"
  AMQP_PROBE=$AMQP_HOST PG_PROBE=$PG_HOST
  if [[ $AMQP_HOST == localhost ]]; then AMQP_PROBE=127.0.0.1; fi
  if [[ $PG_HOST == localhost ]]; then PG_PROBE=127.0.0.1; fi
}

# --- what is present -----------------------------------------------------------------------------

pg_installed() { have pg_ctlcluster || have pg_ctl || have postgres; }

# RABBIT_STATE / PG_STATE: remote (not this machine's), running, down (installed) or absent.
detect() {
  RABBIT_STATE=remote PG_STATE=remote
  if is_local "$AMQP_HOST"; then
    if port_open "$AMQP_PROBE" "$AMQP_PORT"; then
      RABBIT_STATE=running
    elif have rabbitmq-server; then
      RABBIT_STATE=down
    else
      RABBIT_STATE=absent
    fi
  fi
  if is_local "$PG_HOST"; then
    if port_open "$PG_PROBE" "$PG_PORT"; then
      PG_STATE=running
    elif pg_installed; then
      PG_STATE=down
    else
      PG_STATE=absent
    fi
  fi
}

# The running broker's overview through the management API, fetched once:
# OV_VERSION, OV_HASH (x-consistent-hash exchange type) and OV_STREAM (stream listener), 1 or 0.
OV_STATE=""
rabbit_overview() {
  if [[ -z $OV_STATE ]]; then
    OV_STATE=fail
    local out
    if port_open "$AMQP_PROBE" "$MANAGEMENT_PORT" && out=$(
      python3 - "$AMQP_PROBE" "$MANAGEMENT_PORT" "$AMQP_USER" "$AMQP_PASS" 2>/dev/null <<'PY'
import base64, json, sys, urllib.request as r

host, port, user, password = sys.argv[1:5]
host = f"[{host}]" if ":" in host else host
auth = base64.b64encode(f"{user}:{password}".encode()).decode()
request = r.Request(f"http://{host}:{port}/api/overview", headers={"Authorization": "Basic " + auth})
overview = json.load(r.urlopen(request, timeout=5))
types = {t.get("name") for t in overview.get("exchange_types", [])}
protocols = {listener.get("protocol") for listener in overview.get("listeners", [])}
print(overview["rabbitmq_version"], int("x-consistent-hash" in types), int("stream" in protocols))
PY
    ); then
      read -r OV_VERSION OV_HASH OV_STREAM <<<"$out"
      OV_STATE=ok
    fi
  fi
  [[ $OV_STATE == ok ]]
}

# MISSING: the plugins the running broker lacks (the management API, else rabbitmq-plugins).
missing_plugins() {
  MISSING=()
  if rabbit_overview && [[ $OV_HASH == 1 && $OV_STREAM == 1 ]]; then return 0; fi
  if ! have rabbitmq-plugins; then
    MISSING=("${PLUGINS[@]}")
    return 0
  fi
  local enabled plugin
  enabled=$(svc rabbitmq-plugins list -e -m 2>/dev/null || true)
  for plugin in "${PLUGINS[@]}"; do
    if [[ $'\n'$enabled$'\n' != *$'\n'$plugin$'\n'* ]]; then MISSING+=("$plugin"); fi
  done
}

# The Debian cluster ("15 main") that serves port $1, from pg_lsclusters.
pg_cluster_on_port() {
  have pg_lsclusters || return 0
  pg_lsclusters -h 2>/dev/null | while read -r version name port _; do
    if [[ $port == "$1" ]]; then
      echo "$version $name"
      break
    fi
  done
}

# Configuration directories of Debian's clusters (/etc/postgresql/15/main), one a line.
pg_cluster_dirs() {
  local hba
  for hba in "$PG_ETC"/*/*/pg_hba.conf; do
    if [[ -e $hba ]]; then echo "${hba%/pg_hba.conf}"; fi
  done
}

# --- version checks ------------------------------------------------------------------------------

RABBIT_VERSION=""
check_rabbit_version() {
  if [[ -n $RABBIT_VERSION ]]; then return 0; fi
  if rabbit_overview; then
    RABBIT_VERSION=$OV_VERSION
  elif have rabbitmqctl; then
    RABBIT_VERSION=$(svc rabbitmqctl version 2>/dev/null | grep -m1 -Eo '^[0-9]+(\.[0-9]+)+' || true)
  fi
  if [[ -z $RABBIT_VERSION ]]; then
    log "could not read the version of RabbitMQ on $AMQP_HOST:$AMQP_PORT: it must be $RABBITMQ_MIN or newer"
    RABBIT_VERSION=unknown
    return 0
  fi
  version_ge "$RABBIT_VERSION" "$RABBITMQ_MIN" || die \
    "RabbitMQ $RABBIT_VERSION on $AMQP_HOST:$AMQP_PORT is too old: this project needs $SUPPORTED." \
    "Upgrade it (Debian 12 ships 3.10; RabbitMQ's own apt repository has newer ones), or point AMQP_URL at a newer broker."
}

PG_VERSION=""
check_pg_version() {
  if [[ -n $PG_VERSION ]]; then return 0; fi
  if ! have psql; then
    log "psql not found: the version of PostgreSQL on $PG_HOST:$PG_PORT is not checked (it must be $POSTGRES_MIN or newer)"
    PG_VERSION=unknown
    return 0
  fi
  local out num
  if ! out=$(PGCONNECT_TIMEOUT=5 psql "$PG_ADMIN_URL" -w -X -tAc 'show server_version_num' 2>&1); then
    die "cannot connect to PostgreSQL on $PG_HOST:$PG_PORT as DATABASE_URL's user: ${out//$'\n'/ }" \
      "This script does not reconfigure a server it did not install. For local development without a password, put these lines first in its pg_hba.conf and reload it (as its superuser, psql -tAc 'show hba_file' shows where; then: select pg_reload_conf()):" \
      "    host all all 127.0.0.1/32 trust" \
      "    host all all ::1/128 trust" \
      "or put the password in DATABASE_URL."
  fi
  num=${out//[[:space:]]/}
  if ! [[ $num =~ ^[0-9]+$ ]]; then
    log "unexpected answer to 'show server_version_num' from PostgreSQL on $PG_HOST:$PG_PORT: $num"
    PG_VERSION=unknown
    return 0
  fi
  if ((num >= 100000)); then PG_VERSION="$((num / 10000)).$((num % 10000))"; else PG_VERSION="$((num / 10000)).$((num / 100 % 100))"; fi
  ((num >= POSTGRES_MIN * 10000)) || die \
    "PostgreSQL $PG_VERSION on $PG_HOST:$PG_PORT is too old: this project needs $SUPPORTED." \
    "Upgrade it, or point DATABASE_URL at a newer server."
}

# --- how to install what is absent ---------------------------------------------------------------

# INSTALLER: none (nothing absent), compose, apt or manual; WHY_NOT: why the others are not used.
choose_installer() {
  ABSENT=() PACKAGES=() COMPOSE_SERVICES=() WHY_NOT=() INSTALLER=none
  if [[ $RABBIT_STATE == absent ]]; then ABSENT+=(RabbitMQ) PACKAGES+=(rabbitmq-server) COMPOSE_SERVICES+=(rabbitmq); fi
  if [[ $PG_STATE == absent ]]; then ABSENT+=(PostgreSQL) PACKAGES+=(postgresql) COMPOSE_SERVICES+=(postgres); fi
  if ((${#ABSENT[@]} == 0)); then return 0; fi
  local wanted=$SERVICES_INSTALLER
  if [[ $wanted == auto || $wanted == apt ]]; then
    if ! have apt-get; then
      WHY_NOT+=("no apt-get (not a Debian or Ubuntu system)")
    elif is_root; then
      INSTALLER=apt AS_ROOT_TEXT=""
      return 0
    elif sudo_works; then
      INSTALLER=apt AS_ROOT_TEXT="sudo -n "
      return 0
    else
      WHY_NOT+=("not root, and sudo asks for a password (sudo -n true fails)")
    fi
  fi
  if [[ $wanted == auto || $wanted == compose ]]; then
    if ! have docker || ! docker info >/dev/null 2>&1; then
      WHY_NOT+=("no running Docker engine (docker info fails or docker is not installed)")
    elif docker compose version >/dev/null 2>&1; then
      INSTALLER=compose COMPOSE=(docker compose)
      return 0
    elif have docker-compose; then
      INSTALLER=compose COMPOSE=(docker-compose)
      return 0
    else
      WHY_NOT+=("Docker runs, but without compose (docker compose / docker-compose)")
    fi
  fi
  if [[ $wanted == manual ]]; then WHY_NOT+=("SERVICES_INSTALLER=manual"); fi
  INSTALLER=manual
}

# The candidate version apt-get would install for package $1 (epoch stripped), or nothing.
apt_candidate() {
  local candidate
  candidate=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if [[ $candidate == "(none)" ]]; then candidate=""; fi
  if [[ $candidate == *:* ]]; then candidate=${candidate#*:}; fi
  echo "$candidate"
}

# Stop before installing a version too old for the project. With $1 = strict, a package without
# a candidate is an error too (after apt-get update); without it, it is only unknown yet.
check_apt_candidates() {
  have apt-cache || return 0
  local package candidate minimum name
  for package in "${PACKAGES[@]}"; do
    case $package in
      rabbitmq-server) minimum=$RABBITMQ_MIN name=RabbitMQ ;;
      *) minimum=$POSTGRES_MIN name=PostgreSQL ;;
    esac
    candidate=$(apt_candidate "$package")
    if [[ -z $candidate ]]; then
      if [[ ${1:-} == strict ]]; then
        die "apt-get has no package $package here. Install $name $minimum or newer another way (Docker: ${COMPOSE_HINT}), then run this again."
      fi
      continue
    fi
    version_ge "$candidate" "$minimum" || die \
      "apt-get would install $package $candidate, but this project needs $SUPPORTED." \
      "Use Docker instead (${COMPOSE_HINT}), or add the upstream apt repository (RabbitMQ: https://www.rabbitmq.com/docs/install-debian, PostgreSQL: https://wiki.postgresql.org/wiki/Apt) and run this again."
    CANDIDATES+=("$package $candidate")
  done
}

# Nothing can install what is absent: say what is needed and the exact commands, then stop.
manual_instructions() {
  log "not installed on this machine: ${ABSENT[*]}. This script installs them only with apt-get as root or through passwordless sudo, or with a running Docker engine: $(join "; " "${WHY_NOT[@]}")."
  log "Needed: $SUPPORTED."
  if have apt-get; then
    log "Either let this script install and set them up (it then runs apt-get, trusts 127.0.0.1 on the new PostgreSQL, enables the RabbitMQ plugins):"
    log "    sudo bash $SELF"
    log "or run these yourself, then \`just services\` again:"
    log "    sudo apt-get update"
    log "    sudo apt-get install -y ${PACKAGES[*]}"
    if [[ $PG_STATE == absent ]]; then
      log "    # a new Debian PostgreSQL asks for a password on 127.0.0.1; DATABASE_URL's default has none:"
      log "    sudo sed -i '1i host all all 127.0.0.1/32 trust\\nhost all all ::1/128 trust' /etc/postgresql/*/main/pg_hba.conf"
      log "    sudo service postgresql reload"
    fi
  else
    log "Install them with this system's package manager; RabbitMQ then gets its plugins from this script, and PostgreSQL needs a superuser postgres reachable without a password on 127.0.0.1. On macOS, e.g.:"
    log "    brew install rabbitmq postgresql@15 && brew services start rabbitmq && brew services start postgresql@15 && createuser -s postgres"
  fi
  log "or, with a Docker engine running: ${COMPOSE_HINT}"
}

# --- plan mode -----------------------------------------------------------------------------------

PLAN_FAILS=0
plan() { log "plan: $*"; }

plan_rabbitmq() {
  case $RABBIT_STATE in
    remote) plan "RabbitMQ: AMQP_URL names $AMQP_HOST, not this machine: left alone" ;;
    absent) plan "RabbitMQ: absent (no rabbitmq-server on PATH, nothing on $AMQP_HOST:$AMQP_PORT)" ;;
    down)
      plan "RabbitMQ: installed ($(command -v rabbitmq-server)), not running on $AMQP_HOST:$AMQP_PORT"
      plan "  would start it (nothing to disrupt): rabbitmq-plugins enable --offline ${PLUGINS[*]}; rabbitmq-server -detached"
      ;;
    running)
      plan "RabbitMQ: running on $AMQP_HOST:$AMQP_PORT, version $RABBIT_VERSION"
      missing_plugins
      if ((${#MISSING[@]} == 0)); then
        plan "  plugins enabled (${PLUGINS[*]}): nothing to do"
      elif ! have rabbitmq-plugins; then
        plan "  plugins not all enabled, and no rabbitmq-plugins here: a run stops, asking to enable ${PLUGINS[*]} where the broker runs"
        PLAN_FAILS=1
      else
        plan "  would enable online: rabbitmq-plugins enable ${MISSING[*]}"
        if truthy "$ALLOW_RESTART"; then
          plan "  if that fails, would restart it (--allow-restart): rabbitmq-plugins enable --offline ${MISSING[*]}; rabbitmqctl stop; rabbitmq-server -detached"
        else
          plan "  if that fails, stops without restarting it (a restart needs --allow-restart or SERVICES_ALLOW_RESTART=1)"
        fi
      fi
      ;;
  esac
}

plan_postgres() {
  local cluster
  case $PG_STATE in
    remote) plan "PostgreSQL: DATABASE_URL names ${PG_HOST:-a socket}, not this machine's 127.0.0.1: left alone" ;;
    absent) plan "PostgreSQL: absent (no pg_ctlcluster, pg_ctl or postgres on PATH, nothing on $PG_HOST:$PG_PORT)" ;;
    running) plan "PostgreSQL: running on $PG_HOST:$PG_PORT, version $PG_VERSION: nothing to do" ;;
    down)
      plan "PostgreSQL: installed, not running on $PG_HOST:$PG_PORT"
      cluster=$(pg_cluster_on_port "$PG_PORT")
      if [[ -n $cluster ]]; then
        plan "  would start it (nothing to disrupt): pg_ctlcluster --skip-systemctl-redirect $cluster start"
      else
        plan "  no Debian cluster (pg_lsclusters) on port $PG_PORT: a run stops, asking you to start it"
        PLAN_FAILS=1
      fi
      ;;
  esac
}

plan_install() {
  case $INSTALLER in
    compose)
      plan "would start ${ABSENT[*]} with Docker (a Docker engine runs): ${COMPOSE[*]} -f $COMPOSE_FILE up -d ${COMPOSE_SERVICES[*]}"
      ;;
    apt)
      CANDIDATES=()
      check_apt_candidates
      plan "would install ${ABSENT[*]} with apt-get ($(if is_root; then echo 'running as root'; else echo 'through passwordless sudo'; fi); nothing of them runs here, so nothing is disrupted):"
      plan "    ${AS_ROOT_TEXT}apt-get update"
      plan "    ${AS_ROOT_TEXT}env DEBIAN_FRONTEND=noninteractive apt-get install -y ${PACKAGES[*]}"
      if ((${#CANDIDATES[@]})); then plan "  candidates: ${CANDIDATES[*]} (needs $SUPPORTED)"; fi
      if [[ $PG_STATE == absent ]]; then
        plan "  then on the new PostgreSQL cluster only: trust 127.0.0.1/32 and ::1/128 in its pg_hba.conf, reload, start it if down"
      fi
      if [[ $RABBIT_STATE == absent ]]; then
        plan "  then RabbitMQ: enable ${PLUGINS[*]} (offline if it is down), start it if down"
      fi
      ;;
  esac
}

# --- doing it ------------------------------------------------------------------------------------

RABBIT_FRESH=0 # 1: the broker was not running when this script began (installed or started here)
NEW_PG_CLUSTERS=()

install_with_compose() {
  log "starting ${ABSENT[*]} with Docker (not installed here, and a Docker engine runs): ${COMPOSE[*]} -f $COMPOSE_FILE up -d ${COMPOSE_SERVICES[*]}"
  "${COMPOSE[@]}" -f "$COMPOSE_FILE" up -d "${COMPOSE_SERVICES[@]}" ||
    die "docker compose failed to start ${COMPOSE_SERVICES[*]} (see its output above)"
  if [[ $RABBIT_STATE == absent ]]; then RABBIT_FRESH=1; fi
}

install_with_apt() {
  local before dir
  before=$(pg_cluster_dirs)
  log "installing ${ABSENT[*]} with apt-get (nothing of them runs here, so nothing is disrupted): ${AS_ROOT_TEXT}apt-get update; ${AS_ROOT_TEXT}env DEBIAN_FRONTEND=noninteractive apt-get install -y ${PACKAGES[*]}"
  as_root apt-get update || die "apt-get update failed (see above)"
  CANDIDATES=()
  check_apt_candidates strict
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}" ||
    die "apt-get install ${PACKAGES[*]} failed (see above)"
  hash -r
  if [[ $RABBIT_STATE == absent ]]; then
    if ! have rabbitmq-server || ! have rabbitmq-plugins || ! have rabbitmqctl; then
      die "apt-get installed rabbitmq-server, but rabbitmq-server, rabbitmq-plugins and rabbitmqctl are not all on PATH ($PATH)"
    fi
    RABBIT_FRESH=1
  fi
  if [[ $PG_STATE == absent ]]; then
    if ! have pg_ctlcluster || ! have pg_lsclusters; then
      die "apt-get installed postgresql, but pg_ctlcluster and pg_lsclusters are not on PATH ($PATH)"
    fi
    # Only the clusters this installation created are ours to configure.
    while read -r dir; do
      if [[ -n $dir ]] && ! grep -qxF -- "$dir" <<<"$before"; then NEW_PG_CLUSTERS+=("$dir"); fi
    done < <(pg_cluster_dirs)
    if ((${#NEW_PG_CLUSTERS[@]} == 0)); then
      die "apt-get installed postgresql but created no new cluster in $PG_ETC (an existing configuration is left alone)." \
        "Create one, trusting local TCP connections for development, then run this again:" \
        "    sudo pg_createcluster <version> main -p $PG_PORT --start -- --auth-host=trust"
    fi
  fi
}

# Trust TCP connections from this machine on a cluster this script just installed.
configure_local_trust() {
  local dir=$1 hba=$1/pg_hba.conf cluster
  if as_root grep -qF -- "$TRUST_MARK" "$hba"; then return 0; fi
  log "PostgreSQL was just installed: trusting 127.0.0.1/32 and ::1/128 first in $hba (local development; DATABASE_URL has no password)"
  as_root sed -i "1i $TRUST_MARK\\nhost    all    all    127.0.0.1/32    trust\\nhost    all    all    ::1/128         trust" "$hba"
  cluster="${dir%/*}"
  cluster="${cluster##*/} ${dir##*/}"
  # A cluster that runs already (the package started it) rereads pg_hba.conf on reload.
  # shellcheck disable=SC2086 # "$cluster" is "<version> <name>"
  svc pg_ctlcluster $cluster reload >/dev/null 2>&1 || true
}

start_postgres() {
  have pg_ctlcluster || die \
    "PostgreSQL is installed but not running on $PG_HOST:$PG_PORT, and this is not Debian's packaging (no pg_ctlcluster): start it yourself," \
    "e.g. pg_ctl -D <its data directory> start, brew services start postgresql@15, or sudo systemctl start postgresql."
  local cluster
  cluster=$(pg_cluster_on_port "$PG_PORT")
  [[ -n $cluster ]] || die \
    "PostgreSQL is installed but no cluster serves port $PG_PORT (pg_lsclusters: $(pg_lsclusters -h 2>/dev/null | while read -r v n p s _; do printf '%s ' "$v/$n:$p:$s"; done))." \
    "Start the right one (sudo pg_ctlcluster <version> <name> start), or create one: sudo pg_createcluster <version> main -p $PG_PORT --start"
  log "PostgreSQL $cluster is down: starting it (nothing to disrupt): pg_ctlcluster --skip-systemctl-redirect $cluster start"
  # shellcheck disable=SC2086 # "$cluster" is "<version> <name>"
  svc pg_ctlcluster --skip-systemctl-redirect $cluster start || true
  wait_port "$PG_PROBE" "$PG_PORT" ||
    die "PostgreSQL $cluster did not open $PG_HOST:$PG_PORT within ${TIMEOUT_S}s; see /var/log/postgresql/postgresql-${cluster/ /-}.log"
}

ensure_postgres() {
  if [[ $PG_STATE == remote ]]; then return 0; fi
  local dir
  for dir in ${NEW_PG_CLUSTERS[@]+"${NEW_PG_CLUSTERS[@]}"}; do configure_local_trust "$dir"; done
  if ! port_open "$PG_PROBE" "$PG_PORT"; then
    if [[ $INSTALLER == compose && $PG_STATE == absent ]]; then
      wait_port "$PG_PROBE" "$PG_PORT" ||
        die "the PostgreSQL container did not open $PG_HOST:$PG_PORT within ${TIMEOUT_S}s (${COMPOSE[*]} -f $COMPOSE_FILE logs postgres)"
    else
      start_postgres
    fi
  fi
  check_pg_version
}

# Enabling plugins offline needs a restart: said beforehand; only for a broker that was not
# running when this script began, or with --allow-restart.
restart_rabbitmq() {
  have rabbitmqctl || die "cannot restart RabbitMQ: no rabbitmqctl on PATH"
  log "restarting RabbitMQ on $AMQP_HOST:$AMQP_PORT to enable ${MISSING[*]} ($1); its clients are disconnected. Running: rabbitmq-plugins enable --offline ${MISSING[*]}; rabbitmqctl stop; rabbitmq-server -detached"
  svc rabbitmq-plugins enable --offline "${MISSING[@]}" >/dev/null || die "rabbitmq-plugins enable --offline ${MISSING[*]} failed"
  svc rabbitmqctl stop >/dev/null 2>&1 || log "rabbitmqctl stop failed"
  wait_closed "$AMQP_PROBE" "$AMQP_PORT" || log "port $AMQP_PORT still open ${TIMEOUT_S}s after rabbitmqctl stop; starting anyway"
  svc rabbitmq-server -detached || true
  wait_port "$AMQP_PROBE" "$AMQP_PORT" || die "RabbitMQ did not come back on $AMQP_HOST:$AMQP_PORT within ${TIMEOUT_S}s"
  svc rabbitmqctl await_startup --timeout "$TIMEOUT_S" >/dev/null 2>&1 || true
  OV_STATE=""
}

ensure_rabbit_plugins() {
  missing_plugins
  if ((${#MISSING[@]} == 0)); then return 0; fi
  have rabbitmq-plugins || die \
    "RabbitMQ on $AMQP_HOST:$AMQP_PORT lacks plugins (the management API shows no x-consistent-hash exchange or stream listener), and there is no rabbitmq-plugins here." \
    "Enable them where it runs: rabbitmq-plugins enable ${PLUGINS[*]} (in a container: docker exec <container> rabbitmq-plugins enable ...)"
  if have rabbitmqctl; then
    # Wait until the node answers the CLI before changing plugins.
    svc rabbitmqctl await_startup --timeout "$TIMEOUT_S" >/dev/null 2>&1 || true
    missing_plugins
    if ((${#MISSING[@]} == 0)); then return 0; fi
  fi
  log "enabling RabbitMQ plugins online: rabbitmq-plugins enable ${MISSING[*]}"
  local out reason
  if out=$(svc rabbitmq-plugins enable "${MISSING[@]}" 2>&1); then
    OV_STATE=""
    return 0
  fi
  out=${out//$'\n'/ }
  log "enabling online failed: ${out:0:400}"
  if ((RABBIT_FRESH)); then
    reason="it was not running when this script began, so it has no clients yet"
  elif truthy "$ALLOW_RESTART"; then
    reason="allowed by --allow-restart / SERVICES_ALLOW_RESTART"
  else
    die "RabbitMQ on $AMQP_HOST:$AMQP_PORT was already running, and enabling ${MISSING[*]} online failed." \
      "Enabling them offline needs a restart, which disconnects every client of the broker (other projects' too); this script never restarts a running broker unless told to. It would run:" \
      "    rabbitmq-plugins enable --offline ${MISSING[*]}" \
      "    rabbitmqctl stop" \
      "    rabbitmq-server -detached" \
      "To let it: bash $SELF --allow-restart   (or: SERVICES_ALLOW_RESTART=1 just services)" \
      "or run those commands yourself when a restart suits the broker's other users."
  fi
  restart_rabbitmq "$reason"
}

ensure_rabbitmq() {
  if [[ $RABBIT_STATE == remote ]]; then return 0; fi
  if ! port_open "$AMQP_PROBE" "$AMQP_PORT"; then
    RABBIT_FRESH=1
    if have rabbitmq-server; then
      have rabbitmq-plugins || die "rabbitmq-server is on PATH but rabbitmq-plugins is not"
      log "RabbitMQ is not running: enabling its plugins offline, then starting it (nothing to disrupt): rabbitmq-plugins enable --offline ${PLUGINS[*]}; rabbitmq-server -detached"
      svc rabbitmq-plugins enable --offline "${PLUGINS[@]}" >/dev/null || die "rabbitmq-plugins enable --offline failed"
      svc rabbitmq-server -detached || true
    fi # else docker compose started it
    wait_port "$AMQP_PROBE" "$AMQP_PORT" ||
      die "RabbitMQ did not open $AMQP_HOST:$AMQP_PORT within ${TIMEOUT_S}s (its logs: /var/log/rabbitmq/, or ${COMPOSE_HINT/up -d*/logs rabbitmq})"
    # Its plugins were enabled before it started: the management API (version, plugins) follows.
    wait_port "$AMQP_PROBE" "$MANAGEMENT_PORT" || true
    OV_STATE=""
  fi
  check_rabbit_version
  ensure_rabbit_plugins
  wait_port "$AMQP_PROBE" "$STREAM_PORT" || die "the RabbitMQ stream plugin did not open port $STREAM_PORT within ${TIMEOUT_S}s"
  wait_port "$AMQP_PROBE" "$MANAGEMENT_PORT" || die "the RabbitMQ management plugin did not open port $MANAGEMENT_PORT within ${TIMEOUT_S}s"
}

# The vhost named in AMQP_URL, created through the management API (fast, idempotent).
ensure_vhost() {
  if [[ $RABBIT_STATE == remote || $AMQP_VHOST == / ]]; then return 0; fi
  python3 - "$AMQP_PROBE" "$MANAGEMENT_PORT" "$AMQP_USER" "$AMQP_PASS" "$AMQP_VHOST" <<'PY' ||
import base64, sys, urllib.parse as u, urllib.request as r

host, port, user, password, vhost = sys.argv[1:6]
host = f"[{host}]" if ":" in host else host
auth = base64.b64encode(f"{user}:{password}".encode()).decode()
headers = {"Authorization": "Basic " + auth, "Content-Type": "application/json"}
name = u.quote(vhost, safe="")
base = f"http://{host}:{port}/api"
r.urlopen(r.Request(f"{base}/vhosts/{name}", data=b"{}", method="PUT", headers=headers), timeout=30)
body = b'{"configure": ".*", "write": ".*", "read": ".*"}'
url = f"{base}/permissions/{name}/{u.quote(user, safe='')}"
r.urlopen(r.Request(url, data=body, method="PUT", headers=headers), timeout=30)
PY
    die "could not create the vhost $AMQP_VHOST through the management API on port $MANAGEMENT_PORT"
}

report_ready() {
  local parts=()
  if [[ $RABBIT_STATE != remote ]]; then
    parts+=("RabbitMQ $RABBIT_VERSION on $AMQP_HOST (AMQP $AMQP_PORT, stream $STREAM_PORT, management $MANAGEMENT_PORT)")
  fi
  if [[ $PG_STATE != remote ]]; then parts+=("PostgreSQL $PG_VERSION on $PG_HOST:$PG_PORT"); fi
  if ((${#parts[@]} == 0)); then
    log "AMQP_URL and DATABASE_URL name other hosts: nothing to prepare on this machine"
  elif ((${#parts[@]} == 1)); then
    log "ready: ${parts[0]}"
  else
    log "ready: ${parts[0]} and ${parts[1]}"
  fi
}

main() {
  parse_args "$@"
  parse_urls
  COMPOSE_HINT="docker compose -f $COMPOSE_FILE up -d"
  detect
  choose_installer
  if [[ $INSTALLER == manual ]]; then
    COMPOSE_HINT+=" ${COMPOSE_SERVICES[*]}"
    manual_instructions
    exit 1
  fi
  # Servers that already run: stop early when they are too old (read-only).
  if [[ $RABBIT_STATE == running ]]; then check_rabbit_version; fi
  if [[ $PG_STATE == running ]]; then check_pg_version; fi

  if truthy "$PLAN"; then
    plan "needs $SUPPORTED"
    plan_rabbitmq
    plan_postgres
    plan_install
    exit "$PLAN_FAILS"
  fi

  case $INSTALLER in
    compose) install_with_compose ;;
    apt) install_with_apt ;;
  esac
  ensure_postgres
  ensure_rabbitmq
  ensure_vhost
  report_ready
}

main "$@"
