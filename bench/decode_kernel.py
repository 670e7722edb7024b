#!/usr/bin/env python3
"""Decode and prompt speed of `build --kernel bitnet` (the bitnet-ortops custom op) against the
stock build (`--kernel ort`, ONNX Runtime's 2-bit MatMulNBits), both in onnxruntime-genai, at
microsoft/bitnet-b1.58-2B-4T's shape, with the machine's read bandwidth measured in the same run
(not a test; nothing it writes is committed).

    .venv/bin/python bench/decode_kernel.py --workdir DIR [--binary target/release/bitnet-onnx]
        [--layers 30] [--threads 2] [--prompt-tokens 128] [--new-tokens 64] [--reps 3]
        [--seed 0] [--bandwidth-gb 1.2] [--wait-idle S] [--llama-cpp [--llama-jobs 2]]

Needs numpy, onnx and onnxruntime-genai==0.18.0 (and tokenizers for a first checkpoint);
--llama-cpp needs bench/requirements-llamacpp.txt (all of these, plus gguf and cmake) and a
C/C++ compiler:

    python3 -m venv .venv-llcpp && .venv-llcpp/bin/pip install -r bench/requirements-llamacpp.txt
    .venv-llcpp/bin/python bench/decode_kernel.py --workdir DIR --llama-cpp

The library is found the way the binary finds it (beside it, or at
$BITNET_ONNX_KERNEL_LIBRARY): build both with `cargo build --release -p bitnet-cli -p bitnet-ortops`.

1. The random packed checkpoint of bench/genai_speed.py (its `write_checkpoint`: 2B-4T's
   config with --layers decoder layers, ternary codes uniform over {-1, 0, 1}, written once per
   --layers/--seed in DIR/ckpt-<N>l and reused).
2. Two folders from it with the default flags (int8 tied table): DIR/ort-<N>l and
   DIR/bitnet-<N>l (`--kernel bitnet`).
3. Bytes read per generated token, from each model's initializers (external data lengths):
   every initializer except the rotary tables (a few rows read per token) and the 1-row-per-token
   embedding use of the tied table, which the head reads in full; the ternary layers' share is
   printed apart. MatMulNBits' figure is its file layout; ONNX Runtime prepacks it at load into
   a larger one (not measured here). The custom op has no prepack: it reads the file's layout.
4. Read bandwidth: two processes at once (the benchmark's thread count), each a
   --bandwidth-gb float32 matrix times a vector with numpy (one BLAS thread each), best of 3;
   the sum of the two rates (the issue's definition, the bound of the table's first ratio). Then
   the same reads synchronized: the processes start at one wall-clock instant and read for a common
   3 s window; the sum of their bytes / window is a rate the cores sustained together (the second
   ratio; the best-of-3 sum can add bests that did not overlap, so it can exceed it). Then, in
   a process of its own, ONNX Runtime's float32 MatMul at M = 1 over a --bandwidth-gb GB
   constant matrix on the benchmark's threads, best of 5 (ORT_CODE: a plain stream of weights in
   one session, a peer for the step's own read rate; the third ratio). Then each
   folder in a process of its own (genai_speed's genai worker: one warm-up generation, then
   --reps timed ones; prompt tok/s = prompt tokens / time to the first new token, decode tok/s =
   (new - 1) / the rest), and all three rates again.
   The two folders' greedy tokens are compared and the identical leading tokens printed: the
   kernel build's ternary layers compute the stock build's numbers exactly, but its int8 head
   (`Q8Linear`) and its attention sum in other float orders, so on random weights (where
   BitNet's per-token rounding amplifies any difference) the tokens may part after a few (the tests check tokens and logits on trained checkpoints). --wait-idle S waits up to S s before each
   timed run and bandwidth measurement for other processes to use under 0.2 cores (genai_speed's
   wait_idle; it measures anyway after S s); each row reports the cores others used meanwhile.
5. With --llama-cpp (bench/llamacpp.py): llama.cpp built once from the source vendored in the
   pinned llama-cpp-python sdist (DIR/llama.cpp-build, reused), the checkpoint written as a
   GGUF of llama.cpp's `bitnet` architecture (DIR/ckpt-<N>l.tq2_0.gguf, reused: ternary layers
   TQ2_0, tied embedding/head Q6_K, norms F32; a few weights read back and checked; llama.cpp's
   logits for a short prompt against a numpy model of its graph, within twice that model's own
   change under llama.cpp's Q8_K activation rounding), and
   llama-bench at the same threads between the two bandwidth measurements: prompt tok/s from
   `-p P -n 0`, decode tok/s from `-p 0 -n N -d P` (N tokens after a P-token context), --reps
   runs each after its warm-up. Bytes per token: every tensor of the file (the head reads the
   whole tied table). llama.cpp's bitnet graph has a SiLU FFN where 2B-4T has squared ReLU: the
   same bytes and work, not the same outputs, so its tokens are not compared.
Prints the CPU model and flags, the bandwidth, and a Markdown table whose last column is each
row's decode tok/s over its own bound (the higher measured bandwidth / its bytes per token),
over the bound from the higher sustained rate, and over the one from ONNX Runtime's stream.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import genai_speed as gs  # noqa: E402

BW_CODE = r"""
import os, sys, time
import numpy as np
gb = float(sys.argv[1])
rows = int(gb * 1e9 / 4 / 1024)
a = np.ones((rows, 1024), dtype=np.float32)
v = np.ones(1024, dtype=np.float32)
best = 0.0
for _ in range(3):
    t0 = time.perf_counter()
    np.dot(a, v)
    best = max(best, a.nbytes / (time.perf_counter() - t0))
