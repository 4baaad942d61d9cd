#!/usr/bin/env bash
# A local RabbitMQ cluster of its own (three 3.10 nodes by default) for tests and for users, next
# to the machine's broker, which it never touches (rabbit@<hostname>, ports 5672, 5552, 15672,
# 25672): its nodes have their own names, ports, Erlang cookie, data, log and config folders.
#
# Usage: infra/cluster.sh COMMAND
#   up        start the nodes, join them into one cluster, wait until every node is ready (safe
#             to run twice: running nodes are left alone, stopped ones are started again)
#   down      stop every node (SIGTERM, then SIGKILL after CLUSTER_STOP_TIMEOUT_S) and remove the
#             cluster's folder (data, logs, config, cookie)
#   env       print `export` lines that point the product at the cluster:
#               eval "$(infra/cluster.sh env)" && just run-processor
#             AMQP_URL (node 1), AMQP_ADDRESSES and STREAM_ADDRESSES (every node, host:port,
#             comma-separated), STREAM_PORT (node 1), STREAM_REPLICATION_FACTOR (the node
#             count); with TLS: the TLS ports, amqps://, STREAM_TLS=1 and BROKER_TLS_CA_FILE
#   status    one line per node: `node N NAME running|down amqp=P stream=P management=P
#             dist=P amqps=P streams=P` (the TLS ports are `-` without TLS), after a line
#             `cluster NAME dir=D nodes=K base_port=B tls=0|1 tls_only=0|1`
#   kill N    kill node N hard (SIGKILL to its Erlang VM): a crash, no clean shutdown
#   stop N    stop node N gracefully (rabbitmqctl stop)
#   start N   start node N again and wait until it is back in the cluster (no-op when running)
#   ctl N ARG...  run rabbitmqctl ARG... against node N (with the cluster's cookie), e.g.
#             `infra/cluster.sh ctl 1 list_queues name leader members`
#   (N is 1..CLUSTER_NODES)
#
# Environment (read by `up`; later commands read the values `up` saved in the cluster's folder,
# so only CLUSTER_NAME or CLUSTER_DIR must be given again):
#   CLUSTER_NAME       node-name prefix (default fs-cluster): nodes are NAME-1@localhost ...
#   CLUSTER_DIR        the cluster's folder (default ${XDG_STATE_HOME:-$HOME/.local/state}/
#                      friendship-stream/NAME; as root, where the nodes run as the rabbitmq user,
#                      who cannot enter /root: /var/tmp/friendship-stream/NAME)
#   CLUSTER_NODES      1..3 (default 3)
#   CLUSTER_BASE_PORT  first port (default 26000). Node N uses BASE+10*(N-1)+ 0 AMQP, 1 stream,
#                      2 management HTTP, 3 Erlang distribution, 4 AMQPS, 5 stream TLS; the CLI
#                      tools use BASE+30..BASE+39. Every listener binds 127.0.0.1 only.
#   CLUSTER_TLS_DIR    a folder with ca.pem, server.pem, server.key (as testkit/tls.py writes
#                      them): the nodes then also listen with TLS for AMQP and streams
#                      (verify_peer, no client certificate required, EXTERNAL login by the
#                      certificate's common name besides PLAIN and AMQPLAIN). The files are copied
#                      into the cluster's folder.
#   CLUSTER_TLS_ONLY   1: no plain AMQP and stream listeners (needs CLUSTER_TLS_DIR)
#   CLUSTER_TIMEOUT_S  the longest wait for a node to start or join (default 180)
#   CLUSTER_STOP_TIMEOUT_S  the wait for a stopping node before SIGKILL (default 30)
#   CLUSTER_RABBITMQ_BIN    RabbitMQ's own scripts (default /usr/lib/rabbitmq/bin; Debian's
#                      /usr/sbin wrappers would switch to the machine's node settings)
# As root the nodes run as the `rabbitmq` user (CLUSTER_RUN_AS overrides; empty: as root).
# Measured here: three 3.10 nodes start, join and answer in about 50 s (`up`); a killed node is
# back in the cluster in about 15 s (`start N`).
set -euo pipefail

