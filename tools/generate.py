#!/usr/bin/env python3
"""Generate text with a model folder written by `bitnet-onnx build`, in onnxruntime-genai.

    pip install onnxruntime-genai==0.18.0
    python tools/generate.py OUT_DIR "The capital of France is" --max-new-tokens 64

Greedy decoding by default (the folder's genai_config.json); `--sample` samples with
`--temperature`/`--top-p`. Prints the continuation as it is generated, then the prompt and
decode speed on stderr. `--threads N` sets ONNX Runtime's intra-op threads for this run (the
folder's config is not changed). `--chat` wraps the prompt in the tokenizer's chat template
(BitNet-2B-4T is an instruction-tuned model).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import onnxruntime_genai as og


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a folder written by `bitnet-onnx build`")
    ap.add_argument("prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    ap.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    args = ap.parse_args()

    config = og.Config(args.model)
    if args.threads > 0:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": args.threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    prompt = args.prompt
    if args.chat:
        # The template writes the special tokens (BOS included) itself.
        messages = json.dumps([{"role": "user", "content": prompt}])
        prompt = tokenizer.apply_chat_template(messages=messages, add_generation_prompt=True)
    else:
        # As transformers' tokenizer call does: BOS first (og's encode leaves it out by default).
        tokenizer.update_options(add_special_tokens="true")
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    options = {"max_length": len(ids) + args.max_new_tokens, "do_sample": args.sample}
    if args.sample:
        options.update(temperature=args.temperature, top_p=args.top_p)
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    stream = tokenizer.create_stream()

    start = time.perf_counter()
    generator.append_tokens(ids)
    prompt_done = time.perf_counter()
    new = 0
    while not generator.is_done() and new < args.max_new_tokens:
        generator.generate_next_token()
        new += 1
        sys.stdout.write(stream.decode(int(generator.get_next_tokens()[0])))
        sys.stdout.flush()
    end = time.perf_counter()
    sys.stdout.write("\n")
    print(
        f"prompt: {len(ids)} tokens in {prompt_done - start:.3f} s ({len(ids) / max(prompt_done - start, 1e-9):.1f} tokens/s); "
        f"decode: {new} tokens in {end - prompt_done:.3f} s ({new / max(end - prompt_done, 1e-9):.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
