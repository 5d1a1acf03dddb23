#!/bin/sh
# CTest `fault_ir_bound`: fails if a pre-zeroed fault through the lean path
# costs more instructions than the bounds below (callgrind counts are exact
# and repeatable; times are not). BENCHMARKS.md ("Instructions per fault")
# has the measured counts these bounds sit just above: raise a bound only
# with a reason written there.
#   check.sh FAULT_BINARY      (built from fault.c against the shipped archive)
# Exit 77 (skipped) without valgrind.
set -eu
bin="$1"
command -v valgrind >/dev/null 2>&1 || { echo "valgrind not installed: skipped"; exit 77; }
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
fail=0
# mode    bound  (Ir per fault, the test host's ~12-instruction alloc_frame hook included)
for pair in plain:149 linear:147 reserve:151 linres:136; do
  mode="${pair%%:*}"; bound="${pair#*:}"
  n=$(valgrind --tool=callgrind --toggle-collect=axalloc_handle_fault \
        --callgrind-out-file="$dir/cg.$mode" "$bin" "$mode" 2>"$dir/log.$mode") || {
    cat "$dir/log.$mode"; echo "$mode: the driver failed"; exit 1; }
  ir=$(grep -E '^(summary|totals):' "$dir/cg.$mode" | head -1 | awk '{print $2}')
  per=$(awk -v a="$ir" -v b="$n" 'BEGIN{printf "%.1f", a/b}')
  if awk -v p="$per" -v b="$bound" 'BEGIN{exit !(p > b)}'; then
    echo "FAIL $mode: $per Ir per fault > bound $bound ($n faults)"; fail=1
  else
    echo "ok   $mode: $per Ir per fault <= bound $bound ($n faults)"
  fi
done
exit $fail
