#!/usr/bin/env python3
"""Where a decode step's time goes in an onnxruntime-genai folder (not a test): ONNX Runtime's
own profiler over a short greedy generation, node time summed per op type over the decode
steps (the prompt step and the first decode step left out), next to the whole `model_run`.

    .venv/bin/python bench/decode_profile.py FOLDER [--threads 2] [--prompt 16] [--new 24]

FOLDER is a `build` output (a `--kernel bitnet` folder registers its library through its own
genai_config.json). The profile JSON is written to a temporary folder and removed.
"""
import argparse
import collections
import gc
import glob
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime_genai as og


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=24)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = og.Config(a.folder)
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": a.threads, "enable_profiling": os.path.join(tmp, "p_")}}}}))
        model = og.Model(cfg)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=a.prompt + a.new)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([list(range(100, 100 + a.prompt))], dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        del gen, params, model  # the profile is written when the session ends
        gc.collect()
        files = sorted(glob.glob(os.path.join(tmp, "p_*.json")))
        if not files:
            print("no profile written", file=sys.stderr)
            return 1
        events = json.load(open(files[-1]))
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][2:]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_op, count = collections.Counter(), collections.Counter()
    for r in runs:
        t0, t1 = r["ts"], r["ts"] + r["dur"]
        for n in nodes:
            if t0 <= n["ts"] <= t1:
                op = n["args"].get("op_name", "?")
                per_op[op] += n["dur"]
                count[op] += 1
    k = max(len(runs), 1)
    run_ms = sum(r["dur"] for r in runs) / k / 1000
    node_ms = sum(per_op.values()) / k / 1000
    print(f"{a.folder}: {k} decode steps, model_run {run_ms:.2f} ms per step, nodes {node_ms:.2f} ms, "
          f"outside nodes {run_ms - node_ms:.2f} ms")
    print()
    print("| op | ms per step | share of node time | nodes per step |")
    print("|---|---|---|---|")
    for op, d in per_op.most_common():
        print(f"| {op} | {d / k / 1000:.3f} | {d / max(sum(per_op.values()), 1):.1%} | {count[op] // k} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
