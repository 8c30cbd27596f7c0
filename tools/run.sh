#!/usr/bin/env bash
# The main job from a fresh machine: set up, build, start a local cluster with
# `dsv2 up` in the background (coordinator + 1 attention node + 2 expert
# shards on loopback, serving the shipped demo model: a tiny model trained on
# generated children's stories), stream one answer with `dsv2 generate`, shut
# the cluster down.
#   tools/run.sh ["request"]    (DSV2_DEFAULT_MODEL=DIR serves another model)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/build.sh
READY="$(mktemp -u /tmp/dsv2-ready.XXXXXX)"
UP_ARGS=(--ready-file "$READY" --port 0)
[ -n "${DSV2_DEFAULT_MODEL:-}" ] && UP_ARGS+=(--model "$DSV2_DEFAULT_MODEL")
build/tools/dsv2 up "${UP_ARGS[@]}" >/dev/null &
UP_PID=$!
stop_cluster() {
  kill -TERM "$UP_PID" 2>/dev/null || true
  wait "$UP_PID" 2>/dev/null || true
  rm -f "$READY"
}
trap stop_cluster EXIT
for _ in $(seq 1 600); do
  [ -s "$READY" ] && break
  kill -0 "$UP_PID" 2>/dev/null || { echo "run.sh: dsv2 up failed" >&2; exit 1; }
  sleep 0.5
done
[ -s "$READY" ] || { echo "run.sh: the cluster did not become ready" >&2; exit 1; }
ENDPOINT="$(sed -n 's/^dsv2 ready endpoint=\([^ ]*\).*/\1/p' "$READY")"
# Security is on by default: the public port speaks TLS with a throw-away
# authority, named in the ready line.
TLS_CA="$(sed -n 's/.* tls_ca=\([^ ]*\).*/\1/p' "$READY")"
REQUEST="${1:-Tell me a story about a dog named Max who lost his ball.}"
echo "run.sh: cluster ready at $ENDPOINT" >&2
echo "User: $REQUEST" >&2
build/tools/dsv2 generate --endpoint "$ENDPOINT" ${TLS_CA:+--tls-ca "$TLS_CA"} --chat "$REQUEST" --max-tokens 512 --temperature 0
