"""Runs two ONNX models in ONNX Runtime (CPU) on the same seeded inputs and prints, as JSON,
per-output metrics of the second against the first. Used by the Rust tests as an oracle.

usage: ort_compare.py REFERENCE CANDIDATE --level basic|all [--dim NAME=VALUE ...] [--seed N]
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def make_inputs(sess, dims, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else dims.get(d, 1 if "batch" in str(d) else 8) for d in inp.shape]
        if inp.type == "tensor(float)":
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
        elif inp.type == "tensor(float16)":
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float16)
        elif inp.type in ("tensor(int64)", "tensor(int32)"):
            dt = np.int64 if inp.type == "tensor(int64)" else np.int32
            feeds[inp.name] = rng.integers(0, 100, size=shape).astype(dt)
        elif inp.type == "tensor(bool)":
            feeds[inp.name] = np.ones(shape, dtype=bool)
        else:
            raise SystemExit(f"unsupported input type {inp.type} for {inp.name}")
    return feeds


def session(path, level):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--level", choices=["basic", "all"], required=True)
    ap.add_argument("--dim", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    dims = {k: int(v) for k, v in (d.split("=") for d in a.dim)}
    ref = session(a.reference, a.level)
    cand = session(a.candidate, a.level)
    feeds = make_inputs(ref, dims, a.seed)
    ro = ref.run(None, feeds)
    co = cand.run(None, feeds)
    out = []
    for meta, r, c in zip(ref.get_outputs(), ro, co):
        r = r.astype(np.float64).ravel()
        c = c.astype(np.float64).ravel()
        diff = r - c
        nr = np.linalg.norm(r)
        out.append(
            {
                "name": meta.name,
                "finite": bool(np.isfinite(c).all()),
                "max_abs_error": float(np.abs(diff).max()) if diff.size else 0.0,
                "rel_l2": float(np.linalg.norm(diff) / nr) if nr > 0 else float(np.linalg.norm(diff)),
                "cosine": float(r @ c / (nr * np.linalg.norm(c))) if nr > 0 and np.linalg.norm(c) > 0 else 1.0,
            }
        )
    json.dump({"ort_version": ort.__version__, "level": a.level, "outputs": out}, sys.stdout)


if __name__ == "__main__":
    main()
