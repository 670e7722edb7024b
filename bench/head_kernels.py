#!/usr/bin/env python3
"""The LM head alone at BitNet-b1.58-2B-4T width (128256 x 2560) in ONNX Runtime (not a test;
nothing it writes is kept): float32 MatMul against MatMulNBits with 4- and 8-bit codes in each
block size of --blocks (accuracy_level 4, as `--head int4|int8` writes it), at 1 and 128
positions, --threads intra-op threads (default 2), minimum of --reps runs after a warm-up, the
float32 run repeated last so a machine whose load changed shows it. Seeded random weights. Prints each layout's
bits per weight in the file (codes + one float32 scale per block) and its speed as a ratio of
float32's in the same run. With --library (the bitnet-ortops custom-op library, as `build
--kernel bitnet` puts it in a folder), each 8-bit layout is also run as `bitnet.onnx::Q8Linear`
on the same codes and scales, the head `build --kernel bitnet` writes.

    .venv/bin/python bench/head_kernels.py [--reps 10] [--blocks 32,64,128,256] [--threads 2]
        [--library target/release/libbitnet_ortops.so]
"""
import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

V, H = 128256, 2560


def cpu() -> str:
    model, flags = "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    keep = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    return f"{model}; {os.cpu_count()} CPUs; {' '.join(keep)}"


def blocked(w, bits, bs):
    n, k = w.shape
    wb = w.reshape(n, k // bs, bs)
    half = 1 << (bits - 1)
    m = np.take_along_axis(wb, np.abs(wb).argmax(-1)[..., None], -1)[..., 0]
    d = -m / half
    q = np.clip(np.round(wb / np.where(d == 0, 1, d)[..., None]), -half, half - 1).astype(np.int32) + half
    if bits == 4:
        q = q.reshape(n, k // bs, bs // 2, 2)
        q = q[..., 0] | (q[..., 1] << 4)
    return q.astype(np.uint8), d.astype(np.float32)


def model(nodes, inits):
    g = h.make_graph(nodes, "head", [h.make_tensor_value_info("x", T.FLOAT, [1, None, H])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1),
                                          h.make_opsetid("bitnet.onnx", 1)])


def time_ms(m, x, reps, threads, library=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if library:
        so.register_custom_ops_library(library)
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s.run(None, {"x": x})
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        s.run(None, {"x": x})
        t.append(time.perf_counter() - t0)
    return min(t) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--blocks", default="32,64,128,256")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every session")
    ap.add_argument("--library", help="bitnet-ortops library: also time bitnet.onnx::Q8Linear")
    a = ap.parse_args()
    blocks = [int(b) for b in a.blocks.split(",")]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((V, H), dtype=np.float32) * 0.02
    xs = {p: rng.standard_normal((1, p, H), dtype=np.float32) for p in (1, 128)}
    print(f"CPU: {cpu()}; ONNX Runtime {ort.__version__}; {a.threads} threads; min of {a.reps}")
    print()
    print("| head | bits/weight in file | 1 position ms | x float32 | 128 positions ms | x float32 |")
    print("|---|---|---|---|---|---|")
    f32 = model([h.make_node("MatMul", ["x", "W"], ["y"])], [nh.from_array(np.ascontiguousarray(w.T), "W")])
    reps128 = max(2, a.reps // 3)
    base = (time_ms(f32, xs[1], a.reps, a.threads), time_ms(f32, xs[128], reps128, a.threads))
    print(f"| float32 MatMul | 32 | {base[0]:.1f} | 1.00 | {base[1]:.1f} | 1.00 |", flush=True)
    for bits in (4, 8):
        for bs in blocks:
            b, d = blocked(w, bits, bs)
            node = h.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft",
                               K=H, N=V, bits=bits, block_size=bs, accuracy_level=4)
            m = model([node], [nh.from_array(b, "B"), nh.from_array(d.reshape(-1), "S")])
            t1, t128 = time_ms(m, xs[1], a.reps, a.threads), time_ms(m, xs[128], reps128, a.threads)
            bpw = bits + 32 / bs
            print(f"| MatMulNBits {bits}-bit, blocks of {bs} | {bpw:.2f} | {t1:.1f} | "
                  f"{base[0] / t1:.2f} | {t128:.1f} | {base[1] / t128:.2f} |", flush=True)
            if bits == 8 and a.library and bs % 32 == 0:
                node = h.make_node("Q8Linear", ["x", "B", "S"], ["y"], domain="bitnet.onnx",
                                   K=H, N=V, block_size=bs)
                m = model([node], [nh.from_array(b, "B"), nh.from_array(d.reshape(V, -1), "S")])
                t1 = time_ms(m, xs[1], a.reps, a.threads, a.library)
                t128 = time_ms(m, xs[128], reps128, a.threads, a.library)
                print(f"| bitnet.onnx Q8Linear, blocks of {bs} | {bpw:.2f} | {t1:.1f} | "
                      f"{base[0] / t1:.2f} | {t128:.1f} | {base[1] / t128:.2f} |", flush=True)
            del m, b, d
    again = time_ms(f32, xs[1], a.reps, a.threads)
    print(f"\nfloat32 at 1 position again, after the others: {again:.1f} ms "
          f"(first: {base[0]:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
