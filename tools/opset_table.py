#!/usr/bin/env python3
"""Write crates/bitnet-quant/src/opsets/table.rs: how every default-domain ONNX op changed
from each version to the next, read from the operator schemas of the pinned `onnx` package.

Usage (from the repository root, with the pinned onnx of tests/python/requirements.txt):

    python tools/opset_table.py          # rewrite the table
    python tools/opset_table.py --check  # exit 1 if the committed table is not what it writes

Raising a model's opset keeps a node's meaning only when every version of its op between the
two opsets keeps it. Each version is compared with the one before:

- **Widened**: the same inputs, outputs and attributes (names may differ), each accepting at
  least the types it accepted before, and the same documentation. Nothing a valid old model
  can contain means something else. Decided from the schemas alone.
- Anything else (an attribute or input added, a default changed, a type dropped, an op
  deprecated, or only the documentation changed, which is how pure semantic changes such as
  GroupNormalization-21 show up) is **Changed**, with what changed, unless it is in REVIEWED
  below: a version read by hand in the ONNX changelog and found to keep the meaning of every
  model valid at the previous version (**Kept**, with the reason), or one whose new form the
  converter writes itself (**Rewrite**, for the `axes` attributes that became inputs).

The converter raises the opset only when no Changed version lies between the model's opset
and the one it needs; otherwise it refuses, naming the node, the op and the change.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict

import onnx
from onnx import defs, helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "bitnet-quant", "src", "opsets", "table.rs")

# (op, version) -> (verdict, reason). Only versions the schemas cannot decide on their own.
REVIEWED: dict[tuple[str, int], tuple[str, str]] = {
    ("Abs", 13): ("kept", "bfloat16 added"),
    ("Add", 14): ("kept", "8- and 16-bit integer types added"),
    ("Sub", 14): ("kept", "8- and 16-bit integer types added"),
    ("Mul", 14): ("kept", "8- and 16-bit integer types added"),
    ("Div", 14): ("kept", "8- and 16-bit integer types added"),
    ("Ceil", 13): ("kept", "bfloat16 added"),
    ("Floor", 13): ("kept", "bfloat16 added"),
    ("Clip", 13): ("kept", "bfloat16 added"),
    ("ArgMax", 11): ("kept", "negative axis accepted"),
    ("ArgMin", 11): ("kept", "negative axis accepted"),
    ("ArgMax", 12): ("kept", "select_last_index added, default 0 = the first index as before"),
    ("ArgMin", 12): ("kept", "select_last_index added, default 0 = the first index as before"),
    ("ArgMax", 13): ("kept", "bfloat16 added"),
    ("ArgMin", 13): ("kept", "bfloat16 added"),
    ("AveragePool", 10): ("kept", "ceil_mode added, default 0 = floor as before"),
    ("AveragePool", 11): ("kept", "pads clarified for auto_pad; explicit pads unchanged"),
    ("AveragePool", 19): ("kept", "dilations added, default 1 = as before"),
    ("AveragePool", 22): ("kept", "bfloat16 added"),
    ("MaxPool", 10): ("kept", "ceil_mode and dilations added, defaults as before"),
    ("MaxPool", 12): ("kept", "int8 and uint8 added"),
    ("MaxPool", 22): ("kept", "bfloat16 added"),
    ("BatchNormalization", 14): (
        "kept",
        "training_mode added, default 0 = inference as before; the training-only outputs renamed",
    ),
    ("BatchNormalization", 15): ("kept", "scale/bias and mean/var types split (widened)"),
    ("Cast", 9): ("kept", "string casts added"),
    ("Cast", 13): ("kept", "bfloat16 added"),
    ("Cast", 19): ("kept", "saturate added: applies only to float8 targets, new in 19"),
    ("Cast", 24): ("kept", "round_mode added: applies only to float8e8m0, new in 24"),
    ("CastLike", 19): ("kept", "saturate added: applies only to float8 targets, new in 19"),
    ("CastLike", 24): ("kept", "round_mode added: applies only to float8e8m0, new in 24"),
    ("Concat", 11): ("kept", "negative axis accepted"),
    ("Constant", 11): ("kept", "sparse_value added as an alternative to value"),
    ("Constant", 12): ("kept", "value_float/int/string(s) added as alternatives to value"),
    ("DequantizeLinear", 13): ("kept", "axis added: only read for a 1-D scale, new in 13"),
    ("DequantizeLinear", 19): ("kept", "float16/bfloat16 scales and float8 codes added"),
    ("DequantizeLinear", 21): ("kept", "block_size added, default 0 = not blocked"),
    ("DequantizeLinear", 23): ("kept", "output_dtype added, default 0 = the scale's type"),
    ("QuantizeLinear", 13): ("kept", "axis added: only read for a 1-D scale, new in 13"),
    ("QuantizeLinear", 19): (
        "kept",
        "saturate added (float8 only); y_scale now has x's type, which float inputs already had",
    ),
    ("QuantizeLinear", 21): ("kept", "block_size and output_dtype added, defaults as before"),
    ("QuantizeLinear", 23): ("kept", "precision added, default 0 = as before; types split"),
    ("QuantizeLinear", 25): ("kept", "int2/uint2 added"),
    ("Erf", 13): ("kept", "bfloat16 added; integer inputs dropped (exporters feed floats)"),
    ("Gather", 11): ("kept", "negative indices accepted"),
    ("Gather", 13): ("kept", "bfloat16 added"),
    ("GatherElements", 13): ("kept", "bfloat16 added"),
    ("GatherND", 12): ("kept", "batch_dims added, default 0 = as before"),
    ("GatherND", 13): ("kept", "bfloat16 added"),
    ("ScatterND", 16): ("kept", "reduction added, default none = as before"),
    ("ScatterND", 18): ("kept", "reduction max and min added"),
    ("ScatterElements", 16): ("kept", "reduction added, default none = as before"),
    ("ScatterElements", 18): ("kept", "reduction max and min added"),
    ("Gemm", 11): ("kept", "C made optional"),
    ("Gemm", 13): ("kept", "bfloat16 added"),
    ("Loop", 13): ("kept", "sequence types added for loop-carried values"),
    ("Loop", 16): ("kept", "optional types added"),
    ("Pad", 13): ("kept", "bfloat16 added"),
    ("Pad", 18): ("kept", "axes input added, absent = every axis as before"),
    ("Pad", 19): ("kept", "wrap mode added"),
    ("ReduceMax", 20): ("kept", "bool added"),
    ("ReduceMin", 20): ("kept", "bool added"),
    ("Reshape", 14): ("kept", "allowzero added, default 0 = a 0 copies the input dim as before"),
    ("Shape", 15): ("kept", "start and end added, defaults = the whole shape as before"),
    ("Slice", 11): ("kept", "negative axes accepted"),
    ("Slice", 13): ("kept", "bfloat16 added"),
    ("Split", 18): ("kept", "num_outputs added, absent = split as before"),
    ("TopK", 11): ("kept", "largest and sorted added, defaults 1 = as before; negative axis"),
    ("Softmax", 11): ("kept", "negative axis accepted"),
    ("LogSoftmax", 11): ("kept", "negative axis accepted"),
    ("Mod", 13): ("kept", "bfloat16 added"),
    ("Unsqueeze", 11): ("kept", "negative axes accepted"),
    ("Squeeze", 13): ("rewrite", "axes attribute became an input"),
    ("Unsqueeze", 13): ("rewrite", "axes attribute became an input"),
    ("ReduceSum", 13): ("rewrite", "axes attribute became an input"),
    ("ReduceMean", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceMax", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceMin", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceProd", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceL1", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceL2", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceLogSum", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceLogSumExp", 18): ("rewrite", "axes attribute became an input"),
    ("ReduceSumSquare", 18): ("rewrite", "axes attribute became an input"),
}


def type_sets(schema):
    return {t.type_param_str: frozenset(t.allowed_type_strs) for t in schema.type_constraints}


def formals(schema, which):
    """(option, accepted types) of each input or output."""
    tc = type_sets(schema)
    out = []
    for f in getattr(schema, which):
        types = tc.get(f.type_str, frozenset([f.type_str]))
        out.append((int(f.option), types))
    return out


def attributes(schema):
    out = {}
    for a in schema.attributes.values():
        default = helper.get_attribute_value(a.default_value) if a.default_value.name else None
        out[a.name] = (int(a.type), bool(a.required), repr(default))
    return out


def compare(prev, cur) -> str | None:
    """None when `cur` only widened `prev`, else what changed."""
    what = []
    if cur.deprecated:
        what.append("deprecated")
    for which in ("inputs", "outputs"):
        a, b = formals(prev, which), formals(cur, which)
        if len(a) != len(b):
            what.append(f"{which} {len(a)} -> {len(b)}")
            continue
        for i, ((oa, ta), (ob, tb)) in enumerate(zip(a, b)):
            if oa != ob:
                what.append(f"{which[:-1]} {i} option changed")
            if not ta <= tb:
                what.append(f"{which[:-1]} {i} dropped {', '.join(sorted(ta - tb))}")
    aa, ab = attributes(prev), attributes(cur)
    for name in sorted(set(aa) | set(ab)):
        if name not in ab:
            what.append(f"attribute {name} removed")
        elif name not in aa:
            what.append(f"attribute {name} added")
        elif aa[name] != ab[name]:
            what.append(f"attribute {name} changed")
    if not what and prev.doc != cur.doc:
        what.append("documentation changed")
    return "; ".join(what) or None


def rust_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render() -> str:
    history = defaultdict(list)
    for s in defs.get_all_schemas_with_history():
        if s.domain == "":
            history[s.name].append(s)
    used = set()
    lines = [
        "// @generated by tools/opset_table.py from the operator schemas of onnx "
        f"{onnx.__version__}; do not edit.",
        "",
        "use super::Change::{Changed, Kept, Rewrite, Widened};",
        "use super::OpHistory;",
        "",
        "/// Every default-domain op: the version it was introduced at, then each later version",
        "/// with how it changed from the one before.",
        "pub const OPS: &[OpHistory] = &[",
    ]
    for op in sorted(history):
        versions = sorted(history[op], key=lambda s: s.since_version)
        entries = []
        for prev, cur in zip(versions, versions[1:]):
            v = cur.since_version
            change = compare(prev, cur)
            if change is None:
                entries.append(f"({v}, Widened)")
                continue
            review = REVIEWED.get((op, v))
            if review is None:
                entries.append(f"({v}, Changed({rust_str(change)}))")
                continue
            used.add((op, v))
            verdict, reason = review
            kind = {"kept": "Kept", "rewrite": "Rewrite"}[verdict]
            entries.append(f"({v}, {kind}({rust_str(reason)}))")
        body = ", ".join(entries)
        lines.append(f"    ({rust_str(op)}, {versions[0].since_version}, &[{body}]),")
    lines.append("];")
    stale = sorted(set(REVIEWED) - used)
    if stale:
        raise SystemExit(f"reviewed versions the schemas decide on their own or do not have: {stale}")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        with open(OUT) as f:
            if f.read() != text:
                print(f"{OUT} is stale: run python tools/opset_table.py", file=sys.stderr)
                return 1
        return 0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
