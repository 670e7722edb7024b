#!/usr/bin/env python3
"""Deployed inference speed of a transformers BitNet export at BitNet-b1.58-2B-4T width, before
and after conversion (not a test; nothing it writes is committed).

    .venv-samples/bin/python bench/hf_deploy_speed.py target/release/bitnet-onnx \
        [--layers 4] [--form autobitlinear_offline] [--workdir DIR] [--threads 2] \
        [--seqs 1,128] [--reps 10,5] [--skip-torch] \
        [--variants 'ort=--target ort;ort-int8=--target ort-int8;qdq-int8=--target qdq-int8']

Exports the model of bench/hf_convert_memory.py (the seeded `BitNetForCausalLM` of
samples/generate_hf.py at 2B-4T width with N decoder layers, checkpoint of the chosen form,
from_pretrained, dynamo export with external data), in a subprocess and only when DIR holds
no export yet (the same DIR/<form>-<N>l/model.onnx that script writes, so a workdir can be
shared). Converts it once per variant (`NAME=FLAGS`, separated by `;`; FLAGS go to
`bitnet-onnx convert` as they are, so flags a binary does not know yet give a row saying the
conversion failed), recording wall time and peak RSS (GNU time's %M, /usr/bin/time).

Then times ONNX Runtime (CPUExecutionProvider, ORT_ENABLE_ALL, --threads intra-op threads,
one warm-up run, median and min of --reps runs) on the float32 export and on every converted
model, each in a process of its own under GNU time (its peak RSS, import of numpy/onnx/ORT
included), with input_ids int64 [1, seq] drawn from numpy default_rng(0) in [3, 1000) and
whatever else the graph declares (attention_mask ones, position_ids arange). Unless
--skip-torch, also times PyTorch eager the same way: the checkpoint (the same seeded bytes the
export step loaded, written to DIR/<form>-<N>l/checkpoint once) loaded with from_pretrained,
torch.set_num_threads(--threads), no_grad, use_cache=False, and the BitNet helpers'
torch.compile turned off as for the export (plain eager). On the --check-seq input (default:
the largest seq) every model's logits are compared with ORT float32's: relative L2 error over
all logits and top-1 (argmax) agreement over positions.

Prints the CPU model and flags, then one markdown table; speed ratios are ORT float32's time
over the row's (higher = faster), the file ratio is the row's size over float32's. The PyTorch
row's file is the safetensors checkpoint. (ONNX Runtime 1.32's ORT_ENABLE_ALL fuses qdq-int8's
DequantizeLinear + MatMul into MatMulNBits bits 8, accuracy_level 4, i.e. int8 activations: its
logits error is of the ort target's order, not float's; session config
session.qdq_matmulnbits_accuracy_level=0 keeps it float.)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VARIANTS = "ort=--target ort;ort-int8=--target ort-int8;qdq-int8=--target qdq-int8"
GNU_TIME = ["/usr/bin/time", "-f", "maxrss_kib=%M"]


def input_ids(seq: int) -> np.ndarray:
    return np.random.default_rng(0).integers(3, 1000, (1, seq)).astype(np.int64)


def reps_for(seq: int, reps: list[int] | None, seqs: list[int]) -> int:
    if reps is None:
        return 10 if seq <= 32 else 5
    return reps[seqs.index(seq)] if len(reps) > 1 else reps[0]


# ---------------------------------------------------------------------------------------------
# Workers: each runs in a fresh process under GNU time and prints one JSON line on stdout.


def time_runs(run, seqs, reps, check_seq, logits_out):
    """run(ids) -> logits [1, seq, vocab]; one warm-up, then `reps` timed runs per seq."""
    out = {"seqs": {}}
    for seq, n in zip(seqs, reps):
        ids = input_ids(seq)
        logits = run(ids)  # warm-up
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            logits = run(ids)
            ts.append(time.perf_counter() - t0)
        out["seqs"][str(seq)] = {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3, "reps": n}
        if seq == check_seq:
            np.save(logits_out, np.asarray(logits, dtype=np.float32).reshape(-1, np.shape(logits)[-1]))
    if check_seq not in seqs:
        lg = np.asarray(run(input_ids(check_seq)), dtype=np.float32)
        np.save(logits_out, lg.reshape(-1, lg.shape[-1]))
    return out


def worker_ort(model, seqs, reps, threads, check_seq, logits_out):
    import onnx
    import onnxruntime as ort

    proto = onnx.load(model, load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in proto.graph.input if i.name not in inits]
    del proto
    dtypes = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
              onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.BOOL: np.bool_}

    def feeds(ids):
        seq = ids.shape[1]
        f = {}
        for name, et in inputs:
            if et not in dtypes:
                raise SystemExit(f"graph input {name}: element type {et} not supported")
            if name == "input_ids":
                f[name] = ids.astype(dtypes[et])
            elif name == "attention_mask":
                f[name] = np.ones((1, seq), dtypes[et])
            elif name == "position_ids":
                f[name] = np.arange(seq, dtype=dtypes[et]).reshape(1, seq)
            else:
                raise SystemExit(f"graph input {name}: no feed known for it")
        return f

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    out_name = sess.get_outputs()[0].name
    out = time_runs(lambda ids: sess.run([out_name], feeds(ids))[0], seqs, reps, check_seq, logits_out)
    out.update(load_s=load, inputs=[n for n, _ in inputs], ort=ort.__version__)
    return out


def worker_torch(ckpt, seqs, reps, threads, check_seq, logits_out):
    import logging
    import warnings

    import torch
    from transformers import BitNetForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    # Plain eager: the BitNet helpers are torch.compile'd; off, as for the export.
    torch._dynamo.config.disable = True
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BitNetForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    load = time.perf_counter() - t0

    def run(ids):
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()

    out = time_runs(run, seqs, reps, check_seq, logits_out)
    out.update(load_s=load, torch=torch.__version__)
    return out


def worker_checkpoint(ckpt, layers, form):
    """The checkpoint hf_convert_memory.py's export step loads (same seeded code), kept."""
    import hf_convert_memory as hcm  # puts samples/ on sys.path
    import generate_hf

    config = dict(hcm.CONFIG_2B, num_hidden_layers=layers)
    os.makedirs(ckpt + ".tmp", exist_ok=True)
    generate_hf.write_checkpoint(ckpt + ".tmp", form, generate_hf.master_state(config), config)
    os.replace(ckpt + ".tmp", ckpt)
    return {}


