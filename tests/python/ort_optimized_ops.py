"""Prints the op histogram of the graph ONNX Runtime (CPU) runs for MODEL after its
optimisations at --level basic|extended|all, as JSON {op_type: count}: which nodes it fused.

usage: ort_optimized_ops.py MODEL --level all
"""

import argparse
import collections
import json
import os
import sys
import tempfile

import onnx
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--level", choices=["basic", "extended", "all"], required=True)
    a = ap.parse_args()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[a.level]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "optimized.onnx")
        opts.optimized_model_filepath = out
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
        m = onnx.load(out, load_external_data=False)
    json.dump(dict(collections.Counter(n.op_type for n in m.graph.node)), sys.stdout)
    print()


if __name__ == "__main__":
    main()
