#!/usr/bin/env python3
"""A `build --kernel bitnet` folder against the stock (`--kernel ort`) build of the same
checkpoint, both in the pinned onnxruntime-genai.

    genai_kernel_compare.py STOCK_DIR KERNEL_DIR EXPECTED_JSON [--threads N]

For each prompt of EXPECTED_JSON (samples/checkpoints/expected/<form>.json) both folders
generate greedily as many tokens as transformers did; prints JSON per prompt: both token
lists, whether they are identical, and the prompt step's logits compared (largest absolute
difference, the largest logit, and whether the arrays are bit-identical).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime_genai as og


def load(path: str, threads: int):
    config = og.Config(path)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def run(model, ids: list[int], new: int):
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + new)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([ids], dtype=np.int32))
    logits = np.array(gen.get_output("logits"), dtype=np.float32)[0]
    tokens = []
    while len(tokens) < new and not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    return logits, tokens


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stock")
    ap.add_argument("kernel")
    ap.add_argument("expected")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    expected = json.load(open(args.expected))
    stock, kernel = load(args.stock, args.threads), load(args.kernel, args.threads)
    results = []
    for p in expected["prompts"]:
        ids = list(p["input_ids"])
        new = len(p["new_tokens"])
        ls, ts = run(stock, ids, new)
        lk, tk = run(kernel, ids, new)
        results.append({
            "text": p["text"],
            "stock_tokens": ts,
            "kernel_tokens": tk,
            "tokens_identical": ts == tk and len(ts) == new,
            "logits_max_abs_diff": float(np.abs(ls - lk).max()),
            "logits_max_abs": float(np.abs(ls).max()),
            "logits_bit_identical": bool(np.array_equal(ls.view(np.uint32), lk.view(np.uint32))),
        })
    json.dump({"og": og.__version__ if hasattr(og, "__version__") else None, "prompts": results}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
