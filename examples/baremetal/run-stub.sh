#!/bin/sh
# run-stub.sh QEMU_DIR ARCH ELF GPA_BITS [noflush] -- one bare-metal
# hypervisor run (a CTest test). ARCH is aarch64 or riscv64. Exit 0 when the
# stub's last line is "PASS ..." and QEMU exited 0 -- with "noflush", when
# the run with a flush_tlb hook that does nothing FAILS on the guest's
# unmap check instead (the checks can see a stale translation); 77 (skipped) when the stub was not
# built (no cross compiler / Rust target) or QEMU cannot be obtained; 1
# otherwise.
set -u
qdir=$1 arch=$2 elf=$3 bits=$4 mode=${5:-}
here=$(cd "$(dirname "$0")" && pwd)

if [ ! -f "$elf" ]; then
  echo "SKIP: $elf was not built (cross compiler or Rust target missing; see examples/README.md)"
  exit 77
fi

# A system QEMU if there is one, else Debian's 7.2 unpacked into the build
# tree (once, under a lock: the tests run in parallel).
if command -v "qemu-system-$arch" >/dev/null 2>&1; then
  qemu="qemu-system-$arch"
else
  mkdir -p "$qdir"
  if command -v flock >/dev/null 2>&1; then
    flock "$qdir/.lock" "$here/fetch-qemu.sh" "$qdir"
  else
    "$here/fetch-qemu.sh" "$qdir"
  fi
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "SKIP: no qemu-system-$arch (fetch-qemu.sh exited $rc)"
    exit 77
  fi
  qemu="$qdir/run-qemu qemu-system-$arch"
fi

case $arch in aarch64) cfg=0x407ff000 ;; *) cfg=0x807ff000 ;; esac
noflush=0
[ "$mode" = noflush ] && noflush=1

case $arch in
  aarch64)
    # EL2 (virtualization=on, no EL3), a CPU with a 48-bit PARange; the
    # stub ends the run through semihosting SYS_EXIT with its status.
    set -- -M virt,virtualization=on -cpu max \
      -semihosting-config enable=on,target=native \
      -device loader,addr=$cfg,data="$bits",data-len=4 ;;
  riscv64)
    # M-mode at 0x80000000 with the H extension; the stub ends the run
    # through the sifive_test device with its status.
    set -- -M virt -cpu rv64,h=true -bios none \
      -device loader,addr=$cfg,data="$bits",data-len=4 ;;
  *) echo "run-stub.sh: unknown arch $arch"; exit 1 ;;
esac

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086 # $qemu is a command and its first argument
timeout 60 $qemu "$@" -device loader,addr=$((cfg + 4)),data=$noflush,data-len=4 -m 128M -nographic -nodefaults -serial stdio -monitor none \
  -kernel "$elf" </dev/null >"$out" 2>&1
rc=$?
tr -d '\r' <"$out"
last=$(tr -d '\r' <"$out" | grep -v '^$' | tail -n 1)
if [ $noflush = 1 ]; then
  if grep -q '^guest: FAIL: all_zero(unm, UNMAP_SIZE)' "$out" && [ $rc -ne 0 ]; then
    echo "OK: without a working flush_tlb the guest read stale data after the unmap, and the run failed"
    exit 0
  fi
  echo "FAIL: the run without flush_tlb did not fail on the unmap check (QEMU exited $rc)"
  exit 1
fi
if [ $rc -eq 124 ]; then
  echo "FAIL: timed out after 60 s"
  exit 1
fi
case $last in
  PASS*) [ $rc -eq 0 ] && exit 0 ;;
esac
echo "FAIL: QEMU exited $rc, last line: $last"
exit 1
