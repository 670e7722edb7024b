"""Benchmark: conversion time and peak memory of `bitnet-onnx convert` against its peers.

Regenerates its models (seeded, not committed), then runs each tool as a fresh process and
measures wall time, CPU time and peak RSS (the child's ru_maxrss as GNU time reports it, plus
the peak anonymous and file-backed RSS sampled from /proc every 5 ms):

  cp          copying the model files: the disk-speed floor
  bitnet-onnx `convert MODEL -o OUT --target ort --quantize-head -q` (every MatMul, as ORT does)
  ORT         onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer, bits=2,
              block 128, accuracy_level 4, as a user runs it: onnx.load, process(), save

Models: a ~92 MB float32 BitNet-shaped transformer (embedding Gather, 3 blocks of LayerNorm,
q/k/v/o attention and gate/up/down MLP MatMuls, LM head: 22 linear layers) with embedded
weights, the same with external data, and with `--big SIZE` (e.g. 4G, 32G) a stack of
DIMxDIM float32 MatMul layers streamed to external data (the generator holds 1024 rows at a
time, never the model). Runs are warm-cache: every file is read once before timing.
Each short measurement is repeated (best time, highest peak RSS). Every bitnet-onnx output is
loaded into an onnxruntime.InferenceSession, so a broken output cannot be timed.

usage: python bench/convert_speed.py target/release/bitnet-onnx [--reps 3] [--big 4G]
needs: pip install -r bench/requirements.txt (the ORT quantizer imports onnx_ir, ml_dtypes)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import namedtuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


# ---------------------------------------------------------------- models


def transformer(vocab=1280, d=768, ffn=2048, blocks=3, heads=12, ternary=False, seed=0):
    """A BitNet-shaped decoder, inputs `tokens` [batch, seq] int64. Linear weights are float32
    latent weights (N(0, 0.02)), or with TERNARY already ternary (a * {-1, 0, +1}, as a BitNet
    b1.58 model is once its fake-quant chain is folded); the embedding is always N(0, 0.02)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, shape, std=0.02):
        if ternary and name != "embed":
            t = rng.integers(-1, 2, size=shape, dtype=np.int8).astype(np.float32)
            inits.append(numpy_helper.from_array(t * np.float32(std * (1 + rng.random())), name))
        else:
            inits.append(numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) * std, name))
        return name

    def node(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, name=outs[0], **kw))
        return outs[0]

    def layernorm(x, name):
        inits.append(numpy_helper.from_array(np.ones(d, np.float32), name + ".g"))
        inits.append(numpy_helper.from_array(np.zeros(d, np.float32), name + ".b"))
        return node("LayerNormalization", [x, name + ".g", name + ".b"], [name], axis=-1)

    dh = d // heads
    inits.append(numpy_helper.from_array(np.array([0, 0, heads, dh], np.int64), "split_heads"))
    inits.append(numpy_helper.from_array(np.array([0, 0, d], np.int64), "merge_heads"))
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(dh), np.float32), "attn_scale"))
    x = node("Gather", [w("embed", (vocab, d)), "tokens"], ["h0"])
    for i in range(blocks):
        p = f"blk{i}"
        a = layernorm(x, f"{p}.ln1")
        q, k, v = (node("MatMul", [a, w(f"{p}.attn.{n}.w", (d, d))], [f"{p}.attn.{n}"]) for n in "qkv")
        q = node("Transpose", [node("Reshape", [q, "split_heads"], [q + ".r"])], [q + ".t"], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, "split_heads"], [k + ".r"])], [k + ".t"], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, "split_heads"], [v + ".r"])], [v + ".t"], perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], [f"{p}.scores"]), "attn_scale"], [f"{p}.scaled"])
        c = node("MatMul", [node("Softmax", [s], [f"{p}.probs"], axis=-1), v], [f"{p}.ctx"])
        c = node("Reshape", [node("Transpose", [c], [c + ".t"], perm=[0, 2, 1, 3]), "merge_heads"], [c + ".m"])
        o = node("MatMul", [c, w(f"{p}.attn.o.w", (d, d))], [f"{p}.attn.o"])
        x = node("Add", [x, o], [f"{p}.res1"])
        m = layernorm(x, f"{p}.ln2")
        g = node("MatMul", [m, w(f"{p}.mlp.gate.w", (d, ffn))], [f"{p}.mlp.gate"])
        u = node("MatMul", [m, w(f"{p}.mlp.up.w", (d, ffn))], [f"{p}.mlp.up"])
        g = node("Mul", [g, node("Sigmoid", [g], [g + ".sig"])], [g + ".silu"])
        h = node("MatMul", [node("Mul", [g, u], [f"{p}.mlp.h"]), w(f"{p}.mlp.down.w", (ffn, d))], [f"{p}.mlp.down"])
        x = node("Add", [x, h], [f"{p}.res2"])
    node("MatMul", [layernorm(x, "ln_f"), w("lm_head.w", (d, vocab))], ["logits"])
    graph = helper.make_graph(
        nodes,
        "bitnet_transformer",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bench")
    model.ir_version = 10
    return model


def save_transformer(model, path, external):
    if external:
        onnx.save(model, path, save_as_external_data=True, location=os.path.basename(path) + ".data")
    else:
        onnx.save(model, path)


def write_big(path, total_bytes, dim, seed=0):
    """DIMxDIM float32 MatMul layers totalling about TOTAL_BYTES, streamed to PATH.data."""
    layers = max(1, round(total_bytes / (dim * dim * 4)))
    rng = np.random.default_rng(seed)
    data_name = os.path.basename(path) + ".data"
    inits, nodes, offset, x = [], [], 0, "x"
    with open(path + ".data", "wb") as f:
        for i in range(layers):
            for r in range(0, dim, 1024):  # 1024 rows at a time: 32 MiB of float32 at dim 8192
                f.write((rng.standard_normal((min(1024, dim - r), dim), dtype=np.float32) * 0.02).tobytes())
            t = TensorProto(name=f"w{i}", dims=[dim, dim], data_type=TensorProto.FLOAT)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", offset), ("length", dim * dim * 4)):
                t.external_data.add(key=k, value=str(v))
            inits.append(t)
            offset += dim * dim * 4
            y = "y" if i == layers - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y], name=f"layer{i}"))
            x = y
    graph = helper.make_graph(
        nodes,
        "bitnet_big_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bench")
    model.ir_version = 10
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return layers


