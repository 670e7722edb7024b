#!/usr/bin/env python3
"""Greedy generation in onnxruntime-genai against transformers' reference.

    genai_generate.py MODEL_DIR EXPECTED_JSON [--threads N]

MODEL_DIR is a folder written by `bitnet-onnx build`; EXPECTED_JSON is one of
samples/checkpoints/expected/<form>.json (samples/generate_checkpoints.py): per prompt, its
text, transformers' input ids, greedy new tokens and the float32 logits of the first
generation step. For each prompt this loads nothing but onnxruntime-genai: it encodes the text
with og.Tokenizer, special tokens on (must give transformers' ids), appends the ids, reads the prompt step's
logits at the last position, then generates as many tokens as transformers did. Prints JSON:
per prompt the tokens, how many leading tokens agree, and the first-step logit differences.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime_genai as og


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("expected")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    expected = json.load(open(args.expected))
    config = og.Config(args.model)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": args.threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    # og's encode leaves BOS out unless asked; transformers' tokenizer call adds it.
    tokenizer.update_options(add_special_tokens="true")
    results = []
    for p in expected["prompts"]:
        ref_ids = list(p["input_ids"])
        og_ids = [int(x) for x in tokenizer.encode(p["text"])]
        want = list(p["new_tokens"])
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ref_ids) + len(want))
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([ref_ids], dtype=np.int32))
        all_rows = np.array(gen.get_output("logits"), dtype=np.float32)[0]
        logits = all_rows[-1]
        ref = np.array(p["first_step_logits"], dtype=np.float32)
        ours = []
        while len(ours) < len(want) and not gen.is_done():
            gen.generate_next_token()
            ours.append(int(gen.get_next_tokens()[0]))
        same = 0
        while same < min(len(ours), len(want)) and ours[same] == want[same]:
            same += 1
        results.append({
            "text": p["text"],
            "tokenizer_ids_match": og_ids == ref_ids,
            "og_ids": og_ids,
            "new_tokens": ours,
            "expected_new_tokens": want,
            "same_prefix": same,
            "first_step_max_abs": float(np.abs(logits - ref).max()),
            "first_step_ref_max_abs": float(np.abs(ref).max()),
            "first_step_top1_same": int(logits.argmax()) == int(ref.argmax()),
            # The prompt step's other positions (0 with `build --logits last`).
            "other_rows_max_abs": float(np.abs(all_rows[:-1]).max()) if len(all_rows) > 1 else 0.0,
            "decoded": tokenizer.decode(np.array(ours, dtype=np.int32)),
        })
    json.dump({"prompts": results}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