print(best)
"""

# The same reads, but every process starts at one wall-clock instant and reads for the same
# window: bytes read / window, summed, is a rate both cores sustained together. The best-of-3 sum
# above can add two bests that did not overlap (a process's best pass may fall while the other one
# is still starting or filling its matrix), so it can exceed what two cores read at once.
SYNC_CODE = r"""
import sys, time
import numpy as np
gb, start, window = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
rows = int(gb * 1e9 / 4 / 1024)
a = np.ones((rows, 1024), dtype=np.float32)
v = np.ones(1024, dtype=np.float32)
np.dot(a, v)
while time.time() < start:
    pass
t0, n = time.time(), 0
while time.time() < start + window:
    np.dot(a, v)
    n += 1
print(n * a.nbytes / (time.time() - t0), t0 - start)
"""

# A third reference, one process: ONNX Runtime's own float32 MatMul at M = 1 over a constant
# --bandwidth-gb GB matrix on the benchmark's intra-op threads, best of 5 after a warm-up. It
# streams its weights with one multiply-add per 4 bytes: a plain read in one ONNX Runtime
# session on these threads. It is a peer, not a ceiling (a custom op with other access patterns
# can read faster); a decode step also runs attention, norms and onnxruntime-genai's own work
# between its weight reads.
ORT_CODE = r"""
import sys, time
import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T, helper as h, numpy_helper as nh
gb, threads = float(sys.argv[1]), int(sys.argv[2])
k = 2560
n = int(gb * 1e9 / 4 / k)
w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "read",
                 [h.make_tensor_value_info("x", T.FLOAT, [1, k])],
                 [h.make_tensor_value_info("y", T.FLOAT, [1, n])], [nh.from_array(w, "W")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]).SerializeToString()
del w, g
so = ort.SessionOptions()
so.intra_op_num_threads = threads
s = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
del m
x = np.ones((1, k), np.float32)
s.run(None, {"x": x})
best = 0.0
for _ in range(5):
    t0 = time.perf_counter()
    s.run(None, {"x": x})
    best = max(best, k * n * 4 / (time.perf_counter() - t0))
