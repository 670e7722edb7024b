#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: creates .venv with the pinned test oracles
# (onnx, onnxruntime, onnxruntime-genai, numpy from tests/python/requirements.txt) and the wheel's
# build tools (tests/python/requirements-wheel.txt), writes the ONNX backend test
# models to target/onnx-backend, checks the generated opset table against the pinned onnx
# schemas, runs every Rust test, then builds and tests the Python wheel (scripts/test_wheel.sh)
# and runs the browser stage (scripts/test_web.sh: Transformers.js in Node and in headless
# Chromium on a `build --for web` folder; installs Chromium, npm and Playwright pins).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Reinstall only when the pinned requirements changed.
stamp=.venv/.requirements.sha
want=$(cat tests/python/requirements.txt tests/python/requirements-wheel.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt \
    -r tests/python/requirements-wheel.txt
  echo "$want" > "$stamp"
fi

# The opset-upgrade table is generated from the pinned onnx package's operator schemas.
.venv/bin/python tools/opset_table.py --check

backend=target/onnx-backend
if [ ! -f "$backend/.complete" ]; then
  rm -rf "$backend"
  .venv/bin/python tests/python/dump_backend_models.py "$backend"
  touch "$backend/.complete"
fi

export BITNET_ONNX_PYTHON="$root/.venv/bin/python"
export BITNET_ONNX_BACKEND_DIR="$root/$backend"
cargo test --workspace --locked "$@"
scripts/test_wheel.sh
scripts/test_web.sh
