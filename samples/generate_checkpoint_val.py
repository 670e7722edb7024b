#!/usr/bin/env python3
"""transformers' validation figures for the trained sample checkpoints (samples/checkpoints),
the reference that `bitnet-onnx build`'s fidelity tests compare with.

    pip install -r samples/requirements.txt
    python samples/generate_checkpoint_val.py

Writes samples/checkpoints/expected/val.json: VAL_ROWS held-out rows of 128 tokens (the
validation documents generate_checkpoints.py held out of training: same grammar, same seed,
never trained on), and for each checkpoint form, transformers' next-token figures on them:

- `val_loss`: mean next-token cross-entropy (nats) of `BitNetForCausalLM` in float32;
- `val_loss_f64`: the same model in float64 (what float rounding alone moves; BitNet's per-token
  int8 codes flip at ties, so this is the noise floor a float32 graph can be held to);
- `argmax`: the top-1 token at each position (rows x 127 next-token positions);
- `margin`: the top-1 minus top-2 logit there (rounded to 1e-4): a position whose margin is
  small is a near-tie where any float difference may change the argmax.

transformers runs with the BitNet helpers eager (torch._dynamo disabled), sdpa attention,
2 threads, deterministic algorithms.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import generate_checkpoints as gc  # noqa: E402

VAL_ROWS = 16
OUT = os.path.join(gc.OUT, "expected", "val.json")


def figures(model, ids: torch.Tensor) -> dict:
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    z = logits[:, :-1].double()
    target = ids[:, 1:]
    logp = torch.log_softmax(z, -1)
    loss = float(-logp.gather(-1, target[..., None]).mean())
    top2 = z.topk(2, -1).values
    return {
        "loss": loss,
        "argmax": z.argmax(-1).tolist(),
        "margin": [[round(float(m), 4) for m in row] for row in (top2[..., 0] - top2[..., 1])],
    }


def main() -> int:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(gc.THREADS)
    torch.use_deterministic_algorithms(True)
    torch._dynamo.config.disable = True
    import tokenizers
    import transformers
    from transformers import BitNetForCausalLM

    tok = tokenizers.Tokenizer.from_file(os.path.join(gc.OUT, "packed", "tokenizer.json"))
    grammar = gc.Grammar(gc.SEED)
    # generate_checkpoints.py's held-out validation documents (seed SEED + 3, never trained on).
    val_rows = gc.sequences(tok, gc.documents(grammar, 400, gc.SEED + 3))[:VAL_ROWS]
    ids = torch.from_numpy(val_rows.copy())
    out = {
        "generated_by": "samples/generate_checkpoint_val.py",
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
        "note": "rows of 128 token ids; argmax and margin are per next-token position (127 per row)",
        "input_ids": val_rows.tolist(),
        "forms": {},
    }
    for form in gc.FORMS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m32 = BitNetForCausalLM.from_pretrained(os.path.join(gc.OUT, form), dtype=torch.float32).eval()
            m64 = BitNetForCausalLM.from_pretrained(os.path.join(gc.OUT, form), dtype=torch.float64).eval()
        f32 = figures(m32, ids)
        f64 = figures(m64, ids)
        agree = float(np.mean(np.array(f32["argmax"]) == np.array(f64["argmax"])))
        out["forms"][form] = {
            "val_loss": f32["loss"],
            "val_loss_f64": f64["loss"],
            "top1_f32_vs_f64": agree,
            "argmax": f32["argmax"],
            "margin": f32["margin"],
        }
        print(f"{form}: val loss {f32['loss']:.6f} (float64 {f64['loss']:.6f}), "
              f"argmax float32 vs float64 {agree:.4f}", flush=True)
    gc.dump_json(OUT, out, indent=1)
    print(f"wrote {OUT} ({os.path.getsize(OUT):,} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
