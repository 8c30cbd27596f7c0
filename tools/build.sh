#!/usr/bin/env bash
# Configures and builds dsv2 into build/ (CMake + Ninja + ccache).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${DSV2_BUILD_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j "$JOBS"
