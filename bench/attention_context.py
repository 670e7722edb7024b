#!/usr/bin/env python3
"""What the KV cache costs a decode step as the context grows: ONNX Runtime's CPU
GroupQueryAttention alone at microsoft/bitnet-b1.58-2B-4T's attention shape, and (with --folder)
a genai folder's decode speed at the same contexts (not a test; nothing it writes is committed).

    .venv/bin/python bench/attention_context.py [--contexts 8,64,160,256,512,1024,2048]
        [--layers 30] [--threads 2] [--library target/release/libbitnet_ortops.so]
        [--folder DIR [--new-tokens 64]]

Needs numpy, onnx and onnxruntime (and onnxruntime-genai for --folder).

1. One GroupQueryAttention node as `build` writes it for 2B-4T (20 query heads, 5 key/value
   heads of 128, packed q/k/v input, rotary inside the node, scale 1/sqrt(128)), in an
   onnxruntime session with --threads intra-op threads. The past and present key/value buffers
   are one bound OrtValue each (onnxruntime-genai's past_present_share_buffer), so a call writes
   one position and attends over all T. For each context T: 20 warm-up calls, then the best of 5
   rounds of 100 calls. Prints microseconds per call, that times --layers (one decode step's
   attention), and the key/value bytes a step reads (layers x T x 5 heads x 128 x 4 bytes x 2)
   over that time. The buffers are reused call after call, so they sit in the caches for small
   T: a decode step, which reads every layer's cache once, cannot be faster than this.
   With --library: the same for `bitnet.onnx::GroupQueryAttention` from that bitnet-ortops
   library (the same inputs but the separate key and value; the calls alternate by context).
2. With --folder: onnxruntime-genai decodes --new-tokens greedy tokens after a prompt of T - 1
   tokens (token ids 1..T-1), best of 3, and prints decode tokens/s and ms per token.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

HEADS, KV_HEADS, HEAD = 20, 5, 128


def gqa_session(threads: int, buffer: int, library: str | None = None):
    import onnxruntime as ort
    from onnx import TensorProto as TP, helper

    if library:
        domain, extra = "bitnet.onnx", {}
        inputs = ["qkv", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"]
    else:
        domain, extra = "com.microsoft", dict(do_rotary=1, local_window_size=-1, softcap=0.0)
        inputs = ["qkv", "", "", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"]
    node = helper.make_node(
        "GroupQueryAttention", inputs, ["out", "present_k", "present_v"], domain=domain, num_heads=HEADS,
        kv_num_heads=KV_HEADS, scale=float(1 / np.sqrt(HEAD)), rotary_interleaved=0, **extra)
    kv = [1, KV_HEADS, buffer, HEAD]
    f = TP.FLOAT
    graph = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info("qkv", f, [1, 1, (HEADS + 2 * KV_HEADS) * HEAD]),
         helper.make_tensor_value_info("past_k", f, kv), helper.make_tensor_value_info("past_v", f, kv),
         helper.make_tensor_value_info("seqlens_k", TP.INT32, [1]),
         helper.make_tensor_value_info("total", TP.INT32, []),
         helper.make_tensor_value_info("cos", f, [buffer, HEAD // 2]),
         helper.make_tensor_value_info("sin", f, [buffer, HEAD // 2])],
        [helper.make_tensor_value_info("out", f, [1, 1, HEADS * HEAD]),
         helper.make_tensor_value_info("present_k", f, kv), helper.make_tensor_value_info("present_v", f, kv)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if library:
        so.register_custom_ops_library(library)
    return ort, ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_gqa(threads: int, t: int, library: str | None = None) -> float:
    """Best seconds per call of one decode step's attention at context t."""
    ort, sess = gqa_session(threads, t, library)
    rng = np.random.default_rng(0)
    kv = [ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((1, KV_HEADS, t, HEAD), dtype=np.float32))
          for _ in range(2)]
    angle = np.outer(np.arange(t), 1.0 / 500000.0 ** (np.arange(HEAD // 2) * 2 / HEAD)).astype(np.float32)
    io = sess.io_binding()
    io.bind_cpu_input("qkv", rng.standard_normal((1, 1, (HEADS + 2 * KV_HEADS) * HEAD), dtype=np.float32))
    io.bind_ortvalue_input("past_k", kv[0])
    io.bind_ortvalue_input("past_v", kv[1])
    io.bind_cpu_input("seqlens_k", np.array([t - 1], np.int32))
    io.bind_cpu_input("total", np.array(t, np.int32))
    io.bind_cpu_input("cos", np.cos(angle))
    io.bind_cpu_input("sin", np.sin(angle))
    io.bind_output("out")
    io.bind_ortvalue_output("present_k", kv[0])
    io.bind_ortvalue_output("present_v", kv[1])
    for _ in range(20):
        sess.run_with_iobinding(io)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(100):
            sess.run_with_iobinding(io)
        best = min(best, (time.perf_counter() - t0) / 100)
    return best


def genai_decode(folder: str, threads: int, t: int, new: int) -> float:
    """Best decode tokens/s of `new` greedy tokens after a (t - 1)-token prompt."""
    import onnxruntime_genai as og

    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    best = 0.0
    for _ in range(4):  # the first is a warm-up
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=t - 1 + new + 1, min_length=t - 1 + new + 1, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(np.arange(1, t, dtype=np.int32))
        gen.generate_next_token()
        t0 = time.perf_counter()
        for _ in range(new):
            gen.generate_next_token()
        best = max(best, new / (time.perf_counter() - t0))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="8,64,160,256,512,1024,2048")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--library", default=None, help="also time bitnet.onnx::GroupQueryAttention from it")
    ap.add_argument("--folder", default=None, help="a genai folder to decode at the same contexts")
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()
    contexts = [int(x) for x in a.contexts.split(",")]
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, {a.threads} threads, GroupQueryAttention at 2B-4T's shape "
          f"({HEADS} query heads, {KV_HEADS} key/value heads of {HEAD}), {a.layers} layers")
    print()
    head = "| context | attention per call (us) | x layers (ms per step) | key/value GB/s |"
    rule = "|---|---|---|---|"
    if a.library:
        head += " ours per call (us) | x layers (ms per step) | key/value GB/s |"
        rule += "---|---|---|"
    if a.folder:
        head += " decode tok/s | ms per token |"
        rule += "---|---|"
    print(head)
    print(rule)
    for t in contexts:
        s = time_gqa(a.threads, t)
        kv_bytes = a.layers * t * KV_HEADS * HEAD * 4 * 2
        row = f"| {t} | {s * 1e6:.1f} | {s * a.layers * 1e3:.2f} | {kv_bytes / (s * a.layers) / 1e9:.1f} |"
        if a.library:
            o = time_gqa(a.threads, t, a.library)
            row += f" {o * 1e6:.1f} | {o * a.layers * 1e3:.2f} | {kv_bytes / (o * a.layers) / 1e9:.1f} |"
        if a.folder:
            d = genai_decode(a.folder, a.threads, t, a.new_tokens)
            row += f" {d:.2f} | {1e3 / d:.1f} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
