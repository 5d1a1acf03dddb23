#!/bin/sh
# run-bochs.sh BOCHS_DIR ROM MODE [noflush] -- one run of the x86
# bare-metal hypervisor in Bochs (a CTest test). MODE: ept4 (VMX, `cpu:
# model=corei7_skylake_x`), npt4 (SVM, `model=ryzen`), ept5 / npt5 (5
# levels: no Bochs 2.7 CPU model has them, so these report SKIP).
# "noflush": flush_tlb does nothing (Bochs 2.7 still passes: see
# examples/README.md).
#
# Exit 0 when the stub's last line is "PASS ..."; 77 (skipped) when the ROM
# was not built, Bochs cannot be obtained, or the CPU model lacks the
# feature ("hv: SKIP"); 1 otherwise.
set -u
bdir=$1 rom=$2 mode=$3 flag=${4:-}
here=$(cd "$(dirname "$0")" && pwd)

if [ ! -f "$rom" ]; then
  echo "SKIP: $rom was not built (see examples/README.md)"
  exit 77
fi
case $mode in
  ept4) m=1 model=corei7_skylake_x ;;
  npt4) m=2 model=ryzen ;;
  ept5) m=3 model=tigerlake ;;
  npt5) m=4 model=ryzen ;;
  *) echo "run-bochs.sh: unknown mode $mode"; exit 1 ;;
esac
nf=0
[ "$flag" = noflush ] && nf=1

mkdir -p "$bdir"
if command -v flock >/dev/null 2>&1; then
  flock "$bdir/.lock" "$here/fetch-bochs.sh" "$bdir"
else
  "$here/fetch-bochs.sh" "$bdir"
fi
rc=$?
if [ $rc -ne 0 ]; then
  echo "SKIP: no Bochs (fetch-bochs.sh exited $rc)"
  exit 77
fi
bdir=$(cd "$bdir" && pwd)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The ROM with its mode word (offset 0x1fffe4 = 0xffffffe4; the byte after
# it: noflush).
cp "$rom" "$tmp/rom" || exit 1
printf "\\00$m\\00$nf" | dd of="$tmp/rom" bs=1 seek=$((0x1fffe4)) conv=notrunc 2>/dev/null
# This Bochs has neither `nogui` nor `load32bitOSImage`: the ROM is the
# BIOS, the display is rfb without waiting for a client, the output goes
# through port 0xe9 and the stub ends the run through port 0x8900.
cat > "$tmp/bochsrc" <<EOC
megs: 256
romimage: file=$tmp/rom, address=0xffe00000
vgaromimage: file=$bdir/root/usr/share/vgabios/vgabios.bin
cpu: model=$model, count=1, ips=100000000, reset_on_triple_fault=0
display_library: rfb, options="timeout=0"
port_e9_hack: enabled=1
speaker: enabled=0
clock: sync=none
log: $tmp/log
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
EOC
echo c > "$tmp/rc"                  # the debugger stops at the reset vector: continue

timeout 60 "$bdir/run-bochs" -q -f "$tmp/bochsrc" -rc "$tmp/rc" </dev/null >"$tmp/out" 2>&1
rc=$?
grep -av '^ALSA lib' "$tmp/out"
last=$(grep -a '^\(PASS\|FAIL\|hv: SKIP\)' "$tmp/out" | tail -n 1)
if [ $rc -eq 124 ]; then
  echo "FAIL: timed out after 60 s"
  exit 1
fi
case $last in
  PASS*) exit 0 ;;
  "hv: SKIP"*) echo "SKIP: $last"; exit 77 ;;
esac
echo "--- the last lines of Bochs's log:"
tail -n 25 "$tmp/log"
echo "FAIL: Bochs exited $rc, no PASS line (last verdict: ${last:-none})"
exit 1
