#!/usr/bin/env bash
# The threaded unit tests under ThreadSanitizer (clang), by hand (not in the
# suite: the first run builds Abseil, ~10 minutes on 2 cores).
#
#   tools/tsan.sh [TEST...]     default: the unit tests listed in TESTS below
#
# False reports and how they are avoided:
#  * Abseil: Debian's libabsl is not instrumented, so TSan would not see
#    absl::Mutex (our lock everywhere) and would report every access it
#    guards. The script builds Debian's own Abseil source (the .orig tarball
#    of the installed version, from deb.debian.org) with -fsanitize=thread
#    into build-tsan/abseil and builds dsv2 against it, so absl::Mutex,
#    absl::Notification and CondVar are instrumented (Abseil annotates them
#    for TSan when built with it).
#  * gRPC and protobuf link Debian's Abseil, so the tests that need them
#    (service_test, service_edge_test, coordinator_test, conformance_test)
#    are not run here; the cluster runs of tools/sanitize.sh --cluster (ASan)
#    cover those processes.
#  * UCX is not instrumented: its accesses are
#    not seen, and every hand-off to our threads goes through our own locks
#    (the progress thread calls into UCX; UCX calls back on it), so nothing
#    of UCX's needs a suppression. tools/tsan.supp lists what is suppressed
#    and why (one report about Abseil's own memory; never our code: a race
#    in dsv2 is a bug to fix).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BUILD=build-tsan
JOBS="${DSV2_BUILD_JOBS:-$(nproc)}"
TESTS=(base_test kernels_test model_test metrics_test router_test transport_test)
[ $# -gt 0 ] && TESTS=("$@")

ABSL_VERSION="$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null | sed 's/-.*//')"
ABSL_VERSION="${ABSL_VERSION:-20220623.1}"
ABSL_PREFIX="$ROOT/$BUILD/abseil/install"
if [ ! -f "$ABSL_PREFIX/.built-$ABSL_VERSION" ]; then
  mkdir -p "$BUILD/abseil"
  tarball="$BUILD/abseil/abseil_$ABSL_VERSION.orig.tar.gz"
  [ -f "$tarball" ] || curl -sSfL -o "$tarball" \
    "http://deb.debian.org/debian/pool/main/a/abseil/abseil_$ABSL_VERSION.orig.tar.gz"
  rm -rf "$BUILD/abseil/src" && mkdir -p "$BUILD/abseil/src"
  tar -xzf "$tarball" -C "$BUILD/abseil/src" --strip-components=1
  cmake -S "$BUILD/abseil/src" -B "$BUILD/abseil/build" -G Ninja \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_CXX_STANDARD=17 \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="-O1 -g1 -fsanitize=thread" \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DABSL_PROPAGATE_CXX_STD=ON -DBUILD_TESTING=OFF \
    -DCMAKE_INSTALL_PREFIX="$ABSL_PREFIX" >/dev/null
  ninja -C "$BUILD/abseil/build" -j "$JOBS" install >/dev/null
  touch "$ABSL_PREFIX/.built-$ABSL_VERSION"
fi

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$ABSL_PREFIX" -Dabsl_DIR="$ABSL_PREFIX/lib/cmake/absl" \
  -DDSV2_SANITIZE=thread -DDSV2_SANITIZE_LINES=ON >/dev/null
ninja -C "$BUILD" -j "$JOBS" "${TESTS[@]}"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tools/tsan.supp"
# UCX's memory hooks patch malloc and mmap, which TSan owns.
export UCX_MEM_MALLOC_HOOKS=n UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_EVENTS=n
t0=$(date +%s)
regex="^($(IFS='|'; echo "${TESTS[*]}"))\$"
ctest --test-dir "$BUILD" --output-on-failure --timeout 3600 -R "$regex"
echo "tsan: tests $(( $(date +%s) - t0 ))s"
