"""Benchmark: every ONNX Runtime-loadable bitnet-onnx target against float32, in one run.

Builds a BitNet-shaped model (LAYERS stacked DIMxDIM ternary MatMul layers, weights = a * t so
the conversion is lossless), converts it with the bitnet-onnx binary to each target, and times
ONNX Runtime (CPU, 2 intra-op threads) at M=1 (decode) and M=128 (prefill). Prints a markdown
table of median latencies and speed-up over float32.

usage: python bench/ort_targets.py BITNET_ONNX_BINARY [--dim 2048] [--layers 8] [--reps 20]
"""

import argparse
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


def time_model(path, m, dim, reps, extra_config=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    for k, v in (extra_config or {}).items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((m, dim)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"x": x})
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bitnet-bench-")
    base = os.path.join(d, "float32.onnx")
    build(base, a.dim, a.layers)
    variants = [
        ("float32 MatMul", base, [], None),
        ("ort (default: MatMulNBits 2-bit, block 128, accuracy_level 4)", "ort", ["--target", "ort"], None),
        ("ort, block 32", "ort32", ["--target", "ort", "--block-size", "32"], None),
        ("ort, block 64", "ort64", ["--target", "ort", "--block-size", "64"], None),
        ("ort, accuracy_level 0 (exact)", "ort0", ["--target", "ort", "--accuracy-level", "0"], None),
        ("ort + session option mlas.use_lut_gemm=1", "ort", None, {"mlas.use_lut_gemm": "1"}),
        ("onnx (INT2 DequantizeLinear, opset 25)", "onnx", ["--target", "onnx"], None),
        ("qdq-int8 (INT8 DequantizeLinear)", "qdq", ["--target", "qdq-int8"], None),
        ("tensorrt (INT4 blocks of 128), run in ORT", "trt", ["--target", "tensorrt"], None),
    ]
    rows = []
    base_t = {}
    for label, name, flags, cfg in variants:
        path = name if name == base else os.path.join(d, name + ".onnx")
        if flags:
            subprocess.run([a.binary, "convert", base, "-o", path, "--quantize-head", "-q"] + flags, check=True)
        size = os.path.getsize(path)
        ts = {}
        for m in (1, 128):
            try:
                ts[m] = time_model(path, m, a.dim, a.reps, cfg)
            except Exception as e:  # a config ORT rejects is reported, not hidden
                ts[m] = None
                print(f"{label} M={m}: {e}", file=sys.stderr)
        if name == base:
            base_t = ts
        rows.append((label, size, ts))
    print(f"ONNX Runtime {ort.__version__}, {a.layers} x {a.dim}x{a.dim} layers, 2 threads, median of {a.reps}")
    print()
    print("| variant | file bytes | M=1 ms | M=1 vs f32 | M=128 ms | M=128 vs f32 |")
    print("|---|---|---|---|---|---|")
    for label, size, ts in rows:
        cells = []
        for m in (1, 128):
            if ts[m] is None:
                cells += ["failed", "-"]
            else:
                cells += [f"{ts[m] * 1e3:.2f}", f"{base_t[m] / ts[m]:.2f}x"]
        print(f"| {label} | {size:,} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")


if __name__ == "__main__":
    main()
