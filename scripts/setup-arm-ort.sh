#!/usr/bin/env bash
# Set up ONNX Runtime's official aarch64 build, run under qemu-aarch64, in build/arm/ort/
# (idempotent; everything is downloaded here, at set-up, never at run time):
#   - root/: an aarch64 Debian bookworm root with CPython 3.11 and the libraries it, numpy and
#     ONNX Runtime need, from the pinned arm64 .deb files (apt-get download with a private apt
#     state in apt/: the machine's apt configuration and architectures are left untouched);
#     plus a fake /proc/cpuinfo and /sys CPU tree for one Cortex-A76 core, which qemu's -L
#     prefix shows to the guest: under qemu-user the guest otherwise reads the host's x86
#     files, and ORT's cpuinfo crashes (SIGSEGV) on import;
#   - site/: the aarch64 cp311 wheels of onnxruntime and numpy, at the versions of
#     requirements.txt, unpacked, with bytecode compiled here for them and the standard library;
#   - libmarker.so: two functions executing the counting plugin's markers `hint #0x70` (start)
#     and `hint #0x71` (stop), called through ctypes around the measured call;
#   - libfixedtime.so: preloaded in the guest, stops CLOCK_REALTIME (see below).
# Needs the Debian packages qemu-user and gcc-aarch64-linux-gnu; the counts also need
# build/arm/libcount.so (scripts/setup-arm.sh). Used by bench/ort_aarch64.py.
# About 55 MB downloaded, 260 MB on disk, 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/arm/ort
for tool in qemu-aarch64 aarch64-linux-gnu-gcc apt-get dpkg; do
    command -v "$tool" >/dev/null || { echo "setup-arm-ort: $tool is missing (apt-get install qemu-user gcc-aarch64-linux-gnu)" >&2; exit 1; }
done

# arm64 packages (bookworm main): the interpreter, its standard library, and the shared
# libraries that it, _ctypes, numpy's and ORT's extension modules load.
debs=(
    libc6=2.36-9+deb12u14
    libgcc-s1=12.2.0-14+deb12u1
    libstdc++6=12.2.0-14+deb12u1
    zlib1g=1:1.2.13.dfsg-1
    libexpat1=2.5.0-1+deb12u2
    libffi8=3.4.4-1
    libpython3.11-minimal=3.11.2-6+deb12u8
    libpython3.11-stdlib=3.11.2-6+deb12u8
    python3.11-minimal=3.11.2-6+deb12u8
)
ort_version=$(grep -E '^onnxruntime==' requirements.txt | cut -d= -f3)
numpy_version=$(grep -E '^numpy==' requirements.txt | cut -d= -f3)
stamp="$(sha256sum scripts/setup-arm-ort.sh | cut -c1-16) onnxruntime==$ort_version numpy==$numpy_version"  # this script and the wheels
if [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ] && [ -f "$out/libmarker.so" ] && [ -f "$out/libfixedtime.so" ]; then
    echo "setup-arm-ort: $out is up to date (onnxruntime $ort_version)"
    exit 0
fi
mkdir -p "$out"/{apt/lists/partial,apt/cache/archives/partial,debs,wheels}

