#!/usr/bin/env bash
# A real-size DeepSeek-V2-Lite (all 27 layers, 15.7B parameters, random
# weights) stored quantized, run in one process (`dsv2 run`) and as a
# cluster (`dsv2 up`: coordinator + 1 attention node + 2 expert shards),
# within one machine's memory (issue 13: 24 GiB). The checkpoint is written
# directly in int8/int4 by `dsv2 make-random-model --weights` (the 31 GB
# bf16 checkpoint never exists). Reports, per process, the peak PSS
# (proportional set size, sampled from /proc/PID/smaps_rollup every 0.2 s:
# the shards and the attention node map the same files, so RSS would count
# shared pages twice; PSS splits them) and the peak RSS, the load time
# (start to ready), and prefill and decode tokens/s.
#   tools/bench/realsize_bench.sh [int8|int4 (default int8)] [LAYERS (default 27)]
# Environment:
#   BUILD_DIR=build           build directory (configured if missing)
#   DSV2_BUILD_JOBS=N         ninja -j (default: nproc)
#   MODEL_DIR=DIR             where the checkpoint is made (default $BUILD_DIR/bench-v2-lite-FORMAT-LAYERSl)
#   PROMPT_TOKENS=64 NEW_TOKENS=32   the request
#   SKIP_CLUSTER=1            single process only
# e.g. tools/bench/realsize_bench.sh int4
#      tools/bench/realsize_bench.sh int8 4     # a 4-layer smoke run
set -euo pipefail
cd "$(dirname "$0")/../.."
FORMAT="${1:-int8}"
LAYERS="${2:-27}"
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${DSV2_BUILD_JOBS:-$(nproc)}"
PROMPT_TOKENS="${PROMPT_TOKENS:-64}"
NEW_TOKENS="${NEW_TOKENS:-32}"
case "$FORMAT" in int8|int4) ;; *) echo "format must be int8 or int4" >&2; exit 2 ;; esac
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
ninja -C "$BUILD_DIR" -j "$JOBS" dsv2 dsv2-expert dsv2-attention dsv2-coordinator >/dev/null
DSV2="$BUILD_DIR/tools/dsv2"
MODEL="${MODEL_DIR:-$BUILD_DIR/bench-v2-lite-$FORMAT-${LAYERS}l}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM"
if [ ! -f "$MODEL/model.safetensors" ] && [ ! -f "$MODEL/model.safetensors.index.json" ]; then
  start=$(date +%s.%N)
  "$DSV2" make-random-model --preset v2-lite --num-layers "$LAYERS" --weights "$FORMAT" \
    --seed 1 --out "$MODEL"
  echo "make-random-model: $(echo "$(date +%s.%N) - $start" | bc) s"
fi
echo "checkpoint: $MODEL, $(du -sb "$MODEL" | awk '{printf "%.2f GB", $1 / 1e9}') on disk"

# Peak PSS and RSS (KiB) of the processes whose pids are in $WORK/pids, sampled
# until $WORK/stop exists; written to $WORK/peak.<pid>.
sample() {
  while [ ! -f "$WORK/stop" ]; do
    for pid in $(cat "$WORK/pids" 2>/dev/null); do
      [ -r "/proc/$pid/smaps_rollup" ] || continue
      read -r pss rss < <(awk '/^Pss:/ {p=$2} /^Rss:/ {r=$2} END {print p+0, r+0}' \
        "/proc/$pid/smaps_rollup" 2>/dev/null || echo "0 0")
      old_pss=0 old_rss=0
      [ -f "$WORK/peak.$pid" ] && read -r old_pss old_rss < "$WORK/peak.$pid"
      [ "$pss" -gt "$old_pss" ] || pss=$old_pss
      [ "$rss" -gt "$old_rss" ] || rss=$old_rss
      echo "$pss $rss" > "$WORK/peak.$pid"
    done
    sleep 0.2
  done
}
gib() { awk -v k="$1" 'BEGIN {printf "%.2f GiB", k / 1048576}'; }

PROMPT="$(seq -s, 1000 $((1000 + PROMPT_TOKENS - 1)))"

# --- single process -------------------------------------------------------
rm -f "$WORK"/peak.* "$WORK/stop"
start=$(date +%s.%N)
"$DSV2" run --model "$MODEL" --prompt-ids "$PROMPT" --max-tokens "$NEW_TOKENS" --ignore-eos \
  > /dev/null 2> "$WORK/run.err" &