PLUGINS="rabbitmq_management,rabbitmq_stream,rabbitmq_consistent_hash_exchange,rabbitmq_auth_mechanism_ssl"
HOST=127.0.0.1

log() { printf '[cluster] %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

usage() {
  sed -n '/^# Usage:/,/^#   (N is/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- parameters -------------------------------------------------------------------------------

NAME=${CLUSTER_NAME:-fs-cluster}
[[ $NAME =~ ^[A-Za-z0-9_-]+$ ]] || die "CLUSTER_NAME=$NAME: letters, digits, - and _ only"
if [[ $(id -u) == 0 ]]; then
  RUN_AS=${CLUSTER_RUN_AS-rabbitmq}
else
  RUN_AS=${CLUSTER_RUN_AS-}
fi
if [[ -n ${CLUSTER_DIR:-} ]]; then
  DIR=$CLUSTER_DIR
elif [[ -n $RUN_AS ]]; then
  DIR=/var/tmp/friendship-stream/$NAME
else
  DIR=${XDG_STATE_HOME:-$HOME/.local/state}/friendship-stream/$NAME
fi
BIN=${CLUSTER_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
TIMEOUT_S=${CLUSTER_TIMEOUT_S:-180}
STOP_TIMEOUT_S=${CLUSTER_STOP_TIMEOUT_S:-30}
SAVED="$DIR/cluster.env"

# The values `up` saved win over the environment, so `env`, `kill`, ... match the running nodes.
if [[ -f $SAVED ]]; then
  # shellcheck source=/dev/null
  source "$SAVED"
else
  NODES=${CLUSTER_NODES:-3}
  BASE_PORT=${CLUSTER_BASE_PORT:-26000}
  TLS_DIR=${CLUSTER_TLS_DIR:-}
  TLS_ONLY=${CLUSTER_TLS_ONLY:-0}
fi
[[ $NODES =~ ^[1-3]$ ]] || die "CLUSTER_NODES=$NODES: 1, 2 or 3"
if ! [[ $BASE_PORT =~ ^[0-9]+$ ]] || ((BASE_PORT < 1024 || BASE_PORT + 40 > 65535)); then
  die "CLUSTER_BASE_PORT=$BASE_PORT: a port in 1024..65495"
fi
[[ $TLS_ONLY =~ ^[01]$ ]] || die "CLUSTER_TLS_ONLY=$TLS_ONLY: 0 or 1"
if [[ $TLS_ONLY == 1 && -z $TLS_DIR ]]; then die "CLUSTER_TLS_ONLY=1 needs CLUSTER_TLS_DIR"; fi
TLS=0
if [[ -n $TLS_DIR ]]; then TLS=1; fi

# --- layout -----------------------------------------------------------------------------------

node_name() { echo "$NAME-$1@localhost"; }
port() { # port N KIND
  local offset
  case $2 in
    amqp) offset=0 ;;
    stream) offset=1 ;;
    management) offset=2 ;;
    dist) offset=3 ;;
    amqps) offset=4 ;;
    streams) offset=5 ;;
    *) die "unknown port kind $2" ;;
  esac
  echo $((BASE_PORT + 10 * ($1 - 1) + offset))
}
node_dir() { echo "$DIR/node$1"; }
pid_file() { echo "$(node_dir "$1")/rabbitmq.pid"; }

check_n() {
  if ! [[ ${1:-} =~ ^[1-9]$ ]] || (($1 > NODES)); then die "node number ${1:-(none)}: 1..$NODES"; fi
}

# --- running the servers' tools ---------------------------------------------------------------

