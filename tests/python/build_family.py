#!/usr/bin/env python3
"""Checks a `bitnet-onnx build` folder of a sample family checkpoint against transformers.

usage: build_family.py MODEL_DIR EXPECTED_JSON VAL_JSON [--form NAME] [--margin 0.1]
                       [--max-loss-rel 1e-4] [--min-top1 0.995] [--min-top1-clear 1.0]
                       [--threads 2]

MODEL_DIR      an onnxruntime-genai folder written by `bitnet-onnx build` with `--logits all`
               (the validation rows need every position's logits).
EXPECTED_JSON  samples/checkpoints/expected/families/<name>.json (samples/generate_families.py):
               per prompt its text, transformers' input ids, greedy new tokens, first-step
               logits and the top-1 / top-2 logit margin of every step.
VAL_JSON       samples/checkpoints/expected/families/<name>_val.json: held-out rows and, under
               forms.<name>, transformers' validation loss, argmax and margin per position.
--form         the form in VAL_JSON (default: its only one).

Everything runs in onnxruntime-genai (numpy and onnxruntime-genai only, no torch):

- greedy: og.Tokenizer (special tokens on) must give transformers' ids; generation from them must
  give transformers' tokens up to the first step whose transformers margin is at most --margin
  (after a near-tie either token is right, and the continuations may part there);
- validation: each held-out row appended as one prompt, every position's logits read back: the
  mean next-token cross-entropy must be within --max-loss-rel of transformers' (relative), the
  argmax must agree with transformers' at a share of at least --min-top1 of all positions and
  of at least --min-top1-clear of the positions whose transformers margin exceeds --margin.

Prints JSON (per prompt and the validation figures, `ok`, `failures`); exit status 0 when every
check passes, 1 when one fails, 2 on a bad argument or file.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np
import onnxruntime_genai as og


def load_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"build_family.py: cannot read {what} {path}: {e}")


def open_model(folder: str, threads: int) -> og.Model:
    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def prompt_logits(model: og.Model, ids: list[int], extra: int) -> tuple[og.Generator, np.ndarray]:
    """A generator with `ids` appended (room for `extra` more tokens) and the logits of the
    prompt step, [positions, vocab] (one row with `build --logits last`)."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + max(extra, 1))
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([ids], dtype=np.int32))
    return gen, np.array(gen.get_output("logits"), dtype=np.float32)[0]


def greedy(model: og.Model, tokenizer: og.Tokenizer, expected: dict, margin: float) -> tuple[list[dict], list[str]]:
    results, failures = [], []
    for i, p in enumerate(expected["prompts"]):
        ref_ids = [int(x) for x in p["input_ids"]]
        want = [int(x) for x in p["new_tokens"]]
        margins = p["step_margins"]
        og_ids = [int(x) for x in tokenizer.encode(p["text"])]
        gen, logits = prompt_logits(model, ref_ids, len(want))
        ours = []
        while len(ours) < len(want) and not gen.is_done():
            gen.generate_next_token()
            ours.append(int(gen.get_next_tokens()[0]))
        # Steps before the first near-tie must agree.
        clear = next((k for k, m in enumerate(margins) if m <= margin), len(want))
        same = 0
        while same < min(len(ours), len(want)) and ours[same] == want[same]:
            same += 1
        ref = np.asarray(p["first_step_logits"], dtype=np.float32)
        r = {
            "text": p["text"],
            "tokenizer_ids_match": og_ids == ref_ids,
            "new_tokens": ours,
            "same_prefix": same,
            "clear_steps": clear,
            "first_step_max_abs": float(np.abs(logits[-1] - ref).max()),
            "first_step_ref_max_abs": float(np.abs(ref).max()),
        }
        results.append(r)
        if og_ids != ref_ids:
            failures.append(f"prompt {i}: onnxruntime-genai's ids {og_ids} are not transformers' {ref_ids}")
        if same < clear:
            failures.append(f"prompt {i}: token {same} is {ours[same] if same < len(ours) else 'missing'}, "
                            f"transformers' {want[same]} (its margin there {margins[same]:.4f} > {margin})")
    return results, failures