# --- arm64 .deb files, through a private apt state (lists in apt/, about 9 MB) ---
apt_opts=(-q -o APT::Architecture=arm64 -o APT::Architectures::=arm64
    -o Dir::Etc::SourceList="$PWD/$out/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists="$PWD/$out/apt/lists" -o Dir::Cache="$PWD/$out/apt/cache"
    -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
    > "$out/apt/sources.list"
deb_file() {  # name=version -> the file name apt-get download gives it
    local name=${1%%=*} version=${1#*=}
    echo "${name}_${version//:/%3a}_arm64.deb"
}
missing=()
for d in "${debs[@]}"; do
    [ -f "$out/debs/$(deb_file "$d")" ] || missing+=("${d%%=*}:arm64=${d#*=}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get "${apt_opts[@]}" update >/dev/null
    (cd "$out/debs" && apt-get "${apt_opts[@]}" download "${missing[@]}") || {
        echo "setup-arm-ort: a pinned arm64 package is no longer in bookworm; versions there now:" >&2
        for d in "${debs[@]}"; do apt-cache "${apt_opts[@]}" madison "${d%%=*}" >&2 || true; done
        echo "update the pins in scripts/setup-arm-ort.sh" >&2
        exit 1
    }
fi
rm -rf "$out/root"
mkdir -p "$out/root"
for d in "${debs[@]}"; do dpkg -x "$out/debs/$(deb_file "$d")" "$out/root"; done

# --- one Cortex-A76 core (MIDR 0x414fd0b1, as qemu's -cpu cortex-a76), seen through -L ---
: > "$out/root/etc/ld.so.cache"  # an empty cache: the guest loader must not read the host's
cpu=$out/root/sys/devices/system/cpu
mkdir -p "$out/root/proc" "$cpu/cpu0/topology" "$cpu/cpu0/cpufreq" "$cpu/cpu0/cache/index2"
printf 'processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' \
    > "$out/root/proc/cpuinfo"
for f in possible present online; do echo 0 > "$cpu/$f"; done
echo 0 > "$cpu/kernel_max"
echo 0 > "$cpu/cpu0/topology/physical_package_id"
echo 0 > "$cpu/cpu0/topology/cluster_cpus_list"
echo 0 > "$cpu/cpu0/topology/core_siblings_list"
echo 0 > "$cpu/cpu0/topology/thread_siblings_list"
echo 2600000 > "$cpu/cpu0/cpufreq/cpuinfo_max_freq"
echo 2600000 > "$cpu/cpu0/cpufreq/cpuinfo_min_freq"
echo 2 > "$cpu/cpu0/cache/index2/level"
echo 512K > "$cpu/cpu0/cache/index2/size"
echo 0 > "$cpu/cpu0/cache/index2/shared_cpu_list"

# --- onnxruntime and numpy: aarch64 cp311 wheels, unpacked into site/ ---
if ! ls "$out"/wheels/onnxruntime-"$ort_version"-*aarch64*.whl "$out"/wheels/numpy-"$numpy_version"-*aarch64*.whl >/dev/null 2>&1; then
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --python-version 3.11 -d "$out/wheels" "onnxruntime==$ort_version" "numpy==$numpy_version"
fi
rm -rf "$out/site"
.venv/bin/python - "$out" "$ort_version" "$numpy_version" <<'PY'
import glob, sys, zipfile
out, ort_version, numpy_version = sys.argv[1:]
for name in (f"onnxruntime-{ort_version}", f"numpy-{numpy_version}"):
    (wheel,) = glob.glob(f"{out}/wheels/{name}-*aarch64*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(f"{out}/site")
PY
# bytecode for the guest's modules, made now (same 3.11 bytecode format): the guest runs with
# -B and never writes any, so every run starts from the same files and counts the same
.venv/bin/python -m compileall -q "$out/site" "$out/root/usr/lib/python3.11" >/dev/null

# --- the markers ---
aarch64-linux-gnu-gcc -shared -fPIC -O2 -o "$out/libmarker.so" -x c - <<'C'
void qc_count_start(void) { __asm__ volatile("hint #0x70" ::: "memory"); }
void qc_count_stop(void) { __asm__ volatile("hint #0x71" ::: "memory"); }
C
# --- a stopped wall clock (LD_PRELOAD in the guest): ORT's Run() times itself with
# system_clock and, when an interval (2 s, doubling) has passed, flushes its run statistics;
# whether that happens inside the counted run depends on how fast qemu went, and moves the
# count by a few hundred instructions. CLOCK_REALTIME stands still; other clocks are real.
aarch64-linux-gnu-gcc -shared -fPIC -O2 -o "$out/libfixedtime.so" -x c - <<'C'
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE) {
        ts->tv_sec = 1700000000;
        ts->tv_nsec = 0;
        return 0;
    }
    return syscall(SYS_clock_gettime, clock, ts);
}
C
echo "$stamp" > "$out/.stamp"
echo "setup-arm-ort: $out (onnxruntime $ort_version, numpy $numpy_version, CPython 3.11 arm64)"
