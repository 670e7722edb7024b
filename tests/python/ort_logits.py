"""Runs one ONNX model in ONNX Runtime (CPU) on inputs stored as TensorProto files and
compares its first output with a stored reference (transformers' logits for the Hugging Face
samples). Prints JSON: relative L2 error, max abs error and next-token top-1 agreement.

With --last-position the model's output holds the last position only (`convert --logits
last`): the reference is cut to its last position along axis -2 first.

usage: ort_logits.py MODEL --input NAME=FILE.pb [...] --reference FILE.pb --level basic|all
       [--last-position]
"""

import argparse
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--input", action="append", default=[])
    ap.add_argument("--reference", required=True)
    ap.add_argument("--level", choices=["basic", "all"], required=True)
    ap.add_argument("--last-position", action="store_true")
    a = ap.parse_args()
    feeds = {}
    for spec in a.input:
        name, path = spec.split("=", 1)
        feeds[name] = numpy_helper.to_array(onnx.load_tensor(path))
    ref = numpy_helper.to_array(onnx.load_tensor(a.reference)).astype(np.float64)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[a.level]
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0].astype(np.float64)
    if a.last_position:
        ref = ref[..., -1:, :]
    if got.shape != ref.shape:
        raise SystemExit(f"output shape {got.shape}, reference {ref.shape}")
    diff = got - ref
    json.dump(
        {
            "ort_version": ort.__version__,
            "level": a.level,
            "finite": bool(np.isfinite(got).all()),
            "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
            "max_abs_error": float(np.abs(diff).max()),
            "top1": float((got.argmax(-1) == ref.argmax(-1)).mean()),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
