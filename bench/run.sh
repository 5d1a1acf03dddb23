#!/usr/bin/env bash
# Builds and runs the libaxalloc vs axaddrspace 0.3.0 benchmark.
#   bench/run.sh            full run (a few minutes at most), prints the tables
#   bench/run.sh --short    CI mode: tiny sizes, correctness checks only;
#                           exits 77 (skip) when no nightly toolchain is installed
# Other arguments are passed through (--reps N, --only LIST, --side ax|peer,
# --variant zeroing|prezeroed). AXALLOC_LIB_DIR=/dir links /dir/libaxalloc.a
# instead of building the archive into bench/target/axalloc-build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
short=0
for a in "$@"; do [ "$a" = "--short" ] && short=1; done

if ! RUSTUP_AUTO_INSTALL=0 cargo +nightly --version >/dev/null 2>&1; then
  echo "bench/run.sh: no nightly Rust toolchain (axaddrspace 0.3.0 needs it): benchmark skipped"
  [ "$short" = 1 ] && exit 77
  exit 1
fi
RUSTUP_AUTO_INSTALL=0 cargo +nightly build --release --quiet
exec ./target/release/axalloc-bench "$@"
