#!/usr/bin/env bash
# The whole test suite from a fresh machine: set up, build, run every test.
# Prints the time of each phase (the budget: set-up / build / tests /
# sanitizers and fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash tools/setup.sh
t1=$(date +%s)
bash tools/build.sh
t2=$(date +%s)
# Serial: cluster tests must not compete for the 2 cores.
ctest --test-dir build --output-on-failure --timeout 1500
t3=$(date +%s)
# The unit tests again under ASan + UBSan, and 20 s of each fuzz target.
bash tools/sanitize.sh
t4=$(date +%s)
echo "timing: setup $((t1 - t0))s, build $((t2 - t1))s, tests $((t3 - t2))s," \
  "sanitizers + fuzzing $((t4 - t3))s"
