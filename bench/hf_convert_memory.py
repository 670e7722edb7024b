#!/usr/bin/env python3
"""Convert a transformers BitNet export at BitNet-b1.58-2B-4T width and measure time and peak
memory (not a test; nothing it writes is committed).

    .venv-samples/bin/python bench/hf_convert_memory.py target/release/bitnet-onnx \
        [--layers 4] [--form bitlinear] [--workdir DIR] [--targets ort,ort-int8]

Builds, from the same seeded code as samples/generate_hf.py, a `BitNetForCausalLM` with
hidden 2560, FFN 6912, 20 heads / 5 KV heads, vocab 128256 and tied embeddings (the 2B-4T
config) but N decoder layers, writes it as a checkpoint of the chosen form (default: the packed
`bitlinear` form microsoft/bitnet-b1.58-2B-4T ships), loads it with from_pretrained, exports it
with the dynamo exporter (external data) and converts it with each target, printing wall time,
peak RSS (GNU time's %M, /usr/bin/time), the input and output sizes, and the largest
BitNet weight as float32 for scale. Prints the CPU model and flags first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples"))
import generate_hf  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

CONFIG_2B = dict(
    generate_hf.CONFIG,
    vocab_size=128256,
    hidden_size=2560,
    intermediate_size=6912,
    num_attention_heads=20,
    num_key_value_heads=5,
    max_position_embeddings=4096,
    rope_theta=500000.0,
)


def cpu() -> str:
    model, flags = "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    keep = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c", "sse4_2")]
    return f"{model}; {os.cpu_count()} CPUs; {' '.join(keep)}"


def size(path: str) -> int:
    total = os.path.getsize(path)
    if os.path.exists(path + ".data"):
        total += os.path.getsize(path + ".data")
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--form", default="bitlinear", choices=sorted(generate_hf.FORMS))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--targets", default="ort,ort-int8,qdq-int8")
    ap.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.export_only:
        print(f"CPU: {cpu()}")
    config = dict(CONFIG_2B, num_hidden_layers=a.layers)
    work = a.workdir or tempfile.mkdtemp(prefix="hf2b-")
    model_dir = os.path.join(work, f"{a.form}-{a.layers}l")
    path = os.path.join(model_dir, "model.onnx")
    torch.set_num_threads(os.cpu_count() or 1)
    if a.export_only:
        master = generate_hf.master_state(config)
        ids = torch.from_numpy(np.random.default_rng(0).integers(3, 1000, (1, 8)))
        generate_hf.export(a.form, master, ids, out_dir=model_dir, config=config, check=False)
        return 0
    if not os.path.exists(path):
        # In a process of its own: a child forked from this one while it held the model
        # would report this process's memory as its own peak.
        t = time.time()
        subprocess.run(
            [sys.executable, __file__, a.binary, "--export-only", "--layers", str(a.layers),
             "--form", a.form, "--workdir", work],
            check=True,
        )
        print(f"exported {path} in {time.time() - t:.0f} s")
    largest = config["intermediate_size"] * config["hidden_size"] * 4
    print(
        f"model: {a.form}, {a.layers} layers at 2B-4T width; {size(path) / 2**20:.0f} MiB; "
        f"largest BitNet weight as float32 {largest / 2**20:.1f} MiB"
    )
    print("| target | wall s | peak RSS MiB | peak / largest weight | output MiB |")
    print("|---|---|---|---|---|")
    for target in a.targets.split(","):
        out = os.path.join(work, f"out.{target}.onnx")
        t = time.time()
        # Peak RSS from GNU time, a small parent: the rusage a child of this (large) Python
        # process reports can include the parent's pages from before exec.
        with tempfile.TemporaryFile() as err:
            r = subprocess.run(
                ["/usr/bin/time", "-f", "maxrss_kib=%M", a.binary, "convert", path, "-o", out,
                 "--target", target, "-q"],
                stderr=err,
            )
            wall = time.time() - t
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        status = r.returncode
        kib = [ln for ln in message.splitlines() if ln.startswith("maxrss_kib=")]
        peak = int(kib[-1].split("=")[1]) * 1024 if kib else 0
        if status != 0:
            print(f"| {target} | failed: {message[:300]} | | | |")
            continue
        print(
            f"| {target} | {wall:.1f} | {peak / 2**20:.0f} | {peak / largest:.1f}x | "
            f"{size(out) / 2**20:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
