"""llama.cpp TQ2_0 on bench/genai_speed.py's random 2B-4T-shaped checkpoint, for
bench/decode_kernel.py --llama-cpp (a library of that script; not a test).

Everything comes from PyPI (bench/requirements-llamacpp.txt):

- llama.cpp's source: the copy vendored in llama-cpp-python's sdist (LLAMA_CPP_PYTHON below,
  checked against SDIST_SHA256; its CHANGELOG names the llama.cpp commit, LLAMA_CPP_COMMIT).
  `ensure_build` downloads it with `pip download --no-binary`, builds the CPU backend with pip's
  cmake and the machine's C/C++ compiler (-DGGML_NATIVE=ON: -march=native; OpenMP threads),
  targets llama-bench, llama-quantize and llama-debug, under `nice -n 19`, once: a rerun finds
  WORK/llama.cpp-build/bin and its stamp and skips the build.
- gguf (gguf-py) at the version of the vendored gguf-py (0.19.0), to write and read the file.

`make_gguf` (`write_f16_gguf`, then llama-quantize) writes the checkpoint as a GGUF of llama.cpp's `bitnet` architecture with our own
writer (gguf-py's GGUFWriter, streaming: one tensor in memory at a time), not the vendored
convert_hf_to_gguf.py: that converter reads neither the packed uint8 + weight_scale form (without
a float copy of the whole model and torch) nor a tokenizer.json without a sentencepiece model.
Every ternary weight goes straight from its codes to TQ2_0 blocks (256 weights: 64 bytes of
2-bit codes + an f16 scale, 2.06 bits per weight; every block's scale is the tensor's
1 / weight_scale in f16, so the weights read back as codes / weight_scale, BitLinear's effective
weight (it divides its output by weight_scale), to f16 precision);
the norms are F32 and the tied embedding F16. `llama-quantize ... TQ2_0` then turns the embedding
into Q6_K (llama.cpp's own choice for a tied TQ2_0 model's head) and copies the TQ2_0 tensors
unchanged (a tensor already of the target type is not requantized). The byte-level vocabulary of
the checkpoint's tokenizer.json goes in as a `gpt2` tokenizer without merges (llama-bench feeds
random token ids; llama-debug tokenizes a short text byte by byte; one placeholder merge, as
llama.cpp requires the key).

llama.cpp's `bitnet` graph is 1bitLLM's bitnet_b1_58: SiLU-gated FFN where 2B-4T uses squared
ReLU, and its matrix products quantize activations to Q8_K (int8 blocks of 256 with a float
scale each) where BitNet quantizes per token. The bytes read and the work per token are the same
as 2B-4T's; the outputs are not (`check_logits` compares against a numpy model of llama.cpp's
graph, not of 2B-4T).

`bench` runs llama-bench twice: `-p P -n 0` (prompt tok/s) and `-p 0 -n N -d P` (decode tok/s
of N tokens after a P-token context, as decode_kernel.py measures onnxruntime-genai after its
prompt), each with -r reps after llama-bench's own warm-up run, -t threads.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import genai_speed as gs  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098"  # the sdist's CHANGELOG: "update llama.cpp to ggml-org/llama.cpp@0c1e57098"
TARGETS = ("llama-bench", "llama-quantize", "llama-debug")
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON", "-DGGML_CUDA=OFF",
               "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_SERVER=OFF",
               "-DBUILD_SHARED_LIBS=OFF"]
GGUF_VERSION = 3  # of what write_f16_gguf writes; part of the GGUF's stamp

QK_K = 256  # weights per TQ2_0 / Q6_K block
TQ2_0_BLOCK = 66  # bytes: 64 of codes, 2 of f16 scale
Q6_K_BLOCK = 210


def ensure_build(work: str, jobs: int = 2, sdist: str | None = None) -> dict:
    """llama-bench, llama-quantize and llama-debug in WORK/llama.cpp-build/bin, built from the
    pinned sdist unless a build from it is there already. Returns their paths and the source."""
    build = os.path.join(work, "llama.cpp-build")
    stamp_path = os.path.join(build, "bitnet-onnx-bench.json")
    stamp = dict(sdist_sha256=SDIST_SHA256, cmake=CMAKE_FLAGS, targets=list(TARGETS))
    out = {t: os.path.join(build, "bin", t) for t in TARGETS}
    src = os.path.join(work, f"llama_cpp_python-{LLAMA_CPP_PYTHON}", "vendor", "llama.cpp")
    out.update(src=src, build=build, sdist=f"llama-cpp-python {LLAMA_CPP_PYTHON}", commit=LLAMA_CPP_COMMIT)
    try:
        with open(stamp_path) as f:
            if json.load(f) == stamp and all(os.access(out[t], os.X_OK) for t in TARGETS):
                return out
    except (OSError, ValueError):
        pass
    if sdist is None:
        sdist = os.path.join(work, "sdist", SDIST)
        if not os.path.exists(sdist):
            # --no-binary for this package only (with :all: pip would build cmake for the sdist's
            # build requirements); --no-deps: only the archive is wanted, nothing is installed.
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                            "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d",
                            os.path.dirname(sdist)], check=True)
    digest = gs.sha256(sdist)
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest}, not the pinned {SDIST_SHA256}")
    if not os.path.isdir(src):
        with tarfile.open(sdist) as t:
            t.extractall(work, filter="data")
    if not os.path.isfile(os.path.join(src, "CMakeLists.txt")):
        raise SystemExit(f"{sdist}: no vendored llama.cpp at {src}")
    cmake = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if cmake is None:
        raise SystemExit("no cmake: pip install -r bench/requirements-llamacpp.txt")
    t0 = time.time()
    log = os.path.join(work, "llama.cpp-build.log")
    with open(log, "w") as f:
        for cmd in ([cmake, "-S", src, "-B", build] + CMAKE_FLAGS,
                    ["nice", "-n", "19", cmake, "--build", build, "--target", *TARGETS, "-j", str(jobs)]):
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"llama.cpp build failed: {' '.join(cmd)} (see {log})")
    for t in TARGETS:
        if not os.access(out[t], os.X_OK):
            raise SystemExit(f"llama.cpp build: {out[t]} missing (see {log})")
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    print(f"built llama.cpp {LLAMA_CPP_COMMIT} (llama-cpp-python {LLAMA_CPP_PYTHON} sdist) in "
          f"{time.time() - t0:.0f} s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# The GGUF.

LINEARS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
NORMS = {"input_layernorm": "attn_norm", "self_attn.attn_sub_norm": "attn_sub_norm",
         "post_attention_layernorm": "ffn_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}


def gguf_name(hf: str) -> str:
    """GGUF tensor name of a checkpoint tensor (llama.cpp's names for the bitnet architecture)."""
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    parts = hf.split(".")
    if parts[:2] == ["model", "layers"] and hf.endswith(".weight"):
        rest = ".".join(parts[3:-1])
        short = rest.split(".")[-1]
        if short in LINEARS:
            return f"blk.{parts[2]}.{LINEARS[short]}.weight"
        if rest in NORMS:
            return f"blk.{parts[2]}.{NORMS[rest]}.weight"
    raise SystemExit(f"checkpoint tensor {hf}: no GGUF name for it")


def tq2_0(codes: np.ndarray, d: np.float16) -> np.ndarray:
    """int8 ternary codes [rows, K] (K a multiple of 256) -> TQ2_0 bytes [rows, K / 256 * 66],
    every block with scale d. ggml's block_tq2_0: byte 32 h + m of a block holds weights
    128 h + 32 n + m (n = 0..3) in bits 2n..2n+1 as code + 1; then the f16 scale."""
    rows, k = codes.shape
    if k % QK_K:
        raise SystemExit(f"TQ2_0 needs rows of whole 256-weight blocks, not {k}")
    q = (codes + 1).astype(np.uint8).reshape(rows, k // QK_K, 2, 4, 32)
    qs = q[:, :, :, 0] | (q[:, :, :, 1] << 2) | (q[:, :, :, 2] << 4) | (q[:, :, :, 3] << 6)
    scale = np.full((rows, k // QK_K, 1), d, np.float16).view(np.uint8)
    return np.concatenate([qs.reshape(rows, k // QK_K, 64), scale], axis=2).reshape(rows, -1)


def vocab(ckpt: str, size: int):
    """(tokens, token types) from the checkpoint's byte-level BPE tokenizer.json."""
    import gguf

    with open(os.path.join(ckpt, "tokenizer.json")) as f:
        tok = json.load(f)
    by_id = {i: (t, gguf.TokenType.NORMAL) for t, i in tok["model"]["vocab"].items()}
    for a in tok.get("added_tokens", []):
        by_id[a["id"]] = (a["content"], gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
    if sorted(by_id) != list(range(size)):
        raise SystemExit(f"{ckpt}/tokenizer.json: ids are not 0..{size - 1}")
    return [by_id[i][0] for i in range(size)], [int(by_id[i][1]) for i in range(size)]


def write_f16_gguf(ckpt: str, path: str) -> None:
    """The checkpoint as a bitnet GGUF: ternary layers TQ2_0, norms F32, embedding F16."""
    import gguf

    with open(os.path.join(ckpt, "config.json")) as f:
        cfg = json.load(f)
    tensors = gs.read_safetensors(os.path.join(ckpt, "model.safetensors"))
    w = gguf.GGUFWriter(path, "bitnet")
    w.add_name("bitnet-b1.58-2B-4T shape, random weights (bitnet-onnx bench)")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens, types = vocab(ckpt, cfg["vocab_size"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    # The tokenizer has no merges, but llama.cpp requires the key and gguf-py writes no empty
    # array: one merge of the bytes 0x00 0x00 (never adjacent in a text prompt; its result is no
    # token, so llama.cpp would fall back to the two byte tokens anyway).
    if "\u0100" not in tokens:  # byte 0x00 in the byte-level alphabet
        raise SystemExit(f"{ckpt}/tokenizer.json: not a byte-level vocabulary (no token for byte 0x00)")
    w.add_token_merges(["\u0100 \u0100"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(True)

    plan = []  # (gguf name, function returning the bytes)
    for name, (dtype, shape, raw) in tensors.items():
        if name.endswith(".weight_scale"):
            continue
        if dtype == "U8":
            scale = float(gs.from_bf16(tensors[name + "_scale"][2].view(np.uint16))[0])
            d = np.float16(1.0 / scale)
            rows, k = shape[0] * 4, shape[1]
            w.add_tensor_info(gguf_name(name), (rows, k // QK_K * TQ2_0_BLOCK), np.dtype(np.uint8),
                              rows * k // QK_K * TQ2_0_BLOCK, raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
            plan.append(lambda raw=raw, shape=shape, d=d: tq2_0(gs.unpack_codes(raw.reshape(shape)), d))
        elif dtype == "BF16" and name == "model.embed_tokens.weight":
            w.add_tensor_info(gguf_name(name), shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
            plan.append(lambda raw=raw, shape=shape:
                        gs.from_bf16(raw.view(np.uint16)).astype(np.float16).reshape(shape))
        elif dtype == "BF16" and len(shape) == 1:
            w.add_tensor_info(gguf_name(name), shape, np.dtype(np.float32), shape[0] * 4)
            plan.append(lambda raw=raw: gs.from_bf16(raw.view(np.uint16)))
        else:
            raise SystemExit(f"{ckpt}: tensor {name} ({dtype} {shape}) is not of the packed 2B-4T form")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for make in plan:
        w.write_tensor_data(make())
    w.close()


def make_gguf(ckpt: str, work: str, tools: dict) -> str:
    """WORK/<ckpt name>.tq2_0.gguf (TQ2_0 layers, Q6_K tied embedding/head), made once per
    checkpoint: reused while its stamp (the checkpoint's stamp + GGUF_VERSION) matches."""
    out = os.path.join(work, os.path.basename(ckpt.rstrip("/")) + ".tq2_0.gguf")
    with open(os.path.join(ckpt, gs.STAMP)) as f:
        stamp = dict(json.load(f), gguf_version=GGUF_VERSION, llama_cpp=LLAMA_CPP_COMMIT)
    try:
        with open(out + ".json") as f:
            if json.load(f) == stamp and os.path.exists(out):
                print(f"reusing {out}", flush=True)
                return out
    except (OSError, ValueError):
        pass
    f16 = out + ".f16.tmp"
    tmp = out + ".tmp"
    t0 = time.time()
    write_f16_gguf(ckpt, f16)
    t1 = time.time()
    r = subprocess.run([tools["llama-quantize"], f16, tmp, "TQ2_0", "2"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-quantize failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    os.remove(f16)
    os.replace(tmp, out)
    with open(out + ".json", "w") as f:
        json.dump(stamp, f)
    print(f"wrote {out} ({gs.mib(os.path.getsize(out))} MiB): gguf {t1 - t0:.0f} s, llama-quantize "
          f"{time.time() - t1:.0f} s", flush=True)
    return out


def gguf_bytes(path: str) -> dict:
    """Tensor bytes by role, as read from the file, checked against the block sizes: ternary
    (the TQ2_0 layers), head (the tied embedding, read in full by the head each token; its
    one-row embedding read is left out), other (norms). per_token = all three."""
    import gguf

    out = dict(ternary=0, head=0, other=0, types={})
    for t in gguf.GGUFReader(path).tensors:
        kind = t.tensor_type.name
        n = int(t.n_elements)
        want = {"TQ2_0": n // QK_K * TQ2_0_BLOCK, "Q6_K": n // QK_K * Q6_K_BLOCK, "F32": 4 * n}.get(kind)
        if want is None or int(t.n_bytes) != want:
            raise SystemExit(f"{path}: tensor {t.name} is {kind}, {t.n_bytes} bytes (expected TQ2_0, Q6_K or F32)")
        role = "ternary" if kind == "TQ2_0" else "head" if t.name == "token_embd.weight" else "other"
        out[role] += int(t.n_bytes)
        out["types"].setdefault(kind, 0)
        out["types"][kind] += 1
    if out["head"] == 0:
        raise SystemExit(f"{path}: no token_embd.weight")
    out["per_token"] = out["ternary"] + out["head"] + out["other"]
    return out


def check_weights(ckpt: str, path: str, names=("model.layers.0.self_attn.k_proj.weight",
                                               "model.layers.0.mlp.down_proj.weight")) -> None:
    """A few TQ2_0 tensors read back with gguf-py's own dequantizer must equal codes / scale
    (in f16) of the checkpoint, and our block packing must equal gguf-py's TQ2_0 quantizer."""
    import gguf
    from gguf.quants import dequantize, quantize

    tensors = gs.read_safetensors(os.path.join(ckpt, "model.safetensors"))
    read = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for name in names:
        _, shape, raw = tensors[name]
        codes = gs.unpack_codes(raw.reshape(shape))
        d = np.float16(1.0 / float(gs.from_bf16(tensors[name + "_scale"][2].view(np.uint16))[0]))
        want = codes.astype(np.float32) * np.float32(d)
        t = read[gguf_name(name)]
        got = dequantize(t.data, t.tensor_type).reshape(want.shape)
        if not np.array_equal(got, want):
            raise SystemExit(f"{path}: {t.name} does not read back as the checkpoint's codes / scale")
        ours = tq2_0(codes[:64], d)
        theirs = quantize(want[:64], gguf.GGMLQuantizationType.TQ2_0)
        if not np.array_equal(ours, theirs):
            raise SystemExit(f"TQ2_0 packing of {name} differs from gguf-py's quantizer")


# ---------------------------------------------------------------------------------------------
# Timing.


def llama_bench(tools: dict, gguf_path: str, threads: int, args: list[str]) -> dict:
    cmd = [tools["llama-bench"], "-m", gguf_path, "-t", str(threads), "-o", "json"] + args
    status, _, peak, stdout, stderr, others = gs.run_timed(cmd)
    if status != 0:
        raise SystemExit(f"llama-bench failed (exit {status}): {' '.join(cmd)}\n{stderr[-3000:]}")
    rows = json.loads(stdout[stdout.index("["):])
    if len(rows) != 1:
        raise SystemExit(f"llama-bench: {len(rows)} result rows, expected 1: {' '.join(cmd)}")
    return dict(rows[0], peak=peak, others=others)


def bench(tools: dict, gguf_path: str, threads: int, n_prompt: int, n_new: int, reps: int) -> dict:
    """Prompt and decode tok/s of every rep (llama-bench's samples_ts), peak RSS, others' CPU."""
    p = llama_bench(tools, gguf_path, threads, ["-p", str(n_prompt), "-n", "0", "-r", str(reps)])
    d = llama_bench(tools, gguf_path, threads, ["-p", "0", "-n", str(n_new), "-d", str(n_prompt), "-r", str(reps)])
    return dict(prompt=p["samples_ts"], decode=d["samples_ts"], peak=max(p["peak"], d["peak"]),
                others=max(p["others"], d["others"]), build_commit=p.get("build_commit"),
                cpu_info=p.get("cpu_info"), model_type=p.get("model_type"), model_size=p.get("model_size"))


# ---------------------------------------------------------------------------------------------
# Logits: llama.cpp's against a numpy model of its own bitnet graph on the file's weights.


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def q8_k(x: np.ndarray) -> np.ndarray:
    """x [rows, K] as llama.cpp's CPU backend feeds it to a TQ2_0 or Q6_K product: Q8_K blocks of
    256 (ggml's quantize_row_q8_K_ref, in float32: the value of largest magnitude m gives
    iscale = -127 / m, q = min(127, round_half_even(iscale * x)), d = 1 / iscale), dequantized."""
    rows, k = x.shape
    b = x.astype(np.float32).reshape(rows, k // QK_K, QK_K)
    m = np.take_along_axis(b, np.abs(b).argmax(axis=-1)[..., None], axis=-1)
    with np.errstate(divide="ignore"):
        iscale = np.where(m == 0, np.float32(0), np.float32(-127) / m).astype(np.float32)
        d = np.where(m == 0, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    q = np.minimum(np.rint(iscale * b), 127)
    return (q * d).reshape(rows, k).astype(np.float64)


def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def reference_logits(path: str, tokens: list[int], variants=(("silu", False),)) -> dict:
    """{(act, emulate): the last token's logits} of llama.cpp's `bitnet` graph (src/models/bitnet.cpp), in float64
    numpy, on the GGUF's weights dequantized by gguf-py: RMS norm; q, k, v; NEOX rotary (pairs
    i and i + 64 of each 128-wide head, as transformers' rotate_half); causal GQA attention
    (softmax of q.k / sqrt(128)); attn_sub_norm; o; residual; RMS norm; act(gate) * up
    (act = silu in llama.cpp; relu2 is 2B-4T's, for a check that must fail); ffn_sub_norm;
    down; residual; output norm; the tied table as head. With `emulate`, every product's
    activations go through q8_k first and q, k, v are rounded to f16 (llama.cpp's F16 KV cache;
    its CPU flash attention converts q to f16), as llama.cpp does. Each weight is dequantized once
    for all variants."""
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(path)
    kv = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("tokenizer.")}
    t = {x.name: x for x in r.tensors}

    def weight(name):
        x = t[name]
        return dequantize(x.data, x.tensor_type).reshape([int(n) for n in reversed(x.shape)]).astype(np.float64)

    layers, eps = kv["bitnet.block_count"], kv["bitnet.attention.layer_norm_rms_epsilon"]
    n_head, n_kv = kv["bitnet.attention.head_count"], kv["bitnet.attention.head_count_kv"]
    theta = kv["bitnet.rope.freq_base"]
    embd = weight("token_embd.weight")
    hd = embd.shape[1] // n_head
    xs = {v: embd[tokens] for v in variants}
    n = len(tokens)
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(v):  # [n, heads, hd]
        a, b = v[..., : hd // 2], v[..., hd // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(layers):
        p = f"blk.{i}."
        w = {k: weight(f"{p}{k}.weight") for k in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_sub_norm",
                                                   "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                                                   "ffn_sub_norm", "ffn_down")}
        for (act, emulate), x in xs.items():
            q8, half = (q8_k, f16) if emulate else (np.asarray, np.asarray)
            h = q8(rms_norm(x, w["attn_norm"], eps))
            q = half(rope((h @ w["attn_q"].T).reshape(n, n_head, hd)))
            k = half(rope((h @ w["attn_k"].T).reshape(n, n_kv, hd)))
            v = half((h @ w["attn_v"].T).reshape(n, n_kv, hd))
            k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            a = np.einsum("hqk,khd->qhd", s, v).reshape(n, -1)
            x = x + q8(rms_norm(a, w["attn_sub_norm"], eps)) @ w["attn_output"].T
            h = q8(rms_norm(x, w["ffn_norm"], eps))
            g, u = h @ w["ffn_gate"].T, h @ w["ffn_up"].T
            f = (g / (1 + np.exp(-g)) if act == "silu" else np.maximum(g, 0) ** 2) * u
            xs[(act, emulate)] = x + q8(rms_norm(f, w["ffn_sub_norm"], eps)) @ w["ffn_down"].T
    out_norm = weight("output_norm.weight")
    return {v: (q8_k if v[1] else np.asarray)(rms_norm(x[-1:], out_norm, eps))[0] @ embd.T
            for v, x in xs.items()}


def check_logits(tools: dict, path: str, work: str, prompt: str = "BitNet b1.58") -> dict:
    """llama-debug's last-token logits for `prompt` against reference_logits on the same token ids.
    llama.cpp rounds activations to Q8_K blocks, and on random weights 30 layers amplify such
    rounding, so the yardstick is measured in the same run: `noise`, how far the numpy model
    moves when it rounds activations the same way (emulate=True against False). Passes when
    llama.cpp is within 2 x noise of the float model (relative L2 of the logits); the float model
    with relu2 in place of SiLU (a different model) is printed for scale."""
    out = os.path.join(work, "llama-debug")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [tools["llama-debug"], "-m", path, "-p", prompt, "--save-logits", "--logits-output-dir", out,
           "-t", "2", "-c", "256", "--temp", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    base = os.path.join(out, "llamacpp-" + os.path.splitext(os.path.basename(path))[0])
    if r.returncode != 0 or not os.path.exists(base + ".bin"):
        raise SystemExit(f"llama-debug failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    got = np.fromfile(base + ".bin", dtype=np.float32).astype(np.float64)
    tokens = np.fromfile(base + "-tokens.bin", dtype=np.int32).tolist()
    ref = reference_logits(path, tokens, (("silu", False), ("silu", True), ("relu2", False)))
    if any(v.shape != got.shape for v in ref.values()):
        raise SystemExit(f"llama-debug: {got.shape[0]} logits, reference {ref['silu', False].shape[0]}")

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    exact = ref["silu", False]
    res = dict(tokens=len(tokens), error=rel(got, exact), noise=rel(ref["silu", True], exact),
               relu2=rel(got, ref["relu2", False]), argmax_equal=bool(np.argmax(got) == np.argmax(exact)))
    print(f"llama.cpp logits ({len(tokens)} tokens of {prompt!r}) against a float numpy model of its graph: "
          f"relative L2 {res['error']:.4f}; the model's own change under Q8_K activations {res['noise']:.4f}; "
          f"against the model with relu2 (2B-4T's FFN) {res['relu2']:.4f}; same argmax {res['argmax_equal']}",
          flush=True)
    if not res["error"] < 2 * res["noise"]:
        raise SystemExit(f"llama.cpp's logits differ from the numpy model of its graph by {res['error']:.4f}, "
                         f"more than twice its Q8_K rounding noise {res['noise']:.4f}")
    return res
