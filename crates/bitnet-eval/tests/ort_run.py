"""Runs an ONNX model in onnxruntime on the inputs of an .npz file and writes its outputs to
another .npz file. Used by the bitnet-eval tests as the reference runtime.

usage: ort_run.py MODEL INPUTS.npz OUTPUTS.npz
"""
import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    model, inputs, outputs = sys.argv[1:4]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # Exact float math: no fusions that change numerics.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(inputs))
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, feeds)
    np.savez(outputs, **{n: v for n, v in zip(names, values)})


if __name__ == "__main__":
    main()
