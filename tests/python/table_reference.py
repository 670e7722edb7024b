"""Checks the 4/8-bit embedding and head tables of a converted model in ONNX Runtime against an
independent reading of their layout.

The tables listed in the converted model's `bitnet_onnx.tables` metadata are unpacked here with
numpy from the layout ONNX Runtime documents (MatMulNBits: B uint8 [N, blocks, block_size *
bits / 8], codes along K low bits first, value (code - 2^(bits-1)) * scale[n, block], K padded;
GatherBlockQuantized: uint8 data whose last axis holds 8 / bits codes per byte, low bits first,
same zero point, scales [rows, blocks] or [rows, blocks, 1]). The original model is then given
those dequantized tables (the head's MatMul reads the [K, N] weight directly, the embedding's
Gather the [V, H] table) and both models run in ONNX Runtime (CPU) on the same inputs.

Per table: an embedding's lookup output must equal the reference's (`max_abs`); a head's
MatMulNBits node is run alone on seeded random activations against `A @ W` on the unpacked
weight (`rel_l2`: float rounding at accuracy_level 0, int8 activations at 4), so a BitNet
model's own rounding flips downstream cannot hide or fake a layout error. Also prints each
table's error against the original float values and the whole model's first output against
the reference (relative L2 error, top-1 agreement).

usage: table_reference.py ORIGINAL CONVERTED --input NAME=FILE.pb [...] --level basic|all
"""

import argparse
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def codes(packed, bits, count):
    """The first `count` codes of each row of `packed` (uint8 [rows, bytes])."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    c = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return c.reshape(packed.shape[0], -1)[:, :count].astype(np.int32)


def matmulnbits_weight(node, inits):
    k, n, bits, bs = (attr(node, x) for x in ("K", "N", "bits", "block_size"))
    b = inits[node.input[1]]
    s = inits[node.input[2]].astype(np.float32).reshape(n, -1)
    blocks = -(-k // bs)
    q = codes(b.reshape(n, -1), bits, blocks * bs) - (1 << (bits - 1))
    w = (q.reshape(n, blocks, bs) * s[:, :, None]).reshape(n, blocks * bs)[:, :k]
    return np.ascontiguousarray(w.T)  # [K, N]


def gbq_table(node, inits):
    bits, bs = attr(node, "bits", 4), attr(node, "block_size", 128)
    assert attr(node, "gather_axis", 0) == 0
    data = inits[node.input[0]]
    rows = data.shape[0]
    width = data.shape[-1] * (8 // bits) * int(np.prod(data.shape[1:-1]))
    s = inits[node.input[2]].astype(np.float32).reshape(rows, -1)
    q = codes(data.reshape(rows, -1), bits, width) - (1 << (bits - 1))
    blocks = s.shape[1]
    return (q.reshape(rows, blocks, -1) * s[:, :, None]).reshape(rows, width)


def session(model, level):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def head_alone(node, conv, w, level):
    """The converted head node alone against A @ W on seeded activations."""
    names = set(node.input)
    inits = [t for t in conv.graph.initializer if t.name in names]
    k = attr(node, "K")
    g = onnx.helper.make_graph(
        [node], "head",
        [onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, [1, 4, k])],
        [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
        inits)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                 onnx.helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = conv.ir_version
    a = np.random.default_rng(0).standard_normal((1, 4, k)).astype(np.float32)
    got = session(m, level).run(None, {node.input[0]: a})[0].astype(np.float64)
    want = a.astype(np.float64) @ w.astype(np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("original")
    ap.add_argument("converted")
    ap.add_argument("--input", action="append", default=[])
    ap.add_argument("--level", choices=["basic", "all"], required=True)
    a = ap.parse_args()
    feeds = {}
    for spec in a.input:
        name, path = spec.split("=", 1)
        feeds[name] = numpy_helper.to_array(onnx.load_tensor(path))
    conv = onnx.load(a.converted)
    orig = onnx.load(a.original)
    meta = {p.key: p.value for p in conv.metadata_props}
    tables = json.loads(meta["bitnet_onnx.tables"])
    cinits = {t.name: numpy_helper.to_array(t) for t in conv.graph.initializer}
    oinits = {t.name: numpy_helper.to_array(t) for t in orig.graph.initializer}
    cprod = {o: n for n in conv.graph.node for o in n.output}
    oprod = {o: n for n in orig.graph.node for o in n.output}
    report = []
    for t in tables:
        node = cprod[t["output"]]
        if node.op_type == "Reshape":
            node = cprod[node.input[0]]
        onode = oprod[t["output"]]
        if t["role"] == "head":
            assert node.op_type == "MatMulNBits", node.op_type
            w = matmulnbits_weight(node, cinits)
            src = onode.input[1]
            if src in oinits:
                ref = oinits[src]
            else:
                ref = oinits[oprod[src].input[0]].T
            slot = 1
        else:
            assert node.op_type == "GatherBlockQuantized", node.op_type
            w = gbq_table(node, cinits)
            ref = oinits[onode.input[0]]
            slot = 0
        err = float(np.linalg.norm(w - ref) / max(np.linalg.norm(ref), 1e-30))
        entry = {"role": t["role"], "bits": t["bits"], "rel_error": err,
                 "metadata_rel_error": t["rel_error"], "output": t["output"]}
        if t["role"] == "head":
            entry["alone_rel_l2"] = head_alone(node, conv, w, a.level)
        report.append(entry)
        name = f"{t['weight']}.dequantized_{t['role']}"
        orig.graph.initializer.append(numpy_helper.from_array(w.astype(ref.dtype), name))
        onode.input[slot] = name
    # Embedding lookups, compared where they are computed.
    for e in report:
        if e["role"] == "embedding":
            for m in (orig, conv):
                if e["output"] not in {o.name for o in m.graph.output}:
                    m.graph.output.append(onnx.ValueInfoProto(name=e["output"]))
    first = orig.graph.output[0].name
    so, sc = session(orig, a.level), session(conv, a.level)
    o = dict(zip([x.name for x in so.get_outputs()], so.run(None, feeds)))
    c = dict(zip([x.name for x in sc.get_outputs()], sc.run(None, feeds)))
    for e in report:
        if e["role"] == "embedding":
            e["max_abs"] = float(np.abs(o[e["output"]].astype(np.float64) - c[e["output"]]).max())
    want, got = o[first].astype(np.float64), c[first].astype(np.float64)
    top1 = float(np.mean(want.argmax(-1) == got.argmax(-1)))
    rel = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
    json.dump({"ort_version": ort.__version__, "rel_l2": rel, "top1": top1, "tables": report},
              sys.stdout)
    print()


if __name__ == "__main__":
    main()
