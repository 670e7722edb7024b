"""Scores a `bitnet-onnx build` folder (built with `--logits all`) on the held-out rows of
samples/checkpoints/expected/val.json and compares with transformers' figures there.

usage: build_val.py MODEL_DIR VAL_JSON FORM [--margin 0.1]

Runs the folder's graph (genai_config.json's `filename`: model.onnx, or a `--for web` folder's
onnx/model_q2.onnx) in ONNX Runtime (CPU, default optimisations, as onnxruntime-genai
runs it, registering the folder's custom-op library when genai_config.json names one) on
each row as one prompt with an empty KV cache, and prints JSON:
  val_loss, ref_val_loss, ref_val_loss_f64   mean next-token cross-entropy (nats): this
                                             model's, transformers float32's and float64's
  loss_delta_rel                             (val_loss - ref_val_loss) / ref_val_loss
  f64_delta_rel                              the same for transformers float64 (float noise)
  top1                                       argmax agreement with transformers over every
                                             next-token position
  top1_clear, clear_positions                the same over the positions where transformers'
                                             top-two logits differ by more than --margin
Needs only numpy, onnx and onnxruntime.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("val_json")
    ap.add_argument("form")
    ap.add_argument("--margin", type=float, default=0.1)
    a = ap.parse_args()
    with open(a.val_json) as f:
        val = json.load(f)
    ref = val["forms"][a.form]
    ids = np.asarray(val["input_ids"], dtype=np.int64)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    graph = "model.onnx"
    genai = os.path.join(a.model_dir, "genai_config.json")
    if os.path.isfile(genai):
        with open(genai) as f:
            decoder = json.load(f)["model"]["decoder"]
        graph = decoder["filename"]
        # A `--kernel bitnet` folder names its custom-op library, as onnxruntime-genai reads it.
        lib = decoder.get("session_options", {}).get("custom_ops_library")
        if lib is not None:
            so.register_custom_ops_library(os.path.join(a.model_dir, lib))
    s = ort.InferenceSession(os.path.join(a.model_dir, graph), so, providers=["CPUExecutionProvider"])
    feeds_meta = {i.name: i for i in s.get_inputs()}
    losses, argmax = [], []
    for row in ids:
        x = row[None, :]
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x)}
        for name, meta in feeds_meta.items():
            if name.startswith("past_key_values."):
                _, heads, _, hd = meta.shape
                feeds[name] = np.zeros((1, heads, 0, hd), dtype=np.float32)
        logits = s.run(["logits"], feeds)[0][0, :-1].astype(np.float64)
        if not np.all(np.isfinite(logits)):
            print(json.dumps({"error": "non-finite logits"}))
            return 1
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        losses.append(-logp[np.arange(len(row) - 1), row[1:]])
        argmax.append(logits.argmax(-1))
    loss = float(np.concatenate(losses).mean())
    argmax = np.asarray(argmax)
    ref_argmax = np.asarray(ref["argmax"])
    clear = np.asarray(ref["margin"]) > a.margin
    out = {
        "val_loss": loss,
        "ref_val_loss": ref["val_loss"],
        "ref_val_loss_f64": ref["val_loss_f64"],
        "loss_delta_rel": (loss - ref["val_loss"]) / ref["val_loss"],
        "f64_delta_rel": (ref["val_loss_f64"] - ref["val_loss"]) / ref["val_loss"],
        "top1": float((argmax == ref_argmax).mean()),
        "top1_clear": float((argmax == ref_argmax)[clear].mean()),
        "clear_positions": int(clear.sum()),
        "positions": int(clear.size),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
