#!/usr/bin/env bash
# The unit tests under AddressSanitizer + UndefinedBehaviorSanitizer, and
# every libFuzzer target for DSV2_FUZZ_SECONDS (20) each: clang builds them
# into build-sanitize (-O1, every target instrumented: -DDSV2_SANITIZE,
# -DDSV2_FUZZ) and runs them. Any finding fails (the sanitizers abort the
# process; -fno-sanitize-recover). Part of the suite (tools/test.sh).
#
#   tools/sanitize.sh [--no-fuzz]
#   tools/sanitize.sh --cluster     by hand, not in the suite: also the
#                                   service binaries, and the cluster tests
#                                   (cluster_test, api_test, up_test: real
#                                   processes, all instrumented) run on them
#
# Reports name functions, not lines (no debug info, for the suite's budget):
# DSV2_SANITIZE_LINES=ON tools/sanitize.sh rebuilds with line tables.
#
# Debian's Abseil, gRPC, protobuf and UCX are not instrumented: ASan still
# checks every access our code makes, their internals are not checked.
# UCX's own memory hooks are turned off (UCX_MEM_*): they patch malloc and
# mmap, which ASan owns.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ=1
CLUSTER=0
case "${1:-}" in
  "") ;;
  --no-fuzz) FUZZ=0 ;;
  --cluster) FUZZ=0; CLUSTER=1 ;;
  *) echo "usage: tools/sanitize.sh [--no-fuzz | --cluster]" >&2; exit 2 ;;
esac
BUILD=build-sanitize
JOBS="${DSV2_BUILD_JOBS:-$(nproc)}"
# The unit tests: fast, in-process (the cluster tests start processes and
# run under scripts/by hand: docs/testing.md).
UNIT=(base_test kernels_test model_test metrics_test router_test transport_test
      coordinator_test service_edge_test service_test conformance_test)
FUZZ_TARGETS=(safetensors_fuzz model_config_fuzz tokenizer_fuzz chat_template_fuzz wire_fuzz
              handshake_fuzz generate_request_fuzz)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV2_SANITIZE_LINES="${DSV2_SANITIZE_LINES:-OFF}" \
  -DDSV2_SANITIZE=address,undefined -DDSV2_FUZZ=ON >/dev/null
CLUSTER_TESTS=(cluster_test api_test up_test)
targets=("${UNIT[@]}")
[ "$FUZZ" -eq 1 ] && targets+=("${FUZZ_TARGETS[@]}")
[ "$CLUSTER" -eq 1 ] && targets+=(dsv2 dsv2-coordinator dsv2-attention dsv2-expert "${CLUSTER_TESTS[@]}")
ninja -C "$BUILD" -j "$JOBS" "${targets[@]}"
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export UCX_MEM_MALLOC_HOOKS=n UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_EVENTS=n
# The scalar kernels' thread-split sweeps (a minute instrumented, most of the
# unit tests' time) run in the plain suite; here the same sweeps run at the
# SIMD ISAs (the split logic is shared) and the scalar kernels at the small
# shapes.
[ "$CLUSTER" -eq 0 ] && export GTEST_FILTER='-*AcrossThreadSplits/scalar'
t0=$(date +%s)
tests=("${UNIT[@]}")
[ "$CLUSTER" -eq 1 ] && tests=("${CLUSTER_TESTS[@]}")
regex="^($(IFS='|'; echo "${tests[*]}"))\$"
# Instrumented, api_test's 28 clusters take over 20 minutes.
timeout=1200
[ "$CLUSTER" -eq 1 ] && timeout=3600
# The unit tests side by side (they are in-process, on OS-chosen ports); the
# cluster tests one at a time, as in the suite.
parallel="$JOBS"
[ "$CLUSTER" -eq 1 ] && parallel=1
ctest --test-dir "$BUILD" --output-on-failure --timeout "$timeout" -j "$parallel" -R "$regex"
t1=$(date +%s)
if [ "$FUZZ" -eq 1 ]; then
  tools/fuzz.sh --build-dir "$BUILD" --seconds "${DSV2_FUZZ_SECONDS:-20}" "${FUZZ_TARGETS[@]}"
fi
t2=$(date +%s)
echo "sanitize: tests $((t1 - t0))s, fuzzing $((t2 - t1))s"