def worker_main(argv) -> int:
    kind = argv[0]
    if kind == "checkpoint":
        sys.path.insert(0, HERE)
        res = worker_checkpoint(argv[1], int(argv[2]), argv[3])
    else:
        path, seqs, reps, threads, check_seq, logits_out = argv[1:7]
        seqs = [int(s) for s in seqs.split(",")]
        reps = [int(r) for r in reps.split(",")]
        fn = {"ort": worker_ort, "torch": worker_torch}[kind]
        res = fn(path, seqs, reps, int(threads), int(check_seq), logits_out)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Driver.


def run_timed(cmd):
    """Runs cmd under GNU time: (returncode, wall s, peak RSS bytes, stdout, stderr)."""
    t0 = time.time()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        r = subprocess.run(GNU_TIME + cmd, stdout=out, stderr=err)
        wall = time.time() - t0
        err.seek(0)
        out.seek(0)
        stderr = err.read().decode(errors="replace")
        stdout = out.read().decode(errors="replace")
    kib = [ln for ln in stderr.splitlines() if ln.startswith("maxrss_kib=")]
    peak = int(kib[-1].split("=")[1]) * 1024 if kib else 0
    # GNU time's own lines (its format, "Command exited with non-zero status N") are dropped.
    stderr = "\n".join(ln for ln in stderr.splitlines()
                       if not ln.startswith(("maxrss_kib=", "Command exited with", "Command terminated by")))
    return r.returncode, wall, peak, stdout, stderr.strip()


def parse_variants(text):
    out = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise SystemExit(f"--variants: {item!r} is not NAME=FLAGS")
        name, flags = item.split("=", 1)
        out.append((name.strip(), shlex.split(flags)))
    return out


