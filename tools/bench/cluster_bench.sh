#!/usr/bin/env bash
# Cluster vs single process on a V2-Lite-shaped random checkpoint (real
# V2-Lite dimensions, fewer layers; the same model decode_bench.sh uses):
# decode tokens/s at batch 1, 8, 32; per-layer dispatch + combine vs the raw
# UCX round trip; communication hidden by ping-pong. Builds what it needs.
#   tools/bench/cluster_bench.sh [LAYERS (default 4)] [extra cluster_bench flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
LAYERS="${1:-4}"
shift || true
bash tools/build.sh >/dev/null
MODEL="build/bench-v2-lite-${LAYERS}l"
if [ ! -f "$MODEL/model.safetensors" ]; then
  build/tools/dsv2 make-random-model --out "$MODEL" --preset v2-lite --num-layers "$LAYERS" --seed 1
fi
build/tools/cluster_bench --model "$MODEL" --bin-dir build "$@"
