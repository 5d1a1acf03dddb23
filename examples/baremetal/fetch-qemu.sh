#!/bin/sh
# fetch-qemu.sh DIR -- puts Debian 12's QEMU 7.2 (qemu-system-aarch64 and
# qemu-system-riscv64) under DIR, without installing anything system-wide.
#
# Why not `apt-get install qemu-system-arm qemu-system-misc`: on these
# machines the preinstalled qemu-utils 10.x (bookworm-backports) conflicts
# with bookworm's QEMU 7.2 packages, and downgrading system packages is not
# an option. So the packages are downloaded with `apt-get download` and
# unpacked with `dpkg -x` into DIR; run the emulators through DIR/run-qemu,
# which sets LD_LIBRARY_PATH to the unpacked libraries.
#
# Idempotent (a complete DIR is left alone) and tolerant: exits 0 when the
# emulators work, 77 when they cannot be obtained (no apt, no network), so a
# caller can turn that into a skipped test.
set -u
dir=${1:?usage: fetch-qemu.sh DIR}
mkdir -p "$dir" || exit 77
dir=$(cd "$dir" && pwd)
run="$dir/run-qemu"

works() {
  [ -x "$run" ] &&
    "$run" qemu-system-aarch64 --version >/dev/null 2>&1 &&
    "$run" qemu-system-riscv64 --version >/dev/null 2>&1
}
if works; then exit 0; fi

command -v apt-get >/dev/null 2>&1 || { echo "fetch-qemu: no apt-get" >&2; exit 77; }
command -v dpkg >/dev/null 2>&1 || { echo "fetch-qemu: no dpkg" >&2; exit 77; }

# The emulators and every shared library `ldd` finds missing on a stock
# Debian 12 (checked by the loop below, which names any that is still
# missing).
pkgs="qemu-system-arm qemu-system-misc qemu-system-common qemu-system-data
  libfdt1 libcapstone4 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2
  libndctl6 libdaxctl1 libnl-3-200 libnl-route-3-200"
deb="$dir/debs"
mkdir -p "$deb" || exit 77
# Download only what is not there yet; a package apt does not know is
# skipped (ldd below says whether it mattered).
for p in $pkgs; do
  ls "$deb/${p}_"*.deb >/dev/null 2>&1 && continue
  (cd "$deb" && apt-get download "$p" >/dev/null 2>&1) ||
    echo "fetch-qemu: apt-get download $p failed (skipped)" >&2
done
ls "$deb"/qemu-system-arm_*.deb "$deb"/qemu-system-misc_*.deb >/dev/null 2>&1 || {
  echo "fetch-qemu: could not download the QEMU packages (apt-get update? network?)" >&2
  exit 77
}
for f in "$deb"/*.deb; do
  dpkg -x "$f" "$dir/root" || { echo "fetch-qemu: dpkg -x $f failed" >&2; exit 77; }
done

libs="$dir/root/usr/lib/x86_64-linux-gnu:$dir/root/lib/x86_64-linux-gnu:$dir/root/usr/lib/x86_64-linux-gnu/pulseaudio"
cat > "$run" <<EOS
#!/bin/sh
# run-qemu PROGRAM ARGS... -- runs an emulator unpacked by fetch-qemu.sh.
p=\$1; shift
LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dir/root/usr/bin/\$p" -L "$dir/root/usr/share/qemu" "\$@"
EOS
chmod +x "$run"

if ! works; then
  for p in qemu-system-aarch64 qemu-system-riscv64; do
    LD_LIBRARY_PATH="$libs" ldd "$dir/root/usr/bin/$p" | grep 'not found' >&2
  done
  echo "fetch-qemu: the unpacked emulators do not run (libraries above missing)" >&2
  exit 77
fi
echo "fetch-qemu: $("$run" qemu-system-aarch64 --version | head -1) in $dir"