# as_node N COMMAND...: COMMAND with node N's environment, as the nodes' user.
as_node() {
  local n=$1
  shift
  local dir
  dir=$(node_dir "$n")
  local -a vars=(
    "HOME=$DIR/home"
    "RABBITMQ_CONF_ENV_FILE=$DIR/rabbitmq-env.conf"
    "RABBITMQ_NODENAME=$(node_name "$n")"
    "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf"
    "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config"
    "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
    "RABBITMQ_MNESIA_BASE=$dir/mnesia"
    "RABBITMQ_LOG_BASE=$dir/log"
    "RABBITMQ_PID_FILE=$(pid_file "$n")"
    "RABBITMQ_DIST_PORT=$(port "$n" dist)"
    "RABBITMQ_CTL_DIST_PORT_MIN=$((BASE_PORT + 30))"
    "RABBITMQ_CTL_DIST_PORT_MAX=$((BASE_PORT + 39))"
  )
  if [[ -n $RUN_AS ]]; then
    runuser -u "$RUN_AS" -- env "${vars[@]}" "$@"
  else
    env "${vars[@]}" "$@"
  fi
}

ctl() { # ctl N ARG...: rabbitmqctl against node N
  local n=$1
  shift
  as_node "$n" "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

# The node's Erlang VM pid when it runs, else nothing (and status 1).
node_pid() {
  local file pid
  file=$(pid_file "$1")
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

running() { node_pid "$1" >/dev/null; }

# --- preparing the folders --------------------------------------------------------------------

write_config() { # write_config N
  local n=$1 dir
  dir=$(node_dir "$n")
  {
    echo "# written by infra/cluster.sh for node $(node_name "$n")"
    if [[ $TLS_ONLY == 1 ]]; then
      echo "listeners.tcp = none"
      echo "stream.listeners.tcp = none"
    else
      echo "listeners.tcp.1 = $HOST:$(port "$n" amqp)"
      echo "stream.listeners.tcp.1 = $HOST:$(port "$n" stream)"
    fi
    echo "cluster_name = $NAME"
    echo "stream.advertised_host = $HOST"
    echo "stream.advertised_port = $(port "$n" stream)"
    echo "management.tcp.ip = $HOST"
    echo "management.tcp.port = $(port "$n" management)"
    echo "loopback_users.guest = true"
    if [[ $TLS == 1 ]]; then
      echo "listeners.ssl.1 = $HOST:$(port "$n" amqps)"
      echo "stream.listeners.ssl.1 = $HOST:$(port "$n" streams)"
      echo "stream.advertised_tls_host = $HOST"
      echo "stream.advertised_tls_port = $(port "$n" streams)"
      echo "ssl_options.cacertfile = $DIR/tls/ca.pem"
      echo "ssl_options.certfile = $DIR/tls/server.pem"
      echo "ssl_options.keyfile = $DIR/tls/server.key"
      echo "ssl_options.verify = verify_peer"
      echo "ssl_options.fail_if_no_peer_cert = false"
      echo "auth_mechanisms.1 = PLAIN"
      echo "auth_mechanisms.2 = AMQPLAIN"
      echo "auth_mechanisms.3 = EXTERNAL"
      echo "ssl_cert_login_from = common_name"
    fi
  } >"$dir/rabbitmq.conf"
  echo "[$PLUGINS]." >"$dir/enabled_plugins"
}

prepare() {
  if [[ -f $SAVED ]]; then return; fi
  if [[ -e $DIR ]] && [[ -n $(ls -A "$DIR") ]]; then
    die "$DIR exists and is not a cluster folder of this script: choose another CLUSTER_DIR"
  fi
  [[ -x $BIN/rabbitmq-server ]] || die "no RabbitMQ at $BIN (CLUSTER_RABBITMQ_BIN)"
  if [[ $TLS == 1 ]]; then
    local file
    for file in ca.pem server.pem server.key; do
      [[ -r $TLS_DIR/$file ]] || die "CLUSTER_TLS_DIR=$TLS_DIR has no readable $file"
    done
  fi
  mkdir -p "$DIR/home"
  chmod 755 "$DIR"
  local cookie
  cookie=$(LC_ALL=C tr -dc '[:upper:]' </dev/urandom | head -c 32 || true)
  printf '%s' "$cookie" >"$DIR/home/.erlang.cookie"
  chmod 400 "$DIR/home/.erlang.cookie"
  # Our own env file instead of the machine's /etc/rabbitmq/rabbitmq-env.conf.
  {
    echo "ERL_EPMD_ADDRESS=$HOST"
    echo "SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'"
  } >"$DIR/rabbitmq-env.conf"
  if [[ $TLS == 1 ]]; then
    mkdir -p "$DIR/tls"
    cp "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$DIR/tls/"
    chmod 600 "$DIR/tls/server.key"
  fi
  local n
  for ((n = 1; n <= NODES; n++)); do
    mkdir -p "$(node_dir "$n")/mnesia" "$(node_dir "$n")/log"
    write_config "$n"
  done
  if [[ -n $RUN_AS ]]; then
    chown -R "$RUN_AS:" "$DIR"
    if ! runuser -u "$RUN_AS" -- test -w "$DIR/node1"; then
      rm -rf "$DIR"
      die "the $RUN_AS user cannot reach $DIR (a parent folder is private): choose another CLUSTER_DIR"
    fi
  fi
  {
    echo "NODES=$NODES"
    echo "BASE_PORT=$BASE_PORT"
    printf 'TLS_DIR=%q\n' "$TLS_DIR"
    echo "TLS_ONLY=$TLS_ONLY"
  } >"$SAVED"
}

# --- nodes ------------------------------------------------------------------------------------

# Start node N's VM in the background (no wait).
launch() {
  local n=$1
  if running "$n"; then return; fi
  rm -f "$(pid_file "$n")"
  log "starting $(node_name "$n")"
  as_node "$n" "$BIN/rabbitmq-server" -detached
}

# Wait until node N's application runs.
await_node() {
  local n=$1
  if ! ctl "$n" wait "$(pid_file "$n")" --timeout "$TIMEOUT_S" >/dev/null; then
    die "$(node_name "$n") did not start within ${TIMEOUT_S}s; its log: $(node_dir "$n")/log"
  fi
}

# The cluster's running nodes as node 1 (or N) sees them, one per line.
running_nodes() {
  ctl "$1" cluster_status --formatter json |
    python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["running_nodes"]))'
}

