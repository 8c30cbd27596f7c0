#!/usr/bin/env bash
# The main job from a fresh machine: set up, build, make the default model
# (random weights: its text is noise) and generate from a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/build.sh
MODEL="${DSV2_DEFAULT_MODEL:-build/default-model}"
if [ ! -f "$MODEL/model.safetensors" ]; then
  build/tools/dsv2 make-random-model --out "$MODEL" --preset v2-tiny --seed 0
fi
build/tools/dsv2 run --model "$MODEL" --prompt "${1:-The capital of France is}" --max-tokens 32
