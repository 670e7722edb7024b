#!/usr/bin/env bash
# The browser stage (run by scripts/test.sh): builds the trained sample checkpoint
# `--for web` and checks that Transformers.js generates transformers' greedy tokens with it
# in Node (examples/node, onnxruntime-node) and in headless Chromium (examples/browser,
# onnxruntime-web) on the WASM backend and on software WebGPU.
#
# Installs what it needs, and fails when it cannot: Debian's chromium (as root; apt-get),
# the npm packages pinned by examples/package-lock.json (`npm ci`, with
# ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's install script would download GPU
# binaries from outside the registries; its bundled CPU binaries are what Node uses), and
# Playwright for Python pinned by tests/web/requirements.txt in .venv-web (no browser
# download: it drives /usr/lib/chromium/chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$(date +%s)
say() { echo "test_web: $*"; }

chromium=/usr/lib/chromium/chromium
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" != 0 ]; then
    say "error: $chromium is missing and this is not root: apt-get install chromium" >&2
    exit 1
  fi
  say "installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    say "error: node and npm are needed: apt-get install nodejs npm" >&2
    exit 1
  fi
  say "installing Debian's nodejs and npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

# npm packages, reinstalled only when the lock file changed.
stamp=examples/node_modules/.package-lock.sha
want=$(sha256sum examples/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  (cd examples && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$stamp"
fi

if [ ! -x .venv-web/bin/python ]; then
  python3 -m venv .venv-web
fi
vstamp=.venv-web/.requirements.sha
want=$(sha256sum tests/web/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$vstamp" 2>/dev/null || true)" != "$want" ]; then
  .venv-web/bin/pip install --quiet --disable-pip-version-check -r tests/web/requirements.txt
  echo "$want" > "$vstamp"
fi
t1=$(date +%s)
say "tools ready in $((t1 - t0)) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/bitnet-web.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The debug binary `cargo test --workspace` built (scripts/test.sh runs it first, so this is
# a no-op there). `cargo build` or `cargo run` would not reuse it: without the tests'
# dev-dependencies, shared dependencies get other features and much of the tree is rebuilt.
cargo test --workspace --locked --quiet --no-run
bin=${CARGO_TARGET_DIR:-$root/target}/debug/bitnet-onnx
"$bin" build samples/checkpoints/packed -o "$work/packed" --for web --quiet
expected=samples/checkpoints/expected/packed.json
out=${BITNET_WEB_RESULTS:-$root/target/web-results}
mkdir -p "$out"

status=0
node tests/web/node_check.mjs "$work/packed" "$expected" > "$out/node.json" || status=1
t2=$(date +%s)
python3 - "$out/node.json" "$((t2 - t1))" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
agree = [f"{p['agree']}/{p['of']}" for p in d["prompts"]]
bos = "pipeline text (add_bos_token) " + ("ok" if all(p["ok"] for p in d["pipeline"]) else "FAILED")
print(f"test_web: node: {'ok' if d['ok'] else 'FAILED'} {agree}, {bos}, "
      f"{d['tokens_per_second_median']:.0f} tokens/s, {sys.argv[2]} s")
PY
# Every other family's trained sample, in Node: the folder is the same for every family (its
# config.json carries only the KV-cache shape), and Transformers.js runs whatever graph it holds.
for fam in samples/checkpoints/families/*/; do
  name=$(basename "$fam")
  "$bin" build "$fam" -o "$work/$name" --for web --quiet
  if node tests/web/node_check.mjs "$work/$name" "samples/checkpoints/expected/families/$name.json" \
    > "$out/node-$name.json"; then
    say "node $name: ok"
  else
    say "node $name: FAILED (see $out/node-$name.json)" >&2
    status=1
  fi
done
t2=$(date +%s)
.venv-web/bin/python tests/web/browser_check.py "$work/packed" "$expected" --devices wasm,webgpu \
  > "$out/browser.json" || status=1
t3=$(date +%s)
python3 - "$out/browser.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for dev in d["devices"]:
    agree = [f"{p['agree']}/{p['of']}" for p in dev["prompts"]]
    print(f"test_web: chromium {dev['device']}: {'ok' if dev['ok'] else 'FAILED'} {agree} "
          f"{dev['tokens_per_second_median']:.1f} tokens/s, {dev['wall_seconds']} s")
PY
say "browser checks in $((t3 - t2)) s; web stage $((t3 - t0)) s in all (results in $out)"
if [ "$status" != 0 ]; then
  say "FAILED: see $out/node.json and $out/browser.json" >&2
fi
exit "$status"
