#!/usr/bin/env python3
"""Checks the fact `build` relies on (docs/formats.md section 4): ONNX Runtime's 2-bit
MatMulNBits with accuracy_level 4 re-quantizes its input to int8 per block (scale max|a| / 127),
so BitNet's int8 activation codes come out exactly only when every block also holds 127.

    matmulnbits_int8_exact.py [--k 2560] [--n 256] [--block-size 128]

Builds two one-node models on random ternary weights and BitNet-quantized activations (integers
in [-127, 127], 4 tokens): the plain layout (K in blocks of block_size) and the reserved-slot
layout (block_size - 1 weights and a zero weight per block, 127 in that slot of the input, put
there by Pad/Reshape as `build` does). Prints JSON: each layout's largest error against the
exact integer product, relative to the product's largest magnitude; and the reserved-slot layout
with unit block scales (what `build` writes, applying the layer's scale after the node): its
largest absolute difference from the integer product, 0 when the kernel computes it exactly.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def pack(codes: np.ndarray, block: int) -> np.ndarray:
    """MatMulNBits 2-bit B [N, blocks, block / 4] of codes [N, blocks * block]."""
    n = codes.shape[0]
    q = (codes + 2).astype(np.uint8).reshape(n, -1, block // 4, 4)
    return (q[..., 0] | q[..., 1] << 2 | q[..., 2] << 4 | q[..., 3] << 6).astype(np.uint8)


def session(nodes, inits, k_in, n):
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "M", k_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "M", n])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=2560)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=128)
    a = ap.parse_args()
    k, n, bs = a.k, a.n, a.block_size
    rng = np.random.default_rng(0)
    t = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    scale = np.float32(0.37)
    x = rng.normal(size=(1, 4, k)).astype(np.float32)
    s = 127 / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    xq = np.clip(np.round(x * s), -128, 127).astype(np.float32)
    exact = (xq.astype(np.float64) @ t.T.astype(np.float64)) * scale
    out = {}

    # Plain layout: K padded to whole blocks with weight 0.
    nb = -(-k // bs)
    plain = np.zeros((n, nb * bs), np.int8)
    plain[:, :k] = t
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=2, block_size=bs, accuracy_level=4)
    sess = session([node], [numpy_helper.from_array(pack(plain, bs), "B"),
                            numpy_helper.from_array(np.full((n, nb), scale, np.float32), "S")], k, n)
    out["plain"] = float(np.abs(sess.run(None, {"x": xq})[0] - exact).max() / np.abs(exact).max())

    # Reserved slot: block_size - 1 weights per block, 127 in the last slot of the input.
    per = bs - 1
    nb = -(-k // per)
    res = np.zeros((n, nb, bs), np.int8)
    padded = np.zeros((n, nb * per), np.int8)
    padded[:, :k] = t
    res[:, :, :per] = padded.reshape(n, nb, per)
    inits = [
        numpy_helper.from_array(pack(res.reshape(n, nb * bs), bs), "B"),
        numpy_helper.from_array(np.full((n, nb), scale, np.float32), "S"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, nb * per - k], np.int64), "padk"),
        numpy_helper.from_array(np.array([0, 0, nb, per], np.int64), "blocks"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 0, 1], np.int64), "slot"),
        numpy_helper.from_array(np.array(127, np.float32), "v127"),
        numpy_helper.from_array(np.array([0, 0, nb * bs], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "padk"], ["a"]),
        helper.make_node("Reshape", ["a", "blocks"], ["b"]),
        helper.make_node("Pad", ["b", "slot", "v127"], ["c"]),
        helper.make_node("Reshape", ["c", "flat"], ["d"]),
        helper.make_node("MatMulNBits", ["d", "B", "S"], ["y"], domain="com.microsoft",
                         K=nb * bs, N=n, bits=2, block_size=bs, accuracy_level=4),
    ]
    sess = session(nodes, inits, k, n)
    out["reserved_slot"] = float(np.abs(sess.run(None, {"x": xq})[0] - exact).max() / np.abs(exact).max())
    # Unit scales: the integer dot product itself (exact in float32 below 2^24).
    inits[1] = numpy_helper.from_array(np.ones((n, nb), np.float32), "S")
    sess = session(nodes, inits, k, n)
    integer = xq.astype(np.float64) @ t.T.astype(np.float64)
    out["reserved_slot_unit_scale_max_abs"] = float(np.abs(sess.run(None, {"x": xq})[0] - integer).max())
    out.update(k=k, n=n, block_size=bs, onnxruntime=ort.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