print(best)
"""


def ort_stream(gb: float, threads: int) -> float:
    """ORT_CODE's rate (bytes/s) in a process of its own."""
    out = subprocess.run([sys.executable, "-c", ORT_CODE, str(gb), str(threads)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return float(out.strip())


def _workers(code: str, args: list[str], procs: int) -> list[str]:
    """Standard output of `procs` processes running `code` with `args`, started together, one
    BLAS thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ps = [subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env, text=True)
          for _ in range(procs)]
    outs = []
    for p in ps:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit("bandwidth worker failed")
        outs.append(out)
    return outs


def bandwidth(gb: float, procs: int) -> float:
    """Total read rate (bytes/s) of `procs` processes each streaming a `gb` GB matrix."""
    return sum(float(out.strip()) for out in _workers(BW_CODE, [str(gb)], procs))


def sustained_bandwidth(gb: float, procs: int, window: float = 3.0) -> float:
    """Total read rate (bytes/s) of `procs` processes streaming a `gb` GB matrix each over one
    common `window` seconds (SYNC_CODE): what the cores read at the same time."""
    # Long enough for every process to start, import numpy and fill its matrix first.
    start = time.time() + 3.0 + 1.5 * gb
    total = 0.0
    for out in _workers(SYNC_CODE, [str(gb), repr(start), str(window)], procs):
        rate, late = (float(x) for x in out.split())
        if late > 0.2:
            raise SystemExit(f"sustained bandwidth: a worker began {late:.2f} s after the common start")
        total += rate
    return total


def model_bytes(folder: str) -> dict:
    """Initializer bytes by role, from model.onnx (external data not loaded)."""
    import onnx

    m = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    out = dict(ternary=0, head=0, rotary=0, other=0)
    for t in m.graph.initializer:
        length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
        if length is None:
            length = len(t.raw_data) if t.raw_data else 0
        ops = consumers.get(t.name, [])
        if "cos_cache" in t.name or "sin_cache" in t.name:
            out["rotary"] += length
        elif "BitLinear" in ops or ("MatMulNBits" in ops and "layers." in t.name):
            out["ternary"] += length
        elif "MatMulNBits" in ops or "Q8Linear" in ops or "GatherBlockQuantized" in ops:
            out["head"] += length
        else:
            out["other"] += length
    out["per_token"] = out["ternary"] + out["head"] + out["other"]
    return out


def kernel_library(binary: str) -> str:
    """The custom-op library `binary build --kernel bitnet` copies (its own lookup order:
    $BITNET_ONNX_KERNEL_LIBRARY, then beside the binary)."""
    env = os.environ.get("BITNET_ONNX_KERNEL_LIBRARY")
    return env if env else os.path.join(os.path.dirname(os.path.abspath(binary)), "libbitnet_ortops.so")


def build(binary: str, ckpt: str, out: str, kernel: str) -> float:
    """Builds `out` unless it exists from the same binary (and, for the kernel build, the same
    library): a folder left by an earlier binary would silently measure the old code."""
    what = dict(kind="build", kernel=kernel, binary=gs.sha256(binary),
                library=gs.sha256(kernel_library(binary)) if kernel == "bitnet" else None)
    if os.path.isdir(out):
        if gs.stamp_matches(out, **what):
            return 0.0
        shutil.rmtree(out)
    t0 = time.time()
    subprocess.run([binary, "build", ckpt, "-o", out, "--kernel", kernel, "-q"], check=True)
    gs.write_stamp(out, **what)
    return time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "bitnet-onnx"))
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bandwidth-gb", type=float, default=1.2)
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each timed run, wait up to S s for other processes to use < 0.2 cores")
    ap.add_argument("--llama-cpp", action="store_true", help="add llama.cpp TQ2_0 (bench/llamacpp.py)")
    ap.add_argument("--llama-jobs", type=int, default=2, help="parallel jobs of a first llama.cpp build")
    a = ap.parse_args()
    work = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="decode_kernel-"))
    os.makedirs(work, exist_ok=True)
    cpu, flags = gs.cpu_line()
    print(f"CPU: {cpu}\nflags: {flags}", flush=True)

    ckpt = os.path.join(work, f"ckpt-{a.layers}l")
    if not gs.stamp_matches(ckpt, kind="checkpoint", layers=a.layers, seed=a.seed):
        print(f"writing {ckpt}", flush=True)
        gs.run_worker("checkpoint", path=ckpt, layers=a.layers, seed=a.seed)
    folders = {k: os.path.join(work, f"{k}-{a.layers}l") for k in ("ort", "bitnet")}
    for k, f in folders.items():
        s = build(a.binary, ckpt, f, k)
        if s:
            print(f"built {f} in {s:.1f} s", flush=True)
    llama = None
    if a.llama_cpp:
        import llamacpp

        tools = llamacpp.ensure_build(work, a.llama_jobs)
        gguf = llamacpp.make_gguf(ckpt, work, tools)
        llamacpp.check_weights(ckpt, gguf)
        gbytes = llamacpp.gguf_bytes(gguf)
        print(f"llama.cpp {tools['commit']} ({tools['sdist']} sdist); {gguf}: tensor types {gbytes['types']}, "
              f"{gs.mib(gbytes['per_token'])} MiB per token ({gs.mib(gbytes['ternary'])} MiB TQ2_0)", flush=True)
        logits = llamacpp.check_logits(tools, gguf, work)
        llama = dict(tools=tools, gguf=gguf, bytes=gbytes, logits=logits)

    gs.wait_idle(a.wait_idle)
    bw0 = bandwidth(a.bandwidth_gb, a.threads)
    print(f"read bandwidth ({a.threads} processes): {bw0 / 1e9:.1f} GB/s", flush=True)
    sb0 = sustained_bandwidth(a.bandwidth_gb, a.threads)
    print(f"read bandwidth, sustained together: {sb0 / 1e9:.1f} GB/s", flush=True)
    os0 = ort_stream(a.bandwidth_gb, a.threads)
    print(f"ONNX Runtime float32 MatMul at M = 1, one process, {a.threads} threads: {os0 / 1e9:.1f} GB/s",
          flush=True)
    res = {}
    for k, f in folders.items():
        gs.wait_idle(a.wait_idle)
        res[k] = gs.run_worker("genai", folder=f, threads=a.threads, seed=a.seed, n_prompt=a.prompt_tokens,
                               n_new=a.new_tokens, reps=a.reps)
        print(f"{k}: prompt {gs.cell(res[k]['prompt'])} tok/s, decode {gs.cell(res[k]['decode'])} tok/s; "
              f"{gs.details(res[k])}", flush=True)
    if llama:
        gs.wait_idle(a.wait_idle)
        res["llama.cpp"] = llamacpp.bench(llama["tools"], llama["gguf"], a.threads, a.prompt_tokens,
                                          a.new_tokens, a.reps)
        print(f"llama.cpp: prompt {gs.cell(res['llama.cpp']['prompt'])} tok/s, decode "
              f"{gs.cell(res['llama.cpp']['decode'])} tok/s; {gs.details(res['llama.cpp'])}; llama-bench "
              f"build {res['llama.cpp']['build_commit']}, {res['llama.cpp']['model_type']}", flush=True)
    gs.wait_idle(a.wait_idle)
    bw1 = bandwidth(a.bandwidth_gb, a.threads)
    print(f"read bandwidth again: {bw1 / 1e9:.1f} GB/s", flush=True)
    sb1 = sustained_bandwidth(a.bandwidth_gb, a.threads)
    print(f"read bandwidth, sustained together, again: {sb1 / 1e9:.1f} GB/s", flush=True)
    os1 = ort_stream(a.bandwidth_gb, a.threads)
    print(f"ONNX Runtime float32 MatMul at M = 1 again: {os1 / 1e9:.1f} GB/s", flush=True)
    same = res["ort"]["tokens"] == res["bitnet"]["tokens"]
    ta, tb = res["ort"]["tokens"], res["bitnet"]["tokens"]
    lead = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    print(f"same generated tokens: {same} ({lead} of {len(ta)} leading tokens identical)", flush=True)

    bw = max(bw0, bw1)
    sb = max(sb0, sb1)
    osb = max(os0, os1)
    names = {"ort": "`build` (stock, 2-bit `MatMulNBits`)",
             "bitnet": "`build --kernel bitnet` (`BitLinear`, `Q8Linear` head, our attention)",
             "llama.cpp": "llama.cpp TQ2_0, Q6_K tied head (`llama-bench`)"}
    sizes = {k: model_bytes(f) for k, f in folders.items()}
    if llama:
        sizes["llama.cpp"] = {k: v for k, v in llama["bytes"].items() if k != "types"}
    print()
    print(f"{a.layers} layers at 2B-4T shape, {a.threads} threads, {a.prompt_tokens}-token prompt, "
          f"{a.new_tokens} new tokens, {a.reps} runs (median, range); bound = {bw / 1e9:.1f} GB/s / bytes per token; "
          f"sustained bound = {sb / 1e9:.1f} GB/s / bytes per token; ONNX Runtime's stream = {osb / 1e9:.1f} GB/s "
          f"({osb / bw:.2f} of the bandwidth) / bytes per token")
    print()
    print("| system | bytes read per token (ternary layers) | prompt tok/s | decode tok/s | decode / its bandwidth bound "
          "| decode / its sustained bound | decode / ONNX Runtime's stream |")
    print("|---|---|---|---|---|---|---|")
    for k, b in sizes.items():
        bound = bw / b["per_token"]
        dec = statistics.median(res[k]["decode"])
        print(f"| {names[k]} | {gs.mib(b['per_token'])} MiB ({gs.mib(b['ternary'])} MiB) | {gs.cell(res[k]['prompt'])} | "
              f"{gs.cell(res[k]['decode'])} | {dec / bound:.2f} (of {bound:.1f} tok/s) | "
              f"{dec * b['per_token'] / sb:.2f} (of {sb / b['per_token']:.1f} tok/s) | "
              f"{dec * b['per_token'] / osb:.2f} (of {osb / b['per_token']:.1f} tok/s) |")
    json.dump(dict(cpu=cpu, flags=flags, bandwidth=[bw0, bw1], sustained_bandwidth=[sb0, sb1],
                   ort_stream=[os0, os1], same_tokens=same,
                   bytes=sizes, llama_cpp=llama and dict(commit=llama["tools"]["commit"],
                                                         sdist=llama["tools"]["sdist"], gguf=llama["gguf"],
                                                         logits_check=llama["logits"]),
                   results={k: {x: v for x, v in r.items() if x != "tokens"} for k, r in res.items()}),
              open(os.path.join(work, "decode_kernel.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
