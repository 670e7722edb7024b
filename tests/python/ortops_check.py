#!/usr/bin/env python3
"""The bitnet-ortops custom-op library in the pinned ONNX Runtime.

    ortops_check.py LIBRARY

Registers LIBRARY (`SessionOptions.register_custom_ops_library`) and runs one-node models of
`bitnet.onnx::BitLinear`:
- correct ones over several shapes (K not a multiple of 128, one and several tokens, two
  column groups, both rescale orders, 1 and 2 threads, and `glu = 1`: relu(gate)^2 * up),
  against numpy's float32 evaluation of the stock graph's formula, with weights packed here from the layout's description (not by
  the library's own packer): the outputs must be bit-identical;
- malformed ones (a wrong K, a truncated weight, a missing or bad attribute, a wrong element
  type, a wrong scale count): each must raise an ONNX Runtime error, and the process lives on;
and of `bitnet.onnx::Q8Linear` (the 8-bit head):
- correct ones (K not a multiple of the block, blocks of 32 and 64, one and several tokens,
  codes 0 and 255 included) against a float64 evaluation of its formula (per-block int8
  activations as ONNX Runtime's MatMulNBits quantizes them, exact integer block products):
  within the bound of its float32 roundings, and the same bits with 1 and 2 threads;
- malformed ones, each an ONNX Runtime error;
and of `bitnet.onnx::GroupQueryAttention` against ONNX Runtime's own `GroupQueryAttention` on
the same inputs (decode, first and later prompts, batches, a right-padded prompt, shared and
separate caches, both rotary layouts): outputs within float rounding, the same cache rows, the
same bits with 1 and 2 threads; and malformed ones, each an ONNX Runtime error.
Prints JSON: one record per case; exit 0 when the script ran (the caller judges the records).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

BLOCK = 128


def pack(t: np.ndarray) -> np.ndarray:
    """[N, K] ternary codes to the layout: per block of 128, byte j holds weights j, j+32,
    j+64, j+96 (bits 0-1, 2-3, 4-5, 6-7) as t + 1; padding weights are 0 (code 1)."""
    n, k = t.shape
    kp = -(-k // BLOCK) * BLOCK
    full = np.zeros((n, kp), dtype=np.int64)
    full[:, :k] = t
    codes = (full + 1).reshape(n, kp // BLOCK, 4, 32)
    b = codes[:, :, 0] | (codes[:, :, 1] << 2) | (codes[:, :, 2] << 4) | (codes[:, :, 3] << 6)
    return b.reshape(n, kp // 4).astype(np.uint8)


def reference(x: np.ndarray, t: np.ndarray, c_cols: np.ndarray, divide: bool) -> np.ndarray:
    """The stock graph: Abs, ReduceMax, Max(., 1e-5), 127 / m, x * s, Round, Clip, integer
    product, then y / (s * c) or (y / s) * c, all in float32."""
    x = x.astype(np.float32)
    m = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-5))
    s = (np.float32(127.0) / m).astype(np.float32)
    q = np.clip(np.round(x * s), -128, 127).astype(np.int64)
    y = (q @ t.T.astype(np.int64)).astype(np.float32)
    if divide:
        return y / (s * c_cols)
    return (y / s) * c_cols


def one_node(op, const, attrs, w, c, x_shape, attrs_drop=(), attrs_override=None, w_type=None):
    """A one-node model of `bitnet.onnx::<op>` with inputs X, W (uint8 unless w_type) and the
    float constant `const` (C or S), the attributes overridden or dropped as asked."""
    attrs = dict(attrs)
    attrs.update(attrs_override or {})
    for a in attrs_drop:
        attrs.pop(a)
    node = helper.make_node(op, ["X", "W", const], ["Y"], domain="bitnet.onnx", **attrs)
    w_init = helper.make_tensor("W", w_type or TensorProto.UINT8, w.shape, w.flatten().tolist())
    c_init = helper.make_tensor(const, TensorProto.FLOAT, c.shape, c.flatten().tolist())
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [w_init, c_init],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("bitnet.onnx", 1)])
    m.ir_version = 10
    return m.SerializeToString()


def model(k, n, groups, divide, w, c, x_shape, **kw):
    return one_node("BitLinear", "C", {"K": k, "N": n, "group_sizes": groups, "divide": divide},
                    w, c, x_shape, **kw)


def q8_quantize(x: np.ndarray, b: int):
    """Per block of b along the last axis: scale m / 127, codes round(x * (127 / m)) (0 where
    m = 0), in float32 as ONNX Runtime's int8 MatMulNBits quantizes its input."""
    k = x.shape[-1]
    nb = -(-k // b)
    xp = np.zeros(x.shape[:-1] + (nb * b,), dtype=np.float32)
    xp[..., :k] = x
    xb = xp.reshape(x.shape[:-1] + (nb, b))
    m = np.abs(xb).max(axis=-1).astype(np.float32)
    sa = (m / np.float32(127.0)).astype(np.float32)
    inv = np.where(m != 0, np.float32(127.0) / np.where(m != 0, m, 1), 0).astype(np.float32)
    q = np.clip(np.round(xb * inv[..., None]), -127, 127)
    return q, sa


def q8_reference(x: np.ndarray, w: np.ndarray, s: np.ndarray, b: int):
    """The formula in float64: sum over blocks of (S * sa) * integer block product. Returns
    the values and the bound on the op's float32 rounding: the op accumulates each block's
    product in 8 lanes (lane l: codes 4l..4l+3 of each 32-code chunk), one fused multiply-add
    per block and lane, then sums the lanes, so each of its nb + 3 roundings is at most 2^-24
    of the sum of |S * sa * lane product| over blocks and lanes."""
    q, sa = q8_quantize(x, b)  # [..., nb, b], [..., nb]
    nb = sa.shape[-1]
    wv = w.astype(np.float64) - 128.0  # [n, nb, b]
    qd = q.astype(np.float64).reshape(q.shape[:-1] + (b // 32, 8, 4))
    wd = wv.reshape(wv.shape[:-1] + (b // 32, 8, 4))
    lanes = np.einsum("...kcli,nkcli->...nkl", qd, wd)  # exact integers, [..., n, nb, 8]
    d = s.astype(np.float32)[None] * sa.reshape(-1, 1, nb)  # float32 products
    d = d.reshape(sa.shape[:-1] + s.shape).astype(np.float64)
    terms = d[..., None] * lanes
    bound = (nb + 3) * 2.0 ** -24 * np.abs(terms).sum(axis=(-1, -2))
    return terms.sum(axis=(-1, -2)), bound


def q8_model(k, n, b, w, s, x_shape, **kw):
    return one_node("Q8Linear", "S", {"K": k, "N": n, "block_size": b}, w, s, x_shape, **kw)


def q8_cases(lib, rng):
    cases = []
    for k, lead, n, b in [(70, (1, 1), 9, 32), (2560, (1, 1), 37, 32), (200, (2, 5), 13, 64), (33, (3,), 4, 32)]:
        nb = -(-k // b)
        w = rng.integers(0, 256, size=(n, nb, b)).astype(np.uint8)
        w.reshape(-1)[:2] = [0, 255]
        s = rng.uniform(1e-4, 1e-2, size=(n, nb)).astype(np.float32)
        x = (rng.standard_normal(lead + (k,)) * rng.choice([0.1, 1.0, 30.0])).astype(np.float32)
        m = q8_model(k, n, b, w, s, list(lead) + [k])
        y1 = session(lib, m, 1).run(None, {"X": x})[0]
        y2 = session(lib, m, 2).run(None, {"X": x})[0]
        want, bound = q8_reference(x, w, s, b)
        ok = y1.shape == want.shape
        cases.append({
            "case": f"Q8Linear K={k} lead={lead} N={n} block={b}",
            "kind": "q8",
            "shape_ok": list(y1.shape) == list(lead) + [n],
            "within_rounding": bool(ok and np.all(np.abs(y1 - want) <= bound)),
            "max_diff_over_bound": float((np.abs(y1 - want) / np.maximum(bound, 1e-30)).max()) if ok else None,
            "threads_identical": bool(np.array_equal(y1.view(np.uint32), y2.view(np.uint32))),
        })
    k, n, b = 70, 9, 32
    w = rng.integers(1, 256, size=(n, 3, b)).astype(np.uint8)
    s = np.ones((n, 3), dtype=np.float32)
    good_x = rng.standard_normal((1, 2, k)).astype(np.float32)
    bad = [
        ("Q8Linear wrong K at run", {}, good_x[..., :k - 1].copy()),
        ("Q8Linear truncated weight", dict(w=w[:, :, :-1]), good_x),
        ("Q8Linear weight rows missing", dict(w=w[:-1]), good_x),
        ("Q8Linear missing attribute block_size", dict(attrs_drop=("block_size",)), good_x),
        ("Q8Linear block_size 48", dict(attrs_override={"block_size": 48}), good_x),
        ("Q8Linear int8 weight", dict(w_type=TensorProto.INT8, w=w.astype(np.int8)), good_x),
        ("Q8Linear scale count", dict(s=np.ones((n, 2), dtype=np.float32)), good_x),
    ]
    for name, kw, x in bad:
        args = dict(k=k, n=n, b=b, w=w, s=s, x_shape=["a", "b", None])
        args.update(kw)
        err = None
        try:
            session(lib, q8_model(**args)).run(None, {"X": x})
        except Exception as e:  # ONNX Runtime raises its own exception types
            err = f"{type(e).__name__}: {e}"
        cases.append({"case": name, "kind": "malformed", "error": err})
    return cases


GQA_H, GQA_G, GQA_D = 8, 2, 64


def gqa_model(dom, interleaved=0, attrs_drop=(), rot_rows=512):
    """One GroupQueryAttention node: ONNX Runtime's (com.microsoft) or ours (bitnet.onnx, the
    same inputs without the separate key and value)."""
    ins = ["qkv", "", "", "pk", "pv", "sk", "tl", "cos", "sin"] if dom == "com.microsoft" else \
        ["qkv", "pk", "pv", "sk", "tl", "cos", "sin"]
    attrs = dict(num_heads=GQA_H, kv_num_heads=GQA_G, scale=0.0, rotary_interleaved=interleaved)
    if dom == "com.microsoft":
        attrs.update(do_rotary=1, local_window_size=-1, softcap=0.0)
    for a in attrs_drop:
        attrs.pop(a)
    node = helper.make_node("GroupQueryAttention", ins, ["o", "prk", "prv"], domain=dom, **attrs)
    f = TensorProto.FLOAT
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("qkv", f, ["B", "S", None]),
         helper.make_tensor_value_info("pk", f, None), helper.make_tensor_value_info("pv", f, None),
         helper.make_tensor_value_info("sk", TensorProto.INT32, None),
         helper.make_tensor_value_info("tl", TensorProto.INT32, []),
         helper.make_tensor_value_info("cos", f, [rot_rows, GQA_D // 2]),
         helper.make_tensor_value_info("sin", f, [rot_rows, GQA_D // 2])],
        [helper.make_tensor_value_info(n, f, None) for n in ("o", "prk", "prv")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(dom, 1)]).SerializeToString()


def gqa_run(sess, feeds, shared):
    """Runs one attention node; with `shared`, past and present caches are one bound buffer
    (onnxruntime-genai's past_present_share_buffer). Returns output, keys, values."""
    if not shared:
        return sess.run(None, feeds)
    keep = [feeds["pk"].copy(), feeds["pv"].copy()]
    kv = [ort.OrtValue.ortvalue_from_numpy(x) for x in keep]
    io = sess.io_binding()
    for name, v in feeds.items():
        if name in ("pk", "pv"):
            io.bind_ortvalue_input(name, kv[0 if name == "pk" else 1])
        else:
            io.bind_cpu_input(name, v)
    io.bind_output("o")
    io.bind_ortvalue_output("prk", kv[0])
    io.bind_ortvalue_output("prv", kv[1])
    sess.run_with_iobinding(io)
    return [io.get_outputs()[0].numpy(), keep[0], keep[1]]


def gqa_cases(lib, rng):
    """Ours against ONNX Runtime's GroupQueryAttention on the same inputs: decode, first and later
    prompts, two sequences of different lengths, a right-padded prompt (its padding rows are
    not compared: ONNX Runtime leaves them unspecified), shared and separate caches, both rotary
    layouts; and the same bits with 1 and 2 threads."""
    d = GQA_D
    ang = np.outer(np.arange(512), 1 / 10000 ** (np.arange(d // 2) * 2 / d)).astype(np.float32)
    rot = dict(cos=np.cos(ang), sin=np.sin(ang))
    cases = []
    for name, b, s, sk, total, length, shared, inter, valid in [
        ("decode, shared cache", 1, 1, [199], 200, 256, True, 0, None),
        ("decode, two sequences", 2, 1, [99, 50], 100, 128, True, 0, None),
        ("first prompt", 1, 9, [8], 9, 16, True, 0, None),
        ("first prompt, no past", 1, 9, [8], 9, 0, False, 0, None),
        ("later prompt, interleaved", 1, 5, [40], 41, 64, True, 1, None),
        ("decode, separate caches", 1, 1, [30], 31, 31, False, 0, None),
        ("decode, interleaved", 1, 1, [60], 61, 64, True, 1, None),
        ("right-padded prompt", 2, 9, [8, 5], 9, 16, True, 0, [9, 6]),
    ]:
        feeds = dict(qkv=rng.standard_normal((b, s, (GQA_H + 2 * GQA_G) * d), dtype=np.float32),
                     pk=rng.standard_normal((b, GQA_G, length, d), dtype=np.float32),
                     pv=rng.standard_normal((b, GQA_G, length, d), dtype=np.float32),
                     sk=np.array(sk, np.int32), tl=np.array(total, np.int32), **rot)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        theirs = ort.InferenceSession(gqa_model("com.microsoft", inter), so, providers=["CPUExecutionProvider"])
        want = gqa_run(theirs, feeds, shared)
        got = gqa_run(session(lib, gqa_model("bitnet.onnx", inter), 2), feeds, shared)
        got1 = gqa_run(session(lib, gqa_model("bitnet.onnx", inter), 1), feeds, shared)
        shapes = [list(x.shape) for x in got] == [list(x.shape) for x in want]
        o_diff, k_diff, v_diff = 0.0, 0.0, 0.0
        if shapes:
            for bi in range(b):
                n = valid[bi] if valid else s
                o_diff = max(o_diff, float(np.abs(got[0][bi, :n] - want[0][bi, :n]).max()))
                past = 0 if total == s else sk[bi] + 1 - s
                k_diff = max(k_diff, float(np.abs(got[1][bi, :, :past + n] - want[1][bi, :, :past + n]).max()))
                v_diff = max(v_diff, float(np.abs(got[2][bi, :, :past + n] - want[2][bi, :, :past + n]).max()))
        top = float(np.abs(want[0]).max())
        cases.append({
            "case": f"GroupQueryAttention {name}",
            "kind": "gqa",
            "shapes_ok": shapes,
            # Float rounding: measured at most 6.6e-7 with outputs up to 4; keys 2.4e-7 (ONNX
            # Runtime's rotary rounds once more or less), values copied exactly.
            "output_within_rounding": bool(shapes and o_diff <= 4e-6 * max(top, 1.0)),
            "keys_within_rounding": bool(shapes and k_diff <= 1e-6 * 8),
            "values_identical": bool(shapes and v_diff == 0.0),
            "max_output_diff": o_diff,
            "threads_identical": all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(got, got1)),
        })
    good = dict(qkv=rng.standard_normal((1, 1, (GQA_H + 2 * GQA_G) * d), dtype=np.float32),
                pk=np.zeros((1, GQA_G, 16, d), np.float32), pv=np.zeros((1, GQA_G, 16, d), np.float32),
                sk=np.array([9], np.int32), tl=np.array(10, np.int32), **rot)
    bad = [
        ("GroupQueryAttention query width", dict(qkv=good["qkv"][..., :-8].copy()), {}),
        ("GroupQueryAttention past shapes", dict(pv=np.zeros((1, GQA_G, 15, d), np.float32)), {}),
        ("GroupQueryAttention seqlens_k out of range", dict(sk=np.array([10], np.int32)), {}),
        ("GroupQueryAttention seqlens_k count", dict(sk=np.array([9, 9], np.int32)), {}),
        ("GroupQueryAttention missing attribute num_heads", {}, dict(attrs_drop=("num_heads",))),
        ("GroupQueryAttention rotary rows", dict(cos=rot["cos"][:8].copy(), sin=rot["sin"][:8].copy()), dict(rot_rows=8)),
    ]
    for name, over, model_kw in bad:
        feeds = dict(good)
        feeds.update(over)
        err = None
        try:
            session(lib, gqa_model("bitnet.onnx", **model_kw)).run(None, feeds)
        except Exception as e:  # ONNX Runtime raises its own exception types
            err = f"{type(e).__name__}: {e}"
        cases.append({"case": name, "kind": "malformed", "error": err})
    return cases


def session(lib, m, threads=1):
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    so.intra_op_num_threads = threads
    return ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])


def main() -> int:
    lib = sys.argv[1]
    rng = np.random.default_rng(7)
    cases = []
    for k, lead, groups, divide, threads, glu in [
        (130, (1, 1), [3, 5], 1, 1, 0),
        (130, (2, 7), [3, 5], 0, 2, 0),
        (300, (1, 130), [17, 8, 8], 1, 2, 0),
        (1, (3,), [1], 0, 1, 0),
        (256, (1, 1), [64], 1, 2, 0),
        (2560, (1, 5), [40, 9], 1, 2, 0),
        (300, (1, 9), [37, 37], 1, 2, 1),
    ]:
        n = sum(groups)
        t = rng.integers(-1, 2, size=(n, k))
        c = rng.uniform(0.5, 2.0, size=len(groups)).astype(np.float32)
        c_cols = np.repeat(c, groups).astype(np.float32)
        x = (rng.standard_normal(lead + (k,)) * rng.choice([0.1, 1.0, 30.0])).astype(np.float32)
        if x.size:
            x.reshape(-1)[0] = 0.5  # a half-way product somewhere
        extra = {"glu": glu} if glu else None
        sess = session(lib, model(k, n, groups, divide, pack(t), c, list(lead) + [k], attrs_override=extra),
                       threads)
        y = sess.run(None, {"X": x})[0]
        want = reference(x, t, c_cols, bool(divide))
        if glu:
            # The stock graph's Relu, Mul(r, r), Mul(., up), each in float32.
            r = np.maximum(want[..., :n // 2], np.float32(0))
            want = (r * r) * want[..., n // 2:]
        cases.append({
            "case": f"K={k} lead={lead} groups={groups} divide={divide} threads={threads} glu={glu}",
            "kind": "correct",
            "shape_ok": list(y.shape) == list(lead) + [n // 2 if glu else n],
            "bit_identical": bool(y.shape == want.shape and np.array_equal(y.view(np.uint32), want.view(np.uint32))),
            "max_abs_diff": float(np.abs(y - want).max()) if y.shape == want.shape else None,
        })

    k, groups = 130, [3, 5]
    n = sum(groups)
    t = rng.integers(-1, 2, size=(n, k))
    w = pack(t)
    c = np.ones(len(groups), dtype=np.float32)
    good_x = rng.standard_normal((1, 2, k)).astype(np.float32)
    bad = [
        ("wrong K at run", dict(), lambda: good_x[..., :k - 1].copy(), None),
        ("truncated weight", dict(w=w[:, :-1]), None, None),
        ("weight rows missing", dict(w=w[:-1]), None, None),
        ("missing attribute divide", dict(attrs_drop=("divide",)), None, None),
        ("missing attribute group_sizes", dict(attrs_drop=("group_sizes",)), None, None),
        ("group_sizes not summing to N", dict(attrs_override={"group_sizes": [3, 4]}), None, None),
        ("divide = 2", dict(attrs_override={"divide": 2}), None, None),
        ("K = 0", dict(attrs_override={"K": 0}), None, None),
        ("int8 weight", dict(w_type=TensorProto.INT8, w=w.astype(np.int8)), None, None),
        ("scale count", dict(c=np.ones(3, dtype=np.float32)), None, None),
        ("glu over unequal groups", dict(attrs_override={"glu": 1}), None, None),
        ("glu = 2", dict(attrs_override={"glu": 2}, w=w, c=c), None, None),
    ]
    for name, kw, make_x, _ in bad:
        args = dict(k=k, n=n, groups=groups, divide=1, w=w, c=c, x_shape=["a", "b", None])
        args.update({key: v for key, v in kw.items() if key in ("w", "c", "attrs_drop", "attrs_override", "w_type")})
        x = make_x() if make_x else good_x
        err = None
        try:
            sess = session(lib, model(**args))
            sess.run(None, {"X": x})
        except Exception as e:  # ONNX Runtime raises its own exception types
            err = f"{type(e).__name__}: {e}"
        cases.append({"case": name, "kind": "malformed", "error": err})
    cases += q8_cases(lib, rng)
    cases += gqa_cases(lib, rng)
    json.dump({"ort": ort.__version__, "onnx": onnx.__version__, "cases": cases}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
