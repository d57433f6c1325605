#!/usr/bin/env bash
# Set up the tools the arm_cpu target runs with, in build/arm/ (idempotent):
#   - the aarch64 TVM runtime and tvm-ffi (libtvm_runtime.so, libtvm_ffi.so, headers), from
#     the aarch64 wheels of the pinned apache-tvm / apache-tvm-ffi (downloaded once, at set-up);
#   - runner: targets/arm/runner.cc cross-built for aarch64 (runs an exported library);
#   - libcount.so: targets/arm/count_plugin.c, the QEMU plugin that counts instructions.
# Needs the Debian packages qemu-user, g++-aarch64-linux-gnu and gcc.
# Called by the Makefile's set-up (make test / make demo); tests/test_arm_cpu.py uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/arm
mkdir -p "$out/wheels" "$out/sdk"
for tool in qemu-aarch64 aarch64-linux-gnu-g++ gcc; do
    command -v "$tool" >/dev/null || { echo "setup-arm: $tool is missing (apt-get install qemu-user g++-aarch64-linux-gnu gcc)" >&2; exit 1; }
done
tvm_version=$(grep -E '^apache-tvm==' requirements.txt | cut -d= -f3)
ffi_version=$(grep -E '^apache-tvm-ffi==' requirements.txt | cut -d= -f3)
if ! ls "$out"/wheels/apache_tvm-"$tvm_version"-*aarch64*.whl >/dev/null 2>&1; then
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --python-version 3.11 -d "$out/wheels" "apache-tvm==$tvm_version" "apache-tvm-ffi==$ffi_version"
fi
.venv/bin/python - "$out" <<'PY'
import glob, sys, zipfile
out = sys.argv[1]
for wheel in glob.glob(f"{out}/wheels/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(("lib/libtvm_runtime.so", "lib/libtvm_ffi.so")) or "tvm_ffi/include/" in name:
                z.extract(name, f"{out}/sdk")
PY
cp "$out/sdk/tvm/lib/libtvm_runtime.so" "$out/sdk/tvm_ffi/lib/libtvm_ffi.so" "$out/"
aarch64-linux-gnu-g++ -std=c++17 -O2 -o "$out/runner" targets/arm/runner.cc -I"$out/sdk/tvm_ffi/include" \
    -L"$out" -ltvm_ffi -ltvm_runtime -Wl,-rpath,'$ORIGIN'
gcc -shared -fPIC -O2 -o "$out/libcount.so" targets/arm/count_plugin.c
echo "setup-arm: $out/runner, $out/libcount.so, aarch64 runtime $tvm_version"
