#!/usr/bin/env python3
"""Loads each model folder with onnxruntime-genai and generates a few tokens from a short
prompt: what `build` accepted, the runtime must run (GroupQueryAttention's head size, its
rotary caches, MatMulNBits' block sizes are checked only when a session runs).

    genai_smoke.py FOLDER [FOLDER ...]

Prints JSON: {folder: "ok" or the error}, exits 0 either way (the caller judges).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime_genai as og


def smoke(folder: str) -> str:
    try:
        model = og.Model(og.Config(folder))
        params = og.GeneratorParams(model)
        prompt = [1, 2, 3, 4, 5]
        params.set_search_options(do_sample=False, max_length=len(prompt) + 3)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([prompt], dtype=np.int32))
        for _ in range(3):
            if gen.is_done():
                break
            gen.generate_next_token()
        logits = gen.get_output("logits")
        if logits.size == 0:
            return "no logits"
        return "ok"
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        return f"{type(e).__name__}: {e}"[:500]


def main() -> None:
    print(json.dumps({f: smoke(f) for f in sys.argv[1:]}))


if __name__ == "__main__":
    main()
