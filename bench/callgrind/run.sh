#!/usr/bin/env bash
# Instructions per pre-zeroed fault of libaxalloc, counted by callgrind.
#   AXALLOC_LIB_DIR=/dir bench/callgrind/run.sh    (default: build/ of the repo)
# Builds fault.c against $AXALLOC_LIB_DIR/libaxalloc.a and runs it under
# `valgrind --tool=callgrind --toggle-collect=axalloc_handle_fault` in each
# mode (see fault.c); prints Ir per fault.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
lib="${AXALLOC_LIB_DIR:-$repo/build}"
out="${OUT:-$here/../target/callgrind}"
mkdir -p "$out"
command -v valgrind >/dev/null || { echo "callgrind/run.sh: valgrind not installed"; exit 1; }
cc -O2 -std=c11 -I"$repo/include" "$here/fault.c" "$lib/libaxalloc.a" -lpthread -o "$out/fault"
printf '| mode | calls (faults / lookups) counted | Ir total | Ir / fault or lookup |\n|---|---:|---:|---:|\n'
for m in ${MODES:-plain linear reserve linres plain-tables linear-tables plain-scatter linear-scatter translate translate_many}; do
  f="$out/cg.$m.out"
  case "$m" in translate*) fn="axalloc_$m" ;; *) fn=axalloc_handle_fault ;; esac
  n=$(valgrind --tool=callgrind --toggle-collect="$fn" --callgrind-out-file="$f" \
        "$out/fault" "$m" 2>"$out/cg.$m.log")
  ir=$(grep -E '^summary:|^totals:' "$f" | head -1 | awk '{print $2}')
  printf '| %s | %s | %s | %s |\n' "$m" "$n" "$ir" "$(awk -v a="$ir" -v b="$n" 'BEGIN{printf "%.1f", a/b}')"
done
