"""Benchmark: every ONNX Runtime-loadable bitnet-onnx target against float32, in one run.

Builds a BitNet-shaped model (LAYERS stacked DIMxDIM ternary MatMul layers, weights = a * t so
the conversion is lossless), converts it with the bitnet-onnx binary to each target, and times
ONNX Runtime (CPU, 2 intra-op threads) at M=1 (decode) and M=128 (prefill). Then does the same
for the bundled transformer sample (samples/transformer.onnx, token ids [1, 1] and [1, 128]).
Prints markdown tables of median latencies, speed-up over float32, file size and the
conversion report's bits per weight (codes + scales).

usage: python bench/ort_targets.py BITNET_ONNX_BINARY [--dim 2048] [--layers 8] [--reps 20]
       [--sample samples/transformer.onnx]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def build(path, dim, layers):
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        a = np.float32(0.02 + 0.01 * rng.random())
        t = rng.integers(-1, 2, size=(dim, dim)).astype(np.float32)
        w = numpy_helper.from_array((t * a).astype(np.float32), f"w{i}")
        inits.append(w)
        y = f"h{i}" if i < layers - 1 else "y"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y], name=f"layer{i}"))
        x = y
    g = helper.make_graph(
        nodes,
        "bitnet_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", dim])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench/ort_targets.py")
    m.ir_version = 10
    onnx.save(m, path)


def make_feeds(sess, m):
    """Seeded inputs: floats [m, dim]; token ids [1, m] below the first Gather table's size."""
    rng = np.random.default_rng(1)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.type == "tensor(float)":
            feeds[inp.name] = rng.standard_normal((m, inp.shape[-1])).astype(np.float32)
        elif inp.type == "tensor(int64)":
            feeds[inp.name] = rng.integers(0, VOCAB_FLOOR, size=(1, m)).astype(np.int64)
        else:
            raise SystemExit(f"unsupported input {inp.name}: {inp.type}")
    return feeds


# Token ids are drawn below this (every sample's vocabulary is larger).
VOCAB_FLOOR = 64


def time_model(path, m, reps, extra_config=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    for k, v in (extra_config or {}).items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = make_feeds(sess, m)
    for _ in range(3):
        sess.run(None, feeds)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


VARIANTS = [
    ("float32 MatMul", None, None),
    ("ort (default: MatMulNBits 2-bit, block 128, accuracy_level 4)", ["--target", "ort"], None),
    ("ort, block 32", ["--target", "ort", "--block-size", "32"], None),
    ("ort, block 64", ["--target", "ort", "--block-size", "64"], None),
    ("ort, accuracy_level 0 (exact)", ["--target", "ort", "--accuracy-level", "0"], None),
    ("ort + session option mlas.use_lut_gemm=1", ["--target", "ort"], {"mlas.use_lut_gemm": "1"}),
    ("ort-int8 (INT8 codes, per-token int8 activations, MatMulInteger)", ["--target", "ort-int8"], None),
    ("onnx (INT2 DequantizeLinear, opset 25)", ["--target", "onnx"], None),
    ("qdq-int8 (INT8 DequantizeLinear)", ["--target", "qdq-int8"], None),
    ("tensorrt (INT4 blocks of 128), run in ORT", ["--target", "tensorrt"], None),
]


def run_variants(binary, base, d, reps, ms, extra_flags):
    rows = []
    base_t = {}
    converted = {}
    for i, (label, flags, cfg) in enumerate(VARIANTS):
        bits = None
        if flags is None:
            path = base
        else:
            key = tuple(flags)
            path = os.path.join(d, f"v{i}.onnx")
            if key in converted:
                path, bits = converted[key]
            else:
                report = path + ".json"
                subprocess.run(
                    [binary, "convert", base, "-o", path, "-q", "--report", report] + extra_flags + flags,
                    check=True,
                )
                with open(report) as f:
                    bits = json.load(f)["totals"]["bits_per_weight"]
                converted[key] = (path, bits)
        size = os.path.getsize(path) + sum(
            os.path.getsize(os.path.join(os.path.dirname(path), f))
            for f in os.listdir(os.path.dirname(path))
            if f.startswith(os.path.basename(path) + ".") and f.endswith(".data")
        )
        ts = {}
        for m in ms:
            try:
                ts[m] = time_model(path, m, reps, cfg)
            except Exception as e:  # a config ORT rejects is reported, not hidden
                ts[m] = None
                print(f"{label} M={m}: {e}", file=sys.stderr)
        if flags is None:
            base_t = ts
        rows.append((label, bits, size, ts))
    return rows, base_t


def print_table(rows, base_t, ms, what):
    head = " | ".join(f"{what}={m} ms | {what}={m} vs f32" for m in ms)
    print(f"| variant | bits/weight | file bytes | {head} |")
    print("|---|---|---|" + "---|---|" * len(ms))
    for label, bits, size, ts in rows:
        cells = []
        for m in ms:
            if ts[m] is None:
                cells += ["failed", "-"]
            else:
                cells += [f"{ts[m] * 1e3:.2f}", f"{base_t[m] / ts[m]:.2f}x"]
        b = "32" if bits is None else f"{bits:.2f}"
        print(f"| {label} | {b} | {size:,} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sample", default=os.path.join(os.path.dirname(__file__), "..", "samples", "transformer.onnx"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bitnet-bench-")
    base = os.path.join(d, "float32.onnx")
    build(base, a.dim, a.layers)
    rows, base_t = run_variants(a.binary, base, d, a.reps, (1, 128), ["--quantize-head"])
    print(f"ONNX Runtime {ort.__version__}, {a.layers} x {a.dim}x{a.dim} layers, 2 threads, median of {a.reps}")
    print()
    print_table(rows, base_t, (1, 128), "M")
    if a.sample:
        # The sample with its LM head and embedding float, as this table was first measured
        # (the ort targets now quantize both by default; bench/hf_deploy_speed.py measures
        # that on a real model).
        float_tables = ["--head", "float", "--embeddings", "float"]
        rows, base_t = run_variants(a.binary, a.sample, d, a.reps, (1, 128), float_tables)
        print()
        print(f"{a.sample}: token ids [1, seq], 2 threads, median of {a.reps}")
        print()
        print_table(rows, base_t, (1, 128), "seq")


if __name__ == "__main__":
    main()