# The disc nodes of the cluster node N belongs to.
member_nodes() {
  ctl "$1" cluster_status --formatter json |
    python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["disk_nodes"]))'
}

join() { # join N: node N joins node 1's cluster (once)
  local n=$1
  if member_nodes 1 | grep -qxF "$(node_name "$n")"; then return; fi
  log "joining $(node_name "$n") to $(node_name 1)"
  ctl "$n" stop_app >/dev/null
  ctl "$n" join_cluster "$(node_name 1)" >/dev/null
  ctl "$n" start_app >/dev/null
}

# Wait until node N sees every running node of the cluster as running.
await_in_cluster() {
  local n=$1 deadline=$((SECONDS + TIMEOUT_S)) expected=0 m seen
  for ((m = 1; m <= NODES; m++)); do
    if running "$m"; then expected=$((expected + 1)); fi
  done
  while true; do
    seen=$(running_nodes "$n" 2>/dev/null | wc -l || true)
    if ((seen >= expected)); then return; fi
    ((SECONDS < deadline)) || die "$(node_name "$n") sees $seen of $expected nodes after ${TIMEOUT_S}s"
    sleep 1
  done
}

up() {
  prepare
  local n started=$SECONDS
  for ((n = 1; n <= NODES; n++)); do launch "$n"; done
  for ((n = 1; n <= NODES; n++)); do await_node "$n"; done
  for ((n = 2; n <= NODES; n++)); do join "$n"; done
  for ((n = 1; n <= NODES; n++)); do await_in_cluster "$n"; done
  log "$NODES node(s) of $NAME up and clustered in $((SECONDS - started)) s ($DIR)"
}

