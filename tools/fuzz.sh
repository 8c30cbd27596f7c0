#!/usr/bin/env bash
# Runs dsv2's libFuzzer targets (tests/fuzz) for a given time each, from
# their committed seed corpora. Needs a build with -DDSV2_FUZZ=ON (clang;
# tools/sanitize.sh makes one in build-sanitize, with ASan + UBSan).
#
#   tools/fuzz.sh [--build-dir DIR] [--seconds N] [TARGET...]
#
# Default: build-sanitize, 20 s, every target. Prints each target's
# executions and exits 1 when one found a crash, a leak, a timeout (10 s per
# input) or an allocation over 2 GiB: its input is kept as
# <work>/crash-* (path printed); fix the bug and add the input to
# tests/fuzz/corpus/<target>/ as a regression seed. New inputs the run
# finds go to a scratch corpus, not to the committed one (merge them by hand
# with -merge=1 when worth keeping).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build-sanitize"
SECONDS_EACH=20
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD="$2"; shift 2 ;;
    --seconds) SECONDS_EACH="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown flag $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
if [ ${#TARGETS[@]} -eq 0 ]; then
  for d in "$ROOT"/tests/fuzz/corpus/*/; do TARGETS+=("$(basename "$d")"); done
fi
WORK="$(mktemp -d /tmp/dsv2-fuzz.XXXXXX)"
# Targets run side by side, one per core (DSV2_FUZZ_JOBS), each for its own
# SECONDS_EACH; the results are printed in the order given.
JOBS="${DSV2_FUZZ_JOBS:-$(nproc)}"
for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/tests/fuzz/$t" ] || { echo "fuzz.sh: $BUILD/tests/fuzz/$t not built (tools/sanitize.sh)" >&2; exit 2; }
done
fuzz_one() {
  local t="$1" bin="$BUILD/tests/fuzz/$1" log="$WORK/$1/log"
  mkdir -p "$WORK/$t/corpus"
  # The scratch corpus first (libFuzzer writes new inputs to the first
  # directory), then the committed seeds.
  if "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
      -malloc_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$WORK/$t/" \
      "$WORK/$t/corpus" "$ROOT/tests/fuzz/corpus/$t" >"$log" 2>&1; then
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    echo "fuzz: $t: ${execs:-?} executions in ${SECONDS_EACH} s (${rate:-?}/s), no crash" \
      >"$WORK/$t/result"
  else
    { echo "fuzz: $t: FAILED (log $log)"
      grep -E "ERROR|SUMMARY|Test unit written" "$log" || tail -30 "$log"; } >"$WORK/$t/result"
    touch "$WORK/$t/failed"
  fi
}
running=0
for t in "${TARGETS[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait || true
failed=0
for t in "${TARGETS[@]}"; do
  if [ -e "$WORK/$t/failed" ]; then
    failed=1
    cat "$WORK/$t/result" >&2
  else
    cat "$WORK/$t/result"
  fi
done
[ "$failed" -eq 0 ] && rm -rf "$WORK"
exit "$failed"
