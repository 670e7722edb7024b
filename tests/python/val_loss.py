"""Runs a language model in ONNX Runtime (CPU) on token ids stored as a TensorProto file and
prints JSON with its validation loss: the mean next-token cross-entropy (nats) of the logits at
positions 0..T-2 against the ids at 1..T-1, over every row.

usage: val_loss.py MODEL --input-ids FILE.pb [--level basic|all]
                   [--reference-logits FILE.pb] [--logits-out FILE.pb]

  --reference-logits   also compare with stored logits for the same ids (e.g. transformers'
                       val_logits.pb, or another model's --logits-out): rel_l2, max_abs_error,
                       the relative L2 error of each position's logits (median, max, how
                       many over 1e-4), top1 (argmax agreement over every position), the
                       reference's own val_loss and val_loss_delta = val_loss -
                       reference_val_loss.
  --logits-out         save this model's logits as a TensorProto file; printed as "logits"
                       (omitted otherwise).

The model's only input is fed the ids (int64 [B, T]); its first output is taken as the logits
[B, T, V]. One intra-op thread. Needs only numpy, onnx and onnxruntime.
"""

import argparse
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def next_token_loss(logits: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
    """Mean next-token cross-entropy (nats) and next-token accuracy, computed in float64."""
    z = logits[:, :-1].astype(np.float64)
    target = ids[:, 1:]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, target[..., None], -1)[..., 0]
    return float(-picked.mean()), float((z.argmax(-1) == target).mean())


def run(model: str, ids: np.ndarray, level: str = "basic") -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise SystemExit(f"{model}: expected one input (token ids), found {[i.name for i in inputs]}")
    return sess.run(None, {inputs[0].name: ids})[0]


def evaluate(model: str, ids: np.ndarray, level: str = "basic", reference: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """The JSON fields (without "logits") and the model's logits."""
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise SystemExit(f"input ids of shape {list(ids.shape)}: need [B, T] with T >= 2")
    ids = ids.astype(np.int64)
    logits = run(model, ids, level)
    if logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise SystemExit(f"logits of shape {list(logits.shape)} for ids {list(ids.shape)}")
    loss, acc = next_token_loss(logits, ids)
    out = {
        "ort_version": ort.__version__,
        "level": level,
        "tokens": int(ids.shape[0] * (ids.shape[1] - 1)),
        "finite": bool(np.isfinite(logits).all()),
        "val_loss": loss,
        "next_token_accuracy": acc,
    }
    if reference is not None:
        if reference.shape != logits.shape:
            raise SystemExit(f"logits of shape {list(logits.shape)}, reference {list(reference.shape)}")
        ref = reference.astype(np.float64)
        diff = logits.astype(np.float64) - ref
        ref_loss, _ = next_token_loss(reference, ids)
        per_position = np.linalg.norm(diff, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-30)
        out.update(
            {
                "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
                "max_abs_error": float(np.abs(diff).max()),
                "position_rel_l2_median": float(np.median(per_position)),
                "position_rel_l2_max": float(per_position.max()),
                "positions_over_1e-4": int((per_position > 1e-4).sum()),
                "top1": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
                "reference_val_loss": ref_loss,
                "val_loss_delta": loss - ref_loss,
            }
        )
    return out, logits


def load(path: str) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--input-ids", required=True)
    ap.add_argument("--level", choices=["basic", "all"], default="basic")
    ap.add_argument("--reference-logits")
    ap.add_argument("--logits-out")
    a = ap.parse_args()
    reference = load(a.reference_logits) if a.reference_logits else None
    out, logits = evaluate(a.model, load(a.input_ids), a.level, reference)
    if a.logits_out:
        onnx.save_tensor(numpy_helper.from_array(logits, "logits"), a.logits_out)
        out["logits"] = a.logits_out
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
