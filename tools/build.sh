#!/usr/bin/env bash
# Configures and builds dsv2 into build/ (CMake + Ninja + ccache), with
# warnings as errors (DSV2_WERROR; a plain cmake build leaves it off).
# Arguments are passed to cmake's configure step, e.g.
#   tools/build.sh -DDSV2_BUILD_TESTS=OFF      (the container build)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${DSV2_BUILD_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV2_WERROR=ON "$@" >/dev/null
ninja -C build -j "$JOBS"
