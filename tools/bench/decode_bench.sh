#!/usr/bin/env bash
# dsv2 run decode throughput on a V2-Lite-shaped random checkpoint (real
# V2-Lite dimensions: hidden 2048, 16 heads, 64 experts of 1408, vocabulary
# 102400) with fewer layers. Prints the engine's prefill/decode figures.
#   tools/bench/decode_bench.sh [LAYERS (default 4)] [THREADS (default 2)]
set -euo pipefail
cd "$(dirname "$0")/../.."
LAYERS="${1:-4}"
THREADS="${2:-2}"
MODEL="build/bench-v2-lite-${LAYERS}l"
if [ ! -f "$MODEL/model.safetensors" ]; then
  build/tools/dsv2 make-random-model --out "$MODEL" --preset v2-lite --num-layers "$LAYERS" --seed 1
fi
IDS=$(seq -s, 100 164)
build/tools/dsv2 run --model "$MODEL" --prompt-ids "$IDS" --max-tokens 32 --ignore-eos \
  --threads "$THREADS" --json > /dev/null
