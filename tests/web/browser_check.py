#!/usr/bin/env python3
"""The browser example (examples/browser) in headless Chromium against transformers' tokens.

    browser_check.py MODEL_DIR EXPECTED_JSON [--devices wasm,webgpu] [--chromium PATH]

Serves MODEL_DIR with examples/browser/serve.py (cross-origin isolated, on 127.0.0.1, any
free port), opens the page in Chromium driven by Playwright, and for each device generates
every prompt of EXPECTED_JSON (samples/checkpoints/expected/<form>.json) greedily through the
page's own `generate`, as many tokens as transformers did; judged by tests/web/compare.py.
WebGPU runs on Chromium's software adapter (SwiftShader over Vulkan): correct but slow, no
speed reference. Prints JSON (per device: load time, tokens per second, per prompt the
agreement); exit 0 when every prompt agrees, 1 when one does not, 2 when it could not run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples", "browser"))

from compare import judge  # noqa: E402
import serve  # noqa: E402

# Debian's /usr/bin/chromium is a wrapper script; Playwright needs the binary.
CHROMIUM = "/usr/lib/chromium/chromium"
# Chromium's software WebGPU: SwiftShader's Vulkan under Dawn.
WEBGPU_FLAGS = [
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--use-vulkan=swiftshader",
    "--use-webgpu-adapter=swiftshader",
    "--use-angle=swiftshader",
]


def run_device(pw, url: str, device: str, expected: dict, chromium: str, timeout_s: float) -> dict:
    args = WEBGPU_FLAGS if device == "webgpu" else []
    browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
    try:
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        missing: list[str] = []
        page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url)
        page.wait_for_function("window.bitnet !== undefined")
        info = page.evaluate(
            "async (d) => { const t = await window.bitnet.load(d); return { isolated: window.crossOriginIsolated, "
            "gpu: !!navigator.gpu, loadSeconds: t.loadSeconds }; }",
            device,
        )
        if not info["isolated"]:
            raise RuntimeError("the page is not cross-origin isolated (COOP/COEP headers missing)")
        results, speeds = [], []
        for p in expected["prompts"]:
            r = page.evaluate(
                "async ([d, text, n]) => window.bitnet.generate(d, text, { maxNewTokens: n })",
                [device, p["text"], len(p["new_tokens"])],
            )
            j = judge(p, r["promptIds"], r["newIds"])
            j["tokens_per_second"] = r["tokensPerSecond"]
            j["seconds"] = r["seconds"]
            results.append(j)
            if r["tokensPerSecond"] is not None:
                speeds.append(r["tokensPerSecond"])
        return {
            "device": device,
            "load_seconds": info["loadSeconds"],
            "tokens_per_second_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
            "ok": all(r["ok"] for r in results),
            "prompts": results,
            "errors": [c for c in console if c.startswith(("error", "pageerror"))],
            # Files Transformers.js asked for that the folder does not have (optional ones).
            "not_found": [u.split("/", 3)[-1] for u in missing],
        }
    finally:
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("expected")
    ap.add_argument("--devices", default="wasm,webgpu")
    ap.add_argument("--chromium", default=CHROMIUM)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per page action")
    args = ap.parse_args()
    expected = json.load(open(args.expected))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        print(f"error: playwright is not installed ({e}); pip install -r tests/web/requirements.txt", file=sys.stderr)
        return 2
    if not os.access(args.chromium, os.X_OK):
        print(f"error: no Chromium at {args.chromium} (apt-get install chromium)", file=sys.stderr)
        return 2
    os.environ["BITNET_SERVE_QUIET"] = "1"
    server = serve.make_server(args.model, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    out = {"model": args.model, "chromium": args.chromium, "devices": []}
    try:
        with sync_playwright() as pw:
            for device in args.devices.split(","):
                t0 = time.time()
                d = run_device(pw, url, device, expected, args.chromium, args.timeout)
                d["wall_seconds"] = round(time.time() - t0, 1)
                out["devices"].append(d)
    finally:
        server.shutdown()
    print(json.dumps(out, indent=1))
    return 0 if all(d["ok"] for d in out["devices"]) else 1


if __name__ == "__main__":
    sys.exit(main())
