#!/bin/sh
# fetch-bochs.sh DIR -- puts Debian 12's Bochs 2.7 (VMX with EPT, SVM with
# nested paging) under DIR, without installing anything system-wide.
#
# Why not `apt-get install bochs`: it would pull in and upgrade system
# libraries (GTK's dependencies). The packages are downloaded with
# `apt-get download` and unpacked with `dpkg -x` into DIR; DIR/run-bochs
# runs bochs-bin with LD_LIBRARY_PATH (the unpacked libraries),
# LTDL_LIBRARY_PATH (Bochs's device plugins) and BXSHARE set.
#
# Idempotent (a complete DIR is left alone) and tolerant: exits 0 when
# Bochs works, 77 when it cannot be obtained (no apt, no network), so a
# caller can turn that into a skipped test. Run under flock by
# run-bochs.sh (the tests run in parallel).
set -u
dir=${1:?usage: fetch-bochs.sh DIR}
mkdir -p "$dir" || exit 77
dir=$(cd "$dir" && pwd)
run="$dir/run-bochs"
lib="$dir/root/usr/lib/x86_64-linux-gnu"

works() {
  [ -x "$run" ] && [ -f "$dir/root/usr/share/vgabios/vgabios.bin" ] &&
    ! LD_LIBRARY_PATH="$lib" ldd "$dir/root/usr/bin/bochs-bin" 2>&1 | grep -q 'not found'
}
if works; then exit 0; fi

command -v apt-get >/dev/null 2>&1 || { echo "fetch-bochs: no apt-get" >&2; exit 77; }
command -v dpkg >/dev/null 2>&1 || { echo "fetch-bochs: no dpkg" >&2; exit 77; }

# Bochs, its BIOS and VGA BIOS packages, and the shared libraries `ldd`
# finds missing on a stock Debian 12 (bochs-bin links the GTK GUI plugin's
# libraries although the tests use the rfb one).
pkgs="bochs bochsbios vgabios libltdl7 libsamplerate0 libgtk-3-0 libcolord2 libepoxy0
  libwayland-cursor0 libwayland-egl1"
deb="$dir/debs"
mkdir -p "$deb" || exit 77
# One apt-get call for all (each call loads apt's cache: seconds); one by
# one when that fails, so a package apt does not know is skipped (ldd
# below says whether it mattered).
(cd "$deb" && apt-get download $pkgs >/dev/null 2>&1)
for p in $pkgs; do
  ls "$deb/${p}_"*.deb >/dev/null 2>&1 && continue
  (cd "$deb" && apt-get download "$p" >/dev/null 2>&1) ||
    echo "fetch-bochs: apt-get download $p failed (skipped)" >&2
done
ls "$deb"/bochs_*.deb "$deb"/vgabios_*.deb >/dev/null 2>&1 || {
  echo "fetch-bochs: could not download the Bochs packages (apt-get update? network?)" >&2
  exit 77
}
for f in "$deb"/*.deb; do
  dpkg -x "$f" "$dir/root" || { echo "fetch-bochs: dpkg -x $f failed" >&2; exit 77; }
done

cat > "$run" <<EOS
#!/bin/sh
# run-bochs ARGS... -- runs the bochs-bin unpacked by fetch-bochs.sh.
LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
LTDL_LIBRARY_PATH="$lib/bochs/plugins" BXSHARE="$dir/root/usr/share/bochs" \\
  exec "$dir/root/usr/bin/bochs-bin" "\$@"
EOS
chmod +x "$run"

if ! works; then
  LD_LIBRARY_PATH="$lib" ldd "$dir/root/usr/bin/bochs-bin" | grep 'not found' >&2
  echo "fetch-bochs: the unpacked Bochs does not run (libraries above missing)" >&2
  exit 77
fi
echo "fetch-bochs: Bochs 2.7 in $dir"