def model_files(path):
    return [p for p in (path, path + ".data") if os.path.exists(p)]


def largest_tensor_bytes(path, n):
    """Sum of the N largest initializers (read without loading external data)."""
    m = onnx.load(path, load_external_data=False)
    sizes = sorted((int(np.prod(t.dims)) * 4 for t in m.graph.initializer), reverse=True)
    return sum(sizes[:n])


# ---------------------------------------------------------------- measuring


Run = namedtuple("Run", "secs cpu rss anon file stdout status runs")


def run(cmd, check=True):
    """Runs CMD as a fresh process and measures it. CPU is user + system seconds (all threads).
    The peak RSS (bytes) is GNU time's %M, the ru_maxrss of a child forked from the small `time`
    process (a child forked from this Python process would inherit Python's high-water mark);
    anon and file are the peaks of RssAnon and RssFile sampled from /proc every 5 ms."""
    out, err, rss = (tempfile.NamedTemporaryFile() for _ in range(3))
    peaks, done = {"RssAnon": 0, "RssFile": 0}, threading.Event()
    t0 = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", rss.name, *cmd], stdout=out, stderr=err)

    def sample():
        while not done.is_set():
            try:
                with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                    child = f.read().split()[0]
                with open(f"/proc/{child}/status") as f:
                    for line in f:
                        k = line.split(":")[0]
                        if k in peaks:
                            peaks[k] = max(peaks[k], int(line.split()[1]) * 1024)
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    p.wait()
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    out.seek(0)
    err.seek(0)
    if check and p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err.read().decode()[-3000:]}")
    maxrss, user, system = open(rss.name).read().split()[-3:]
    cpu = float(user) + float(system)
    return Run(dt, cpu, int(maxrss) * 1024, peaks["RssAnon"], peaks["RssFile"], out.read().decode(), p.returncode, 1)


def measure(cmd, out_files, reps, long_s=20.0, check=True):
    """Best time and highest peak RSS over REPS runs (one run when it takes longer than LONG_S)."""
    best = None
    for i in range(reps):
        for f in out_files:
            if os.path.exists(f):
                os.remove(f)
        os.sync()  # so the write-back of earlier outputs does not land in this run
        r = run(cmd, check)
        if best is not None:
            r = r._replace(secs=min(best.secs, r.secs), cpu=min(best.cpu, r.cpu), rss=max(best.rss, r.rss),
                           anon=max(best.anon, r.anon), file=max(best.file, r.file),
                           status=max(best.status, r.status))
        best = r._replace(runs=i + 1)
        if r.secs > long_s:
            break
    return best


