#!/usr/bin/env python3
"""Batched greedy generation in onnxruntime-genai against transformers' single-prompt
references.

    genai_batch.py MODEL_DIR EXPECTED_JSON

Encodes every prompt of EXPECTED_JSON (samples/checkpoints/expected/<form>.json) in one
og.Tokenizer.encode_batch call (which pads on the right with the pad token), generates them
as one batch, and prints JSON: per prompt the new tokens and how many leading ones equal
transformers' (which generated each prompt alone). onnxruntime-genai keeps the padding in each
sequence, so new tokens start after the longest prompt.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime_genai as og


def main() -> int:
    model_dir, expected = sys.argv[1], json.load(open(sys.argv[2]))
    config = og.Config(model_dir)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": 2}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    tokenizer.update_options(add_special_tokens="true")
    prompts = expected["prompts"]
    ids = tokenizer.encode_batch([p["text"] for p in prompts]).as_numpy()
    width = ids.shape[1]
    new = min(len(p["new_tokens"]) for p in prompts)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=width + new, batch_size=len(prompts))
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    out = []
    for i, p in enumerate(prompts):
        seq = [int(x) for x in gen.get_sequence(i)]
        ours, want = seq[width:width + new], list(p["new_tokens"])[:new]
        same = 0
        while same < len(ours) and ours[same] == want[same]:
            same += 1
        out.append({"text": p["text"], "prompt_ids_match": [int(x) for x in seq[: len(p["input_ids"])]] == p["input_ids"],
                    "new_tokens": ours, "expected_new_tokens": want, "same_prefix": same})
    json.dump({"batch": len(prompts), "width": int(width), "prompts": out}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
