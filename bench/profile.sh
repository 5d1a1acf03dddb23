#!/usr/bin/env bash
# Profiles libaxalloc's side of each workload with perf, sampling only the
# timed sections (the pool set-up is excluded through perf's control fifo).
#   bench/profile.sh [workload ...]   (default: populate lazy translate unmap threads)
# Reports land in bench/target/profile/<workload>.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
command -v perf >/dev/null || { echo "profile.sh: perf not installed"; exit 1; }
cargo +nightly build --release --quiet
out="$here/target/profile"
mkdir -p "$out"
ws=("$@")
[ ${#ws[@]} -eq 0 ] && ws=(populate lazy translate unmap threads)
for w in "${ws[@]}"; do
  rm -f "$out/ctl" "$out/ack"
  mkfifo "$out/ctl" "$out/ack"
  AXALLOC_BENCH_PERF_CTL="$out/ctl,$out/ack" \
    perf record -q -g -F "${PERF_FREQ:-4000}" -D -1 --control "fifo:$out/ctl,$out/ack" -o "$out/$w.data" \
    ./target/release/axalloc-bench --only "$w" --side "${SIDE:-ax}" --reps "${REPS:-5}" ${VARIANT:+--variant "$VARIANT"} >"$out/$w.bench.txt"
  perf report -i "$out/$w.data" --no-children --stdio --percent-limit 0.5 -g none 2>/dev/null \
    | grep -E '^ +[0-9]' >"$out/$w.txt" || true
  echo "=== $w (self time, timed sections only)"
  head -15 "$out/$w.txt"
  rm -f "$out/ctl" "$out/ack"
done
