#!/usr/bin/env python3
"""Serves the BitNet browser example on this machine.

    python3 examples/browser/serve.py MODEL_DIR [--port 8000] [--host 127.0.0.1]

MODEL_DIR is a folder from `bitnet-onnx build CHECKPOINT -o MODEL_DIR --for web`. Then open
http://127.0.0.1:8000/. The server maps three paths:

    /                -> examples/browser/ (the page)
    /node_modules/   -> examples/node_modules/ (`npm ci` in examples/ installs it)
    /model/          -> MODEL_DIR

and sends the headers that make the page cross-origin isolated (COOP/COEP), so
onnxruntime-web can use WebAssembly threads. Python's standard library only.
"""
from __future__ import annotations

import argparse
import http.server
import os
import posixpath
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_MODULES = os.path.join(os.path.dirname(HERE), "node_modules")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from three roots, with COOP/COEP and no caching."""

    model_dir = ""
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        for prefix, root in (("/node_modules/", NODE_MODULES), ("/model/", self.model_dir)):
            if path.startswith(prefix):
                return self._under(root, path[len(prefix):])
        return self._under(HERE, path.lstrip("/"))

    @staticmethod
    def _under(root: str, rel: str) -> str:
        # No '..' escapes: every part is a plain name.
        parts = [p for p in posixpath.normpath("/" + rel).split("/") if p not in ("", ".", "..")]
        return os.path.join(root, *parts)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if os.environ.get("BITNET_SERVE_QUIET") != "1":
            super().log_message(format, *args)


def make_server(model_dir: str, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server for MODEL_DIR (port 0: any free port; read `server_address`)."""
    handler = type("BoundHandler", (Handler,), {"model_dir": os.path.abspath(model_dir)})
    return http.server.ThreadingHTTPServer((host, port), handler)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="a folder written by `bitnet-onnx build ... --for web`")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        print(f"error: {args.model_dir} has no config.json: build it with `bitnet-onnx build CHECKPOINT -o DIR --for web`", file=sys.stderr)
        return 2
    if not os.path.isdir(os.path.join(NODE_MODULES, "@huggingface", "transformers")):
        print(f"error: {NODE_MODULES} lacks @huggingface/transformers: run `npm ci` in {os.path.dirname(HERE)}", file=sys.stderr)
        return 2
    server = make_server(args.model_dir, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {os.path.abspath(args.model_dir)} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
