#!/usr/bin/env bash
# 2 MiB vs 4 KiB guest pages on one pool (see huge_bench.c). Uses the
# archive of an existing CMake build (default build/, or $AXALLOC_BUILD).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${AXALLOC_BUILD:-$root/build}"
[ -f "$build/libaxalloc.a" ] || { cmake -S "$root" -B "$build" && cmake --build "$build" -j --target axalloc_cargo; }
out="$build/axalloc-huge-bench"
cc -O2 -std=c11 -Wall -Wextra -Werror -I"$root/include" "$root/bench/huge/huge_bench.c" "$build/libaxalloc.a" -o "$out"
exec "$out" "$@"