run_pid=$!
echo "$run_pid" > "$WORK/pids"
sample & sampler=$!
wait "$run_pid"
end=$(date +%s.%N)
touch "$WORK/stop"; wait "$sampler"
timing="$(grep -E '^seed ' "$WORK/run.err")"
prefill_s="$(sed -E 's/.*prefill: [0-9]+ tokens in ([0-9.]+) s.*/\1/' <<< "$timing")"
decode_tps="$(sed -E 's/.*\(([0-9.]+) tokens\/s\).*/\1/' <<< "$timing")"
read -r pss rss < "$WORK/peak.$run_pid"
echo "dsv2 run ($FORMAT, $(sed -E 's/.*; ([0-9]+) threads;.*/\1/' <<< "$timing") threads):" \
  "load $(echo "$end - $start" | bc | awk -v p="$prefill_s" -v n="$NEW_TOKENS" -v d="$decode_tps" \
    '{printf "%.1f", $1 - p - (n - 1) / d}') s," \
  "prefill $(awk -v p="$prefill_s" -v n="$PROMPT_TOKENS" 'BEGIN {printf "%.1f", n / p}') tok/s," \
  "decode $decode_tps tok/s; peak PSS $(gib "$pss"), peak RSS $(gib "$rss")"

[ "${SKIP_CLUSTER:-0}" = 1 ] && exit 0

# --- cluster: 1 attention node + 2 expert shards ----------------------------
rm -f "$WORK"/peak.* "$WORK/stop" "$WORK/ready"
start=$(date +%s.%N)
"$DSV2" up --model "$MODEL" --attention-nodes 1 --expert-shards 2 --ready-file "$WORK/ready" \
  --log-dir "$WORK/logs" > "$WORK/up.out" 2> "$WORK/up.err" &
up_pid=$!
until [ -s "$WORK/ready" ]; do
  kill -0 "$up_pid" 2>/dev/null || { cat "$WORK/up.err" >&2; exit 1; }
  sleep 0.2
done
ready=$(date +%s.%N)
line="$(cat "$WORK/ready")"
field() { sed -E "s/.*[ ]$1=([^ ]*).*/\\1/" <<< "$line"; }
ENDPOINT="$(field endpoint)"
TLS_CA="$(field tls_ca)"
: > "$WORK/pids"
for name in coordinator attention-0 expert-0 expert-1; do field "$name" >> "$WORK/pids"; done
sample & sampler=$!
t0=$(date +%s.%N)
"$DSV2" generate --endpoint "$ENDPOINT" --tls-ca "$TLS_CA" --prompt-ids "$PROMPT" --max-tokens 1 --temperature 0 \
  > /dev/null
t1=$(date +%s.%N)
"$DSV2" generate --endpoint "$ENDPOINT" --tls-ca "$TLS_CA" --prompt-ids "$PROMPT" --max-tokens "$NEW_TOKENS" \
  --temperature 0 --ignore-eos > /dev/null
t2=$(date +%s.%N)
touch "$WORK/stop"; wait "$sampler"
kill -TERM "$up_pid"; wait "$up_pid" || true
total_pss=0
report=""
i=0
for name in coordinator attention-0 expert-0 expert-1; do
  i=$((i + 1))
  pid="$(sed -n "${i}p" "$WORK/pids")"
  read -r pss rss < "$WORK/peak.$pid" || { pss=0; rss=0; }
  total_pss=$((total_pss + pss))
  report="$report $name $(gib "$pss") PSS / $(gib "$rss") RSS;"
done
echo "dsv2 up ($FORMAT, 1 attention node + 2 shards): load (start to ready)" \
  "$(echo "$ready - $start" | bc | awk '{printf "%.1f", $1}') s," \
  "prefill+first token $(awk -v a="$t0" -v b="$t1" -v n="$PROMPT_TOKENS" 'BEGIN {printf "%.1f", n / (b - a)}') tok/s," \
  "decode $(awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$NEW_TOKENS" 'BEGIN {printf "%.2f", (n - 1) / ((c - b) - (b - a) + 1e-9)}') tok/s"
echo "  peak per process:$report total PSS $(gib "$total_pss")"
