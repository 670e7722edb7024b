#!/usr/bin/env python3
"""What quantizing the embedding and LM head costs (not a test; nothing it writes is kept).

    .venv/bin/python bench/table_fidelity.py target/release/bitnet-onnx \
        [--model DIR:IDS.pb ...] [--target ort-int8] [--settings H/E/B,...]

For each model (an ONNX export and a TensorProto file of int64 token ids [B, T], by default
the trained sample `samples/hf/trained_lm` on its held-out `val_input_ids.pb` and the three
random-weight `samples/hf/*` exports on their `input_ids.pb`) and each setting `HEAD/EMB/BLOCK`
(`--head`, `--embeddings`, `--table-block-size`), converts with `--target` (default
`ort-int8`, whose BitNet layers compute exactly what the export does, so the difference is the
tables'), runs the original and the conversion in ONNX Runtime (CPU, ORT_ENABLE_ALL, as
deployed) on the same ids and prints one markdown table: file size, logits relative L2 error
and next-token top-1 agreement against the original over every position, and the mean
next-token cross-entropy of each (the validation loss) with its change.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "samples", "hf")
DEFAULT_SETTINGS = (
    "float/float/32,int8/int8/32,int8/int4/32,int4/int4/32,int4/int4/64,int4/int4/128"
)


def default_models() -> list[tuple[str, str]]:
    out = []
    trained = os.path.join(SAMPLES, "trained_lm")
    if os.path.exists(os.path.join(trained, "model.onnx")):
        out.append((trained, os.path.join(trained, "val_input_ids.pb")))
    for form in ("bitlinear", "autobitlinear_offline", "autobitlinear_online"):
        d = os.path.join(SAMPLES, form)
        out.append((d, os.path.join(d, "input_ids.pb")))
    return out


def size(path: str) -> int:
    total = os.path.getsize(path)
    if os.path.exists(path + ".data"):
        total += os.path.getsize(path + ".data")
    return total


def logits(model: str, ids: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: ids})[0].astype(np.float64)


def val_loss(lg: np.ndarray, ids: np.ndarray) -> float:
    """Mean cross-entropy of token t+1 given the logits at t."""
    x = lg[:, :-1]
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    tgt = ids[:, 1:]
    return float(-np.take_along_axis(logp, tgt[..., None], -1).mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--model", action="append", default=[],
                    help="DIR:IDS.pb (DIR/model.onnx and its token ids)")
    ap.add_argument("--target", default="ort-int8")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS)
    a = ap.parse_args()
    models = [tuple(m.split(":", 1)) for m in a.model] or default_models()
    print(f"ONNX Runtime {ort.__version__}; --target {a.target}; ORT_ENABLE_ALL")
    print()
    print("| model | --head / --embeddings / block | file KiB | logits rel err | top-1 agree "
          "| val loss | change |")
    print("|---|---|---|---|---|---|---|")
    work = tempfile.mkdtemp(prefix="fidelity-")
    for d, ids_path in models:
        model = os.path.join(d, "model.onnx")
        ids = numpy_helper.to_array(onnx.load_tensor(ids_path)).astype(np.int64)
        ref = logits(model, ids)
        base = val_loss(ref, ids)
        name = os.path.basename(os.path.normpath(d))
        print(f"| {name} | original | {size(model) / 1024:.0f} | - | - | {base:.4f} | - |")
        for setting in a.settings.split(","):
            head, emb, block = setting.split("/")
            out = os.path.join(work, f"{name}.{head}.{emb}.{block}.onnx")
            subprocess.run(
                [a.binary, "convert", model, "-o", out, "--target", a.target, "-q",
                 "--head", head, "--embeddings", emb, "--table-block-size", block],
                check=True,
            )
            got = logits(out, ids)
            rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
            loss = val_loss(got, ids)
            print(f"| {name} | {head} / {emb} / {block} | {size(out) / 1024:.0f} | {rel:.2e} | "
                  f"{100 * top1:.1f}% | {loss:.4f} | {loss - base:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