def validation(model: og.Model, val: dict, form: str, a: argparse.Namespace) -> tuple[dict, list[str]]:
    ref = val["forms"][form]
    rows = np.asarray(val["input_ids"], dtype=np.int64)
    losses, argmax = [], []
    for n, row in enumerate(rows):
        _, logits = prompt_logits(model, [int(x) for x in row], 1)
        if logits.shape[0] != len(row):
            raise SystemExit(f"build_family.py: {a.model_dir} gives logits for {logits.shape[0]} of {len(row)} "
                             "positions: build it with `--logits all`")
        z = logits[:-1].astype(np.float64)
        if not np.all(np.isfinite(z)):
            return {"error": f"row {n}: non-finite logits"}, [f"row {n}: non-finite logits"]
        z -= z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        losses.append(-logp[np.arange(len(row) - 1), row[1:]])
        argmax.append(z.argmax(-1))
    loss = float(np.concatenate(losses).mean())
    agree = np.asarray(argmax) == np.asarray(ref["argmax"])
    clear = np.asarray(ref["margin"]) > a.margin
    out = {
        "val_loss": loss,
        "ref_val_loss": ref["val_loss"],
        "ref_val_loss_f64": ref["val_loss_f64"],
        "loss_delta_rel": (loss - ref["val_loss"]) / ref["val_loss"],
        "f64_delta_rel": (ref["val_loss_f64"] - ref["val_loss"]) / ref["val_loss"],
        "top1": float(agree.mean()),
        "top1_clear": float(agree[clear].mean()) if clear.any() else 1.0,
        "clear_positions": int(clear.sum()),
        "positions": int(clear.size),
    }
    failures = []
    if abs(out["loss_delta_rel"]) > a.max_loss_rel:
        failures.append(f"validation loss {loss:.6f} vs transformers' {ref['val_loss']:.6f}: relative "
                        f"{out['loss_delta_rel']:.2e}, over {a.max_loss_rel:g}")
    if out["top1"] < a.min_top1:
        failures.append(f"argmax agreement {out['top1']:.4f} under {a.min_top1}")
    if out["top1_clear"] < a.min_top1_clear:
        failures.append(f"argmax agreement where transformers' margin > {a.margin}: {out['top1_clear']:.4f} "
                        f"under {a.min_top1_clear}")
    return out, failures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("expected")
    ap.add_argument("val")
    ap.add_argument("--form")
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--max-loss-rel", type=float, default=1e-4)
    ap.add_argument("--min-top1", type=float, default=0.995)
    ap.add_argument("--min-top1-clear", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    expected = load_json(a.expected, "expected")
    val = load_json(a.val, "validation records")
    forms = list(val.get("forms", {}))
    form = a.form or (forms[0] if len(forms) == 1 else None)
    if form not in forms:
        print(f"build_family.py: {a.val} has forms {forms}; name one with --form", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(a.model_dir, "genai_config.json")):
        print(f"build_family.py: {a.model_dir} has no genai_config.json", file=sys.stderr)
        return 2
    model = open_model(a.model_dir, a.threads)
    tokenizer = og.Tokenizer(model)
    # og's encode adds no special tokens unless asked; transformers' tokenizer call adds BOS where
    # the tokenizer has one.
    tokenizer.update_options(add_special_tokens="true")
    prompts, failures = greedy(model, tokenizer, expected, a.margin)
    figures, val_failures = validation(model, val, form, a)
    failures += val_failures
    text = json.dumps({"ok": not failures, "failures": failures, "form": form, "validation": figures,
                       "prompts": prompts}, indent=1, ensure_ascii=False)
    # Lists of numbers on one line.
    print(re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text))
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            sys.exit(2)
        raise
