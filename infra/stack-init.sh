#!/bin/sh
# The one-shot `init` service of infra/compose.yaml (the product's image runs it as
# friendship-stream-init): everything a deployment needs before its processors and API start.
# Each step is safe to run again, so `docker compose up` may run it on every start.
#
#   1. keys init   the hash key and the key-encryption key in SECRETS_DIR (a named volume),
#                  created when missing, never replaced;
#   2. migrate     the database and its tables;
#   3. topology    the exchange and the partition streams;
#   4. a `read` token for Prometheus (the API's /metrics needs one), written to the file named
#      by the first argument, once: a file that exists is kept (delete it, or the volume, to
#      make a new token; `token revoke` the old one by its name, `prometheus-<time>`).
#
# Usage: friendship-stream-init TOKEN_FILE
set -eu

token_file=${1:?usage: friendship-stream-init TOKEN_FILE}

python -m processor keys init
python -m processor migrate
python -m processor topology

if [ -s "$token_file" ]; then
  echo "init: keeping the Prometheus token in $token_file" >&2
else
  name="prometheus-$(date -u +%Y%m%dT%H%M%SZ)"
  # `token create` prints the token as its last line of stdout (its log lines go to stderr).
  python -m processor token create --scope read --name "$name" >"$token_file.new"
  tail -n 1 "$token_file.new" >"$token_file.tmp"
  rm -f "$token_file.new"
  chmod 0644 "$token_file.tmp" # Prometheus (another uid) reads it; only it mounts the volume
  mv "$token_file.tmp" "$token_file"
  echo "init: made the read token $name for Prometheus in $token_file" >&2
fi
