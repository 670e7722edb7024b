#!/usr/bin/env bash
# Builds the Python wheel with maturin and zig (release profile, manylinux2014; its compiled
# dependencies live in the target directory's x86_64-unknown-linux-gnu/ and are reused), installs it into two fresh virtual environments (the wheel alone;
# the wheel with its onnx, hub and genai extras) and runs tests/python/wheel_test.py in each against
# the CLI built from source. Checks the release binaries (cargo's and the wheel's) stay under 40 MB and the wheel under
# 20 MB. Needs .venv with tests/python/requirements-wheel.txt (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
py=$root/.venv/bin/python

wheels=$target/wheels
rm -rf "$wheels"
start=$(date +%s)
# Linked by zig against glibc 2.17 symbols (manylinux2014), whatever this machine's glibc,
# with the `--kernel bitnet` library beside the binary (scripts/build_wheel.sh).
scripts/build_wheel.sh "$wheels"
cargo build --release --locked -p bitnet-cli -p bitnet-ortops --quiet
echo "wheel and release binary built in $(( $(date +%s) - start )) s"
wheel=$(ls "$wheels"/bitnet_onnx-*.whl)
src_bin=$target/release/bitnet-onnx

limit() { # NAME FILE MAX_BYTES
  local size
  size=$(stat -c %s "$2")
  echo "$1: $size bytes ($(basename "$2"))"
  if [ "$size" -ge "$3" ]; then
    echo "$1 is over its limit of $3 bytes" >&2
    exit 1
  fi
}
limit "release binary" "$src_bin" $((40 * 1000 * 1000))
limit "wheel" "$wheel" $((20 * 1000 * 1000))
# The wheel's binary is another link of the same code (zig, no DT_RELR): bound it as well.
unpacked=$("$py" -c 'import sys, zipfile; print(max(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist()))' "$wheel")
echo "wheel's binary: $unpacked bytes unpacked"
if [ "$unpacked" -ge $((40 * 1000 * 1000)) ]; then
  echo "the wheel's binary is over its limit of 40 MB" >&2
  exit 1
fi

for variant in bare full; do
  venv=$target/wheel-venv-$variant
  rm -rf "$venv"
  "$py" -m venv "$venv"
  if [ $variant = bare ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel"
  else
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel[hub,onnx,genai]" \
      -c tests/python/requirements.txt -c tests/python/requirements-wheel.txt
  fi
  # From outside the repository, so that nothing but the installed package is imported.
  (cd "$venv" && PATH="$venv/bin:$PATH" "$venv/bin/python" "$root/tests/python/wheel_test.py" --source-bin "$src_bin")
done