def warm(files):
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def ort_loads(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_quantize_child(src, dst, external, bits):
    """What a user of ONNX Runtime's weight-only quantizer runs (this is the timed child)."""
    t0 = time.perf_counter()
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    t1 = time.perf_counter()
    model = onnx.load(src)
    t2 = time.perf_counter()
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=128, accuracy_level=4)
    q.process()
    t3 = time.perf_counter()
    q.model.save_model_to_file(dst, use_external_data_format=external)
    t4 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "load": t2 - t1, "quantize": t3 - t2, "save": t4 - t3}))


# ---------------------------------------------------------------- the benchmark


def bench_model(label, path, binary, work, reps, with_ort, bits, embedded, with_cp=True):
    files = model_files(path)
    size = sum(os.path.getsize(f) for f in files)
    warm(files)
    rows = {}
    if with_cp:
        cp_dir = os.path.join(work, "cp")
        os.makedirs(cp_dir, exist_ok=True)
        rows["cp"] = measure(["cp", *files, cp_dir], [os.path.join(cp_dir, os.path.basename(f)) for f in files], reps)
        shutil.rmtree(cp_dir)
    ours = os.path.join(work, "ours.onnx")
    rows["bitnet-onnx"] = measure(
        [binary, "convert", path, "-o", ours, "--target", "ort", "--quantize-head", "-q"], [ours, ours + ".data"], reps
    )
    ort_loads(ours)  # raises when the output does not load
    out_bytes = sum(os.path.getsize(f) for f in model_files(ours))
    ort_split = None
    if with_ort:
        theirs = os.path.join(work, "ort.onnx")
        cmd = [sys.executable, os.path.abspath(__file__), "_ort_quantize", path, theirs, str(bits)]
        rows[f"ORT MatMulNBitsQuantizer bits={bits}"] = measure(
            cmd + (["--external"] if not embedded else []), [theirs, theirs + ".data"], reps
        )
        ort_split = json.loads(rows[f"ORT MatMulNBitsQuantizer bits={bits}"].stdout.strip().splitlines()[-1])
        for f in model_files(theirs):
            os.remove(f)
    for f in model_files(ours):
        os.remove(f)
    bound = None if embedded else (os.path.getsize(path), largest_tensor_bytes(path, os.cpu_count()))
    return dict(label=label, size=size, rows=rows, out_bytes=out_bytes, ort_split=ort_split, bound=bound)


def verdict(ok):
    return "met" if ok else "**not met**"


