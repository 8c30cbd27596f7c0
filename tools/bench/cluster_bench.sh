#!/usr/bin/env bash
# Cluster vs single process on a V2-Lite-shaped random checkpoint (real
# V2-Lite dimensions, fewer layers; the same model decode_bench.sh uses):
# decode tokens/s at batch 1, 8, 32; per-layer dispatch + combine vs the raw
# UCX round trip; communication hidden by ping-pong. Builds what it needs.
#   tools/bench/cluster_bench.sh [LAYERS (default 4)] [extra cluster_bench flags]
# Environment:
#   PRESET=v2-lite (default) | v2-lite-tiny | v2-tiny   random model preset
#     (v2-lite-tiny: a seconds-long smoke run)
#   BUILD_DIR=build (default)   build directory (configured if missing)
#   DSV2_BUILD_JOBS=N           ninja -j (default: nproc)
# e.g. PRESET=v2-lite-tiny tools/bench/cluster_bench.sh 3 --new-tokens 9
#      tools/bench/cluster_bench.sh 4 --batches 1,8,32 --ucx-transports tcp
set -euo pipefail
cd "$(dirname "$0")/../.."
LAYERS="${1:-4}"
shift || true
PRESET="${PRESET:-v2-lite}"
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${DSV2_BUILD_JOBS:-$(nproc)}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
ninja -C "$BUILD_DIR" -j "$JOBS" cluster_bench dsv2 dsv2-expert >/dev/null
MODEL="$BUILD_DIR/bench-${PRESET}-${LAYERS}l"
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$BUILD_DIR/tools/dsv2" make-random-model --out "$MODEL" --preset "$PRESET" \
    --num-layers "$LAYERS" --seed 1
fi
"$BUILD_DIR/tools/cluster_bench" --model "$MODEL" --bin-dir "$BUILD_DIR" "$@"