kill_node() {
  local n=$1 pid
  if ! pid=$(node_pid "$n"); then
    log "$(node_name "$n") is not running"
    return
  fi
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$(pid_file "$n")"
  log "killed $(node_name "$n") (pid $pid)"
}

stop_node() {
  local n=$1 pid
  if ! pid=$(node_pid "$n"); then return; fi
  log "stopping $(node_name "$n")"
  ctl "$n" stop "$(pid_file "$n")" >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$(node_name "$n") still runs after ${STOP_TIMEOUT_S}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.2
  done
  rm -f "$(pid_file "$n")"
}

start_node() {
  local n=$1 started=$SECONDS
  if running "$n"; then return; fi
  launch "$n"
  await_node "$n"
  await_in_cluster "$n"
  log "$(node_name "$n") is back in the cluster after $((SECONDS - started)) s"
}

down() {
  if [[ ! -f $SAVED ]]; then
    if [[ -d $DIR && -z $(ls -A "$DIR") ]]; then
      rmdir "$DIR"
    elif [[ -e $DIR ]]; then
      die "$DIR is not a cluster folder of this script; left alone"
    fi
    log "no cluster at $DIR"
    return
  fi
  local n pid
  local -a pids=()
  for ((n = 1; n <= NODES; n++)); do
    if pid=$(node_pid "$n"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
      sleep 0.2
    done
  done
  rm -rf "$DIR"
  log "$NAME stopped and $DIR removed"
}

print_env() {
  [[ -f $SAVED ]] || die "no cluster at $DIR: infra/cluster.sh up"
  local amqp_kind=amqp stream_kind=stream scheme=amqp n amqp=() stream=()
  if [[ $TLS == 1 ]]; then
    amqp_kind=amqps stream_kind=streams scheme=amqps
  fi
  for ((n = 1; n <= NODES; n++)); do
    amqp+=("$HOST:$(port "$n" "$amqp_kind")")
    stream+=("$HOST:$(port "$n" "$stream_kind")")
  done
  local IFS=,
  echo "export AMQP_URL='$scheme://guest:guest@$HOST:$(port 1 "$amqp_kind")/%2F'"
  echo "export AMQP_ADDRESSES='${amqp[*]}'"
  echo "export STREAM_ADDRESSES='${stream[*]}'"
  echo "export STREAM_PORT=$(port 1 "$stream_kind")"
  echo "export STREAM_REPLICATION_FACTOR=$NODES"
  if [[ $TLS == 1 ]]; then
    echo "export STREAM_TLS=1"
    echo "export BROKER_TLS_CA_FILE='$DIR/tls/ca.pem'"
  fi
}

status() {
  [[ -f $SAVED ]] || die "no cluster at $DIR: infra/cluster.sh up"
  echo "cluster $NAME dir=$DIR nodes=$NODES base_port=$BASE_PORT tls=$TLS tls_only=$TLS_ONLY"
  local n state amqps streams
  for ((n = 1; n <= NODES; n++)); do
    state=down
    if running "$n"; then state=running; fi
    amqps=- streams=-
    if [[ $TLS == 1 ]]; then
      amqps=$(port "$n" amqps) streams=$(port "$n" streams)
    fi
    echo "node $n $(node_name "$n") $state amqp=$(port "$n" amqp) stream=$(port "$n" stream)" \
      "management=$(port "$n" management) dist=$(port "$n" dist) amqps=$amqps streams=$streams"
  done
}

main() {
  local command=${1:-}
  shift || true
  case $command in
    up) up ;;
    down) down ;;
    env) print_env ;;
    status) status ;;
    kill | stop | start)
      [[ -f $SAVED ]] || die "no cluster at $DIR: infra/cluster.sh up"
      check_n "${1:-}"
      case $command in
        kill) kill_node "$1" ;;
        stop) stop_node "$1" ;;
        start) start_node "$1" ;;
      esac
      ;;
    ctl)
      [[ -f $SAVED ]] || die "no cluster at $DIR: infra/cluster.sh up"
      check_n "${1:-}"
      ctl "$@"
      ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