def report(results, bits, nproc, base):
    print("| model | tool | runs | wall s | CPU s | GB/s of input | peak RSS MiB | RSS / input | peak anon / file-backed MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for tool, (t, cpu, rss, anon, filed, _, _, n) in r["rows"].items():
            print(
                f"| {r['label']} | {tool} | {'best of ' + str(n) if n > 1 else '1'} | {t:.2f} | {cpu:.2f} "
                f"| {r['size'] / t / 1e9:.2f} "
                f"| {rss / 2**20:,.0f} | {rss / r['size']:.2f}x | {anon / 2**20:,.0f} / {filed / 2**20:,.0f} |"
            )
    print()
    print("| model | check | measured | target | |")
    print("|---|---|---|---|---|")
    ort_key = f"ORT MatMulNBitsQuantizer bits={bits}"
    for r in results:
        rows, lab = r["rows"], r["label"]
        ours_t, ours_rss = rows["bitnet-onnx"].secs, rows["bitnet-onnx"].rss
        if ort_key in rows:
            x = rows[ort_key].secs / ours_t
            print(f"| {lab} | ORT quantizer time / ours | {x:.1f}x | >= 8x | {verdict(x >= 8)} |")
        if "cp" in rows:
            x = ours_t / rows["cp"].secs
            print(f"| {lab} | ours / cp time | {x:.1f}x | <= 3x | {verdict(x <= 3)} |")
        else:
            print(f"| {lab} | ours / cp time | not measured (no disk for a copy) | | |")
        if r["bound"] is None:
            x = ours_rss / r["size"]
            print(f"| {lab} | ours peak RSS / input size | {x:.2f}x | <= 1.2x | {verdict(x <= 1.2)} |")
        else:
            proto, tensors = r["bound"]
            bound = proto + tensors
            x = ours_rss / bound
            print(
                f"| {lab} | ours peak RSS / (graph proto {proto / 2**20:,.1f} MiB + {nproc} largest tensors, "
                f"one per core: {bound / 2**20:,.0f} MiB) | {x:.2f}x | <= 1.2x | {verdict(x <= 1.2)} |"
            )
            x = (ours_rss - base) / bound
            print(
                f"| {lab} | the same, less the process's own {base / 2**20:,.1f} MiB (`bitnet-onnx --version`) "
                f"| {x:.2f}x | <= 1.2x | {verdict(x <= 1.2)} |"
            )
    for r in results:
        if r["ort_split"]:
            s = r["ort_split"]
            print(
                f"\nORT quantizer phases on {r['label']} (s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in s.items())
            )
    print("\noutput sizes: " + "; ".join(f"{r['label']}: {r['size']:,} -> {r['out_bytes']:,} B" for r in results))


def parse_size(s):
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_ort_quantize":
        _, _, src, dst, bits, *ext = sys.argv
        return ort_quantize_child(src, dst, bool(ext), int(bits))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", help="the bitnet-onnx binary (a release build)")
    ap.add_argument("--reps", type=int, default=3, help="runs per short measurement (best time is kept)")
    ap.add_argument("--big", metavar="SIZE", help="also a stack of DIMxDIM layers of about SIZE (4G, 32G)")
    ap.add_argument("--big-dim", type=int, default=8192)
    ap.add_argument("--big-ort", choices=["auto", "yes", "no"], default="auto",
                    help="run ORT's quantizer on the big model (auto: when it is under 1/4 of RAM)")
    ap.add_argument("--big-cp", choices=["auto", "yes", "no"], default="auto",
                    help="copy the big model with cp for the time ratio (auto: when the disk has room)")
    ap.add_argument("--only-big", action="store_true", help="skip the ~90 MB transformer")
    ap.add_argument("--ternary", action="store_true", help="transformer weights already ternary (lossless path)")
    ap.add_argument("--bits", type=int, default=2, help="ORT quantizer bits (2 unless refused)")
    ap.add_argument("--workdir", help="where models are generated (default: a temp dir, removed after)")
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)
    work = a.workdir or tempfile.mkdtemp(prefix="bitnet-convert-bench-")
    os.makedirs(work, exist_ok=True)
    nproc = os.cpu_count()
    results = []
    try:
        if not a.only_big:
            m = transformer(ternary=a.ternary)
            for label, name, ext in (("transformer, embedded", "emb.onnx", False),
                                     ("transformer, external data", "ext.onnx", True)):
                p = os.path.join(work, name)
                save_transformer(m, p, ext)
                print(f"[{label}] {sum(os.path.getsize(f) for f in model_files(p)):,} B", file=sys.stderr)
                results.append(bench_model(label, p, binary, work, a.reps, True, a.bits, not ext))
                for f in model_files(p):
                    os.remove(f)
            del m
        if a.big:
            p = os.path.join(work, "big.onnx")
            t0 = time.perf_counter()
            n = write_big(p, parse_size(a.big), a.big_dim)
            size = sum(os.path.getsize(f) for f in model_files(p))
            label = f"{n} x {a.big_dim}x{a.big_dim} stack, external data"
            print(f"[{label}] {size:,} B written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            with_ort = a.big_ort == "yes" or (a.big_ort == "auto" and size < ram / 4)
            # The copy needs the model's size again, besides the output (~1/14 of it).
            room = shutil.disk_usage(work).free > size * 1.2
            with_cp = a.big_cp == "yes" or (a.big_cp == "auto" and room)
            results.append(bench_model(label, p, binary, work, 1 if size > 2**30 else a.reps, with_ort, a.bits, False,
                                       with_cp))
            if not with_cp:
                print(f"(cp skipped on the big model: {shutil.disk_usage(work).free / 2**30:.0f} GiB free, "
                      f"{size * 1.2 / 2**30:.1f} GiB needed for a copy and the output)", file=sys.stderr)
            if not with_ort:
                print(f"(ORT quantizer skipped on the big model: {size / 2**30:.1f} GiB input, "
                      f"{ram / 2**30:.1f} GiB RAM)", file=sys.stderr)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    import onnxruntime

    # The process alone (its code pages, libc, allocator): a fixed cost no model changes.
    base = measure([binary, "--version"], [], a.reps).rss
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cache = "warm page cache" + (" (models larger than RAM are read from disk)" if any(r["size"] > ram for r in results) else "")
    print(f"\nonnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, {nproc} cores, {cache}\n")
    report(results, a.bits, nproc, base)


if __name__ == "__main__":
    main()
