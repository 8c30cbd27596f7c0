#!/usr/bin/env bash
# The public API under load: starts `dsv2 up` (coordinator + attention
# node(s) + shards, --threads 1 each) and runs api_bench against it, through
# the coordinator and straight to the attention nodes. Builds what it needs.
#   tools/bench/api_bench.sh [extra api_bench flags]
# Environment:
#   MODEL=DIR (default: build/default-model, the v2-tiny random model)
#   ATTENTION_NODES=1 EXPERT_SHARDS=2   cluster shape
#   BUILD_DIR=build                     build directory (configured if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR="${BUILD_DIR:-build}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
ninja -C "$BUILD_DIR" -j "${DSV2_BUILD_JOBS:-$(nproc)}" api_bench dsv2 dsv2-coordinator \
  dsv2-attention dsv2-expert >/dev/null
READY="$(mktemp -u /tmp/dsv2-bench-ready.XXXXXX)"
# --insecure: api_bench speaks plaintext gRPC (the serving path is measured,
# not TLS).
UP=("$BUILD_DIR/tools/dsv2" up --insecure --ready-file "$READY" --port 0 \
    --attention-nodes "${ATTENTION_NODES:-1}" --expert-shards "${EXPERT_SHARDS:-2}")
[ -n "${MODEL:-}" ] && UP+=(--model "$MODEL")
"${UP[@]}" >/dev/null 2>/tmp/dsv2-bench-up.log &
UP_PID=$!
trap 'kill -TERM $UP_PID 2>/dev/null || true; wait $UP_PID 2>/dev/null || true; rm -f "$READY"' EXIT
for _ in $(seq 1 600); do
  [ -s "$READY" ] && break
  kill -0 "$UP_PID" 2>/dev/null || { cat /tmp/dsv2-bench-up.log >&2; exit 1; }
  sleep 0.5
done
ENDPOINT="$(sed -n 's/^dsv2 ready endpoint=\([^ ]*\).*/\1/p' "$READY")"
"$BUILD_DIR/tools/api_bench" --endpoint "$ENDPOINT" "$@"
