#!/usr/bin/env bash
# Builds the Python wheel into DIR (default dist/): the bitnet-onnx binary (maturin, `bin`
# bindings) and the `--kernel bitnet` custom-op library, both linked by zig against glibc 2.17
# symbols, so the wheel is manylinux2014 whatever this machine's glibc.
#
#   python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements-wheel.txt
#   scripts/build_wheel.sh dist
#
# The library (crates/bitnet-ortops, a cdylib maturin cannot build beside a binary) is built
# first with cargo and zig as the linker, and put in the wheel's scripts, which pip installs
# beside `bitnet-onnx-bin`, where `build --kernel bitnet` looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-dist}
py=${PYTHON:-$root/.venv/bin/python}
target=${CARGO_TARGET_DIR:-$root/target}
triple=x86_64-unknown-linux-gnu

# zig as the C compiler and linker of the library, for glibc 2.17 (what maturin --zig does).
zigcc=$target/zig/zigcc
mkdir -p "$(dirname "$zigcc")"
printf '#!/bin/sh\nexec "%s" -m ziglang cc -target x86_64-linux-gnu.2.17 "$@"\n' "$py" > "$zigcc"
chmod +x "$zigcc"
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=$zigcc cargo build --release --locked --quiet \
  -p bitnet-ortops --target "$triple"
lib=libbitnet_ortops.so
install -m 755 "$target/$triple/release/$lib" python/wheel-data/scripts/$lib
trap 'rm -f "$root/python/wheel-data/scripts/$lib"' EXIT

PATH="$(dirname "$py"):$PATH" "$(dirname "$py")/maturin" build --release --locked --zig \
  --compatibility manylinux2014 --out "$out" --quiet