def short(message, n=160):
    message = " ".join(message.split())
    return (message[:n] + "...") if len(message) > n else message


def run_worker(kind, path, seqs, reps, threads, check_seq, logits_out):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, path,
           ",".join(map(str, seqs)), ",".join(map(str, reps)), str(threads), str(check_seq), logits_out]
    status, wall, peak, stdout, stderr = run_timed(cmd)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if status != 0 or not lines:
        tail = stderr.splitlines()[-1] if stderr else f"exit {status}"
        print(f"  {kind} {path}: failed (exit {status}):\n{stderr[-2000:]}", file=sys.stderr)
        return {"error": f"{kind} run failed: {short(tail)}"}
    res = json.loads(lines[-1][len("RESULT "):])
    res.update(peak=peak, wall=wall)
    return res


def compare(logits_path, ref):
    got = np.load(logits_path)
    if got.shape != ref.shape and got.shape[0] == 1:
        # `--logits last`: the last position only.
        ref = ref[-1:]
    rel = float(np.linalg.norm((got - ref).ravel()) / np.linalg.norm(ref.ravel()))
    same = got.argmax(-1) == ref.argmax(-1)
    return rel, f"{int(same.sum())}/{same.size}"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2:])
    sys.path.insert(0, HERE)
    import hf_convert_memory as hcm  # puts samples/ on sys.path
    import generate_hf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--form", default="autobitlinear_offline", choices=sorted(generate_hf.FORMS))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help="NAME=FLAGS;NAME=FLAGS... (FLAGS passed to `convert` as they are)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="1,128")
    ap.add_argument("--reps", default=None,
                    help="timed runs: one number, or one per seq (default 10 for seq <= 32, else 5)")
    ap.add_argument("--check-seq", type=int, default=None,
                    help="seq of the logits comparison (default: the largest of --seqs)")
    ap.add_argument("--skip-torch", action="store_true")
    a = ap.parse_args()
    seqs = [int(s) for s in a.seqs.split(",")]
    reps_arg = [int(r) for r in a.reps.split(",")] if a.reps else None
    if reps_arg and len(reps_arg) not in (1, len(seqs)):
        raise SystemExit("--reps: one number or one per seq")
    reps = [reps_for(s, reps_arg, seqs) for s in seqs]
    check_seq = a.check_seq or max(seqs)
    variants = parse_variants(a.variants)
    binary = os.path.abspath(a.binary)

    print(f"CPU: {hcm.cpu()}", flush=True)
    work = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="hf2b-deploy-"))
    model_dir = os.path.join(work, f"{a.form}-{a.layers}l")
    path = os.path.join(model_dir, "model.onnx")
    if not os.path.exists(path):
        # hf_convert_memory.py's export step, in a process of its own (the exporter's memory
        # is returned when it exits).
        t = time.time()
        subprocess.run(
            [sys.executable, hcm.__file__, binary, "--export-only", "--layers", str(a.layers),
             "--form", a.form, "--workdir", work],
            check=True,
        )
        print(f"exported {path} in {time.time() - t:.0f} s", flush=True)
    else:
        print(f"reusing {path}", flush=True)
    ckpt = os.path.join(model_dir, "checkpoint")
    if not a.skip_torch and not os.path.exists(ckpt):
        t = time.time()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "checkpoint", ckpt,
                        str(a.layers), a.form], check=True, stdout=subprocess.DEVNULL)
        print(f"wrote checkpoint {ckpt} in {time.time() - t:.0f} s", flush=True)

    # Conversions.
    rows = []  # (label, model kind, path, size, convert s, convert peak, error)
    for name, flags in variants:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        out = os.path.join(work, f"deploy.{a.form}-{a.layers}l.{slug}.onnx")
        for f in (out, out + ".data"):
            if os.path.exists(f):
                os.remove(f)
        status, wall, peak, _, stderr = run_timed([binary, "convert", path, "-o", out, "-q"] + flags)
        if status != 0:
            print(f"convert {name}: failed (exit {status}): {stderr[-2000:]}", file=sys.stderr, flush=True)
            lines = [ln for ln in stderr.splitlines() if ln.strip()]
            first = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else f"exit {status}")
            rows.append(dict(label=name, error=f"conversion failed: {short(first)}"))
            continue
        print(f"converted {name} ({' '.join(flags)}) in {wall:.1f} s, peak {peak / 2**20:.0f} MiB",
              flush=True)
        rows.append(dict(label=name, kind="ort", path=out, size=hcm.size(out), conv_s=wall, conv_peak=peak))
    f32_size = hcm.size(path)
    rows.insert(0, dict(label="ORT float32 original", kind="ort", path=path, size=f32_size))
    if not a.skip_torch:
        ck_size = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt))
        rows.insert(0, dict(label="PyTorch eager", kind="torch", path=ckpt, size=ck_size))

    # Timing, each model in a process of its own.
    for i, row in enumerate(rows):
        if "error" in row:
            continue
        row["logits"] = os.path.join(work, f"deploy.logits.{i}.npy")
        res = run_worker(row["kind"], row["path"], seqs, reps, a.threads, check_seq, row["logits"])
        row.update(res)
        if "error" not in res:
            times = ", ".join(f"seq={s} {res['seqs'][str(s)]['median_ms']:.1f} ms" for s in seqs)
            print(f"timed {row['label']}: load {res['load_s']:.1f} s, {times}, "
                  f"peak {res['peak'] / 2**20:.0f} MiB", flush=True)

    ref_row = next(r for r in rows if r["label"] == "ORT float32 original")
    if "error" in ref_row:
        raise SystemExit(f"the float32 original did not run: {ref_row['error']}")
    ref = np.load(ref_row["logits"])
    for row in rows:
        if "error" not in row:
            row["rel"], row["agree"] = compare(row["logits"], ref)
    for row in rows:
        if row.get("logits") and os.path.exists(row["logits"]):
            os.remove(row["logits"])

    # Table.
    import onnxruntime as ort
    import torch

    print()
    print("command: " + " ".join(shlex.quote(x) for x in [sys.executable] + sys.argv))
    print(
        f"model: {a.form}, {a.layers} layers at 2B-4T width; ONNX Runtime {ort.__version__}"
        + ("" if a.skip_torch else f", torch {torch.__version__}")
        + f"; {a.threads} threads; timed runs per seq: "
        + ", ".join(f"{s}: {n}" for s, n in zip(seqs, reps))
        + f" (median, min in brackets; after one warm-up); logits compared at seq={check_seq}"
    )
    print()
    head = " | ".join(f"seq={s} ms | vs ORT f32" for s in seqs)
    print(f"| variant | file MiB | file / f32 | {head} | peak RSS MiB (ORT run) | convert s | "
          f"convert peak MiB | logits rel err | top-1 agree |")
    print("|---|---|---|" + "---|---|" * len(seqs) + "---|---|---|---|---|")
    for row in rows:
        conv = [f"{row['conv_s']:.1f}", f"{row['conv_peak'] / 2**20:.0f}"] if "conv_s" in row else ["-", "-"]
        if "size" not in row:  # the conversion failed
            cells = [row["error"], ""] + [""] * (2 * len(seqs)) + ["", "", "", "", ""]
        elif "error" in row:  # the timing run failed
            cells = [f"{row['size'] / 2**20:.0f}", f"{row['size'] / f32_size:.3f}", row["error"]]
            cells += [""] * (2 * len(seqs) - 1) + [""] + conv + ["", ""]
        else:
            cells = [f"{row['size'] / 2**20:.0f}", f"{row['size'] / f32_size:.3f}"]
            for s in seqs:
                t = row["seqs"][str(s)]
                base = ref_row["seqs"][str(s)]["median_ms"]
                cells += [f"{t['median_ms']:.1f} ({t['min_ms']:.1f})", f"{base / t['median_ms']:.2f}x"]
            cells += [f"{row['peak'] / 2**20:.0f}"] + conv + [f"{row['rel']:.2e}", row["agree"]]
        print(f"| {row['label']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
