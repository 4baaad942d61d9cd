# Friendship stream processor. `just --list` shows every recipe.
# Recipes run the project's virtualenv tools first on PATH (created by the README's install line).

set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$@", each one quoted as typed (`--user 'bad id'`).
set positional-arguments := true
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

python := "python"

# list the recipes
default:
    @just --list

# --- services ---------------------------------------------------------------------------------

# start/prepare local RabbitMQ (plugins, ports) and PostgreSQL, and the keys; safe to run twice
[group('services')]
services:
    bash infra/services.sh
    {{python}} -m processor keys init

# make sure Debian's Chromium is here for the dashboard's browser test (apt-get when missing); safe to run twice
[group('services')]
browser:
    bash infra/browser.sh

# create the database if missing and apply the migrations
[group('services')]
migrate: services
    {{python}} -m processor migrate

# declare the events exchange and the partition streams
[group('services')]
topology: services
    {{python}} -m processor topology

# --- run ------------------------------------------------------------------------------------

# run the processor: one member process per CPU core (PROCESSOR_PROCESSES; owns partitions, applies batches; Ctrl-C finishes the batches in flight)
[group('run')]
run-processor: services
    {{python}} -m processor run

# run the read and ingest HTTP API on API_HOST:API_PORT
[group('run')]
api: services
    {{python}} -m processor api

# publish a JSON Lines file of events (confirmed); --allow-invalid publishes bad lines too
[group('run')]
publish FILE *FLAGS: services
    {{python}} -m processor publish "$@"

# per-partition checkpoint, tail, lag and owner
[group('run')]
status:
    {{python}} -m processor status

# wait until every partition's checkpoint reached its log tail (zero consumer lag); --timeout S
[group('run')]
wait-idle *ARGS:
    {{python}} -m processor wait-idle "$@"

# rebuild projections from the log: --verify (diff with live), --swap (swap in), --user ID
[group('run')]
replay *ARGS: services
    {{python}} -m processor replay "$@"

# the bundled Topical-Chat conversations through the whole pipeline; leaves processor and API up
[group('run')]
demo: services
    {{python}} -m processor demo

# stop the processor and API that the demo left running (and anything they started)
[group('run')]
down:
    {{python}} -m processor down

# erase a child: rows, dead letters and data key; its events are never applied again
[group('run')]
erase USER_ID: migrate
    {{python}} -m processor erase "$@"

# API tokens: `token create --scope read --name robot-app` (prints it), `token list`, `token revoke NAME`
[group('run')]
token *ARGS: migrate
    {{python}} -m processor token "$@"

# a local RabbitMQ cluster of its own: `cluster up|down|env|status|kill N|stop N|start N` (infra/cluster.sh)
[group('services')]
cluster *ARGS:
    bash infra/cluster.sh "$@"

# least-privilege broker users and database roles: `principals create`, `env processor|api|ingest`, `remove`
[group('services')]
principals *ARGS: migrate topology
    {{python}} -m processor principals "$@"

# --- quality ----------------------------------------------------------------------------------

# every test (15-29 min here): short fault suite, integration, unit, the dashboard in Chromium; real broker and database (not tests/cluster: `just test-cluster`)
[group('quality')]
test *ARGS: services browser
    {{python}} -m pytest --ignore=tests/cluster "$@"

# the cluster suite: one three-node RabbitMQ cluster of its own (infra/cluster.sh) for the session, node kills and restarts; CLUSTER_REPORT=path writes the figures
[group('quality')]
test-cluster *ARGS: services
    {{python}} -m pytest tests/cluster "$@"

# unit tests only (no services needed)
[group('quality')]
test-unit *ARGS:
    {{python}} -m pytest tests/unit "$@"

# fault suite, long version (FAULTS_LONG=1, ~9 min; `just test` runs the short one): fault-results.md
[group('quality')]
faults *ARGS: services
    FAULTS_LONG=1 FAULTS_REPORT=fault-results.md {{python}} -m pytest tests/faults \
        tests/integration/test_pipeline.py::test_a_truncated_log_stops_only_its_partition_with_a_loud_error "$@"

# ruff (lint and format check) and mypy --strict on the packages
[group('quality')]
check:
    ruff check .
    ruff format --check .
    mypy

# --- bench ----------------------------------------------------------------------------------

# a rule change timed (demo data and a 200,000-event log; about 5 min): switch, build, read waits
[group('bench')]
bench-rule-change *ARGS: services
    {{python}} -m bench.rule_change "$@"

# a read with after= (read-your-writes) timed at the light load (about 1 min): p50/p99
[group('bench')]
bench-read-your-writes *ARGS: services
    {{python}} -m bench.read_your_writes "$@"

# the benchmark (4-8 min; --quick: 1 min, README untouched; --baseline COMMIT: that commit's run first, then both side by side): table, bench-results/, README
[group('bench')]
bench *ARGS: services
    {{python}} -m bench --readme README.md "$@"

# a worker's CPU per event, layer by layer (decode, decrypt, fold and rows, statements; about 1 min, no broker load), and the reader's (--layers read)
[group('bench')]
bench-cpu *ARGS: services
    {{python}} -m bench.cpu_layers "$@"
