#!/usr/bin/env python3
"""Generation speed at microsoft/bitnet-b1.58-2B-4T shape: transformers, llama.cpp TQ2_0 and
`bitnet-onnx build` + onnxruntime-genai, on one random checkpoint, in one run on one machine
(not a test; nothing it writes is committed).

    nice -n 10 .venv-genai/bin/python bench/genai_speed.py --workdir DIR \
        [--binary target/release/bitnet-onnx] [--layers 4] [--threads 2] [--seed 0] \
        [--prompt-tokens 128] [--new-tokens 128] [--hf-new-tokens N] [--hf-dtype auto] \
        [--reps 3] [--llama-build DIR/llama.cpp-build] [--llama-sdist FILE] \
        [--gguf-from float] [--gguf-via convert,quantize] [--build-flags '...'] \
        [--wait-idle S] [--skip-hf] [--skip-llama] [--skip-ours]

Needs, beside torch, transformers, accelerate, tokenizers and numpy: onnxruntime-genai==0.18.0
(unless --skip-ours), sentencepiece (the llama.cpp converter), cmake (pip's, for a first
llama.cpp build) and a C++ compiler; GNU time at /usr/bin/time.

1. Checkpoint (DIR/ckpt-<N>l, written once per --layers/--seed): the config of
   microsoft/bitnet-b1.58-2B-4T (hidden 2560, FFN 6912, 20 heads / 5 KV heads of 128, vocab
   128256, tied embeddings, relu2, rope_theta 500000, rms_norm_eps 1e-5, 4096 positions,
   torch_dtype bfloat16) with N decoder layers, in its packed form: quantization_config
   {quant_method bitnet, linear_class bitlinear, quantization_mode offline}; each linear weight
   uint8 [out/4, in] holding four ternary rows per byte (row i*out/4 + r in bits 2i..2i+1 of
   byte row r, code + 1), as transformers.integrations.bitnet.unpack_weights reads it, and a
   bf16 [1] weight_scale = 1 / absmean, by which BitLinear divides its output (the effective
   weight is codes / weight_scale). Codes uniform over {-1, 0, 1}; weight_scale 1 / (sigma
   sqrt(2/pi)), the absmean of an N(0, sigma) matrix, sigma = 0.02 exp(0.1 z) per tensor;
   embedding N(0, 0.02), norms 1 + 0.1 z, all bf16. Written tensor by tensor into a hand-made
   safetensors file (8-byte header length, JSON header, raw data), never the whole model in
   memory; seeded (numpy default_rng([seed, tensor index])). Plus a byte-level BPE
   tokenizer.json (256 byte tokens, no merges, unused fillers up to 128000, then
   <|begin_of_text|>, <|end_of_text|> and reserved specials to 128256) that transformers and
   onnxruntime-genai both load; every system is fed the same token ids
   (default_rng(seed) in [3, 128000)), so the tokenizer only has to load.

2. transformers: from_pretrained(ckpt) with no dtype (what a user gets: transformers 5 reads
   "auto", i.e. the config's bfloat16; --hf-dtype float32 for float32), the BitLinear
   helpers' torch.compile left on (the default), torch.set_num_threads(--threads); one warm-up
   generate (the prompt, 2 new tokens: it pays the compilations), then --hf-reps (default 1)
   greedy generates of --hf-new-tokens (default --new-tokens) with min_new_tokens equal,
   timed by a streamer: prompt tok/s = prompt tokens / time to the first new token, decode
   tok/s = (new - 1) / the rest.

3. llama.cpp: built once (cached in --llama-build; reruns skip it) from the llama.cpp vendored
   in the llama-cpp-python sdist (`pip download --no-binary llama-cpp-python --no-deps
   llama-cpp-python==0.3.36`, or --llama-sdist), CPU only, -DGGML_NATIVE=ON, targets llama-bench and
   llama-quantize. The vendored convert_hf_to_gguf.py registers BitNetForCausalLM (its
   BitnetModel, arch `bitnet`) but maps BitNet's sub-norms only under 1bitLLM's names
   (`self_attn.inner_attn_ln`, `mlp.ffn_layernorm`) and reads only a sentencepiece
   tokenizer.model, so a converter-ready copy is written (DIR/ckpt-<N>l-gguf-src-<form>,
   streaming): sub-norms renamed, a small sentencepiece tokenizer.model (the converter pads
   its vocab to 128256 with [PADi]) and, with --gguf-from float (default), the ternary weights
   unpacked to float32 without quantization_config. BitnetModel.weight_quant re-ternarises
   every linear weight as round(W / mean|W|).clamp(-1, 1) * mean|W|, which for an already
   ternary W = codes * s gives codes * s * (its nonzero fraction): the copy therefore stores
   codes * s / (nonzero fraction), for which weight_quant returns codes * s, the checkpoint's
   own weights (TQ2_0's per-block scale then reads back as exactly s). With --gguf-from
   packed the copy keeps the packed uint8 + weight_scale tensors and the quantization_config:
   this converter's dequant_model unpacks them itself (only with --no-lazy: lazily it fails,
   "Tensor on device cpu is not on the expected device meta"), and every scale comes out
   multiplied by the nonzero fraction, about 2/3 here. Two TQ2_0 routes (--gguf-via):
   `convert`, convert_hf_to_gguf.py --outtype tq2_0 (token embedding = tied head F16, norms
   F32: the converter's choice), and `quantize`, --outtype f16 then llama-quantize TQ2_0
   (token embedding = head Q6_K: llama-quantize's choice); each gguf's tensor types are read
   back with the vendored gguf-py and every linear weight must be TQ2_0. Then `llama-bench
   -m X.gguf -t T -p P -n N -r --reps -o json` (mean over reps, after its warm-up); the
   `quantize` gguf is the "vs llama.cpp" reference when measured. llama.cpp's bitnet graph
   uses SiLU where 2B-4T uses relu2: the same cost, not the same outputs.

4. Ours (unless --skip-ours): `BINARY build CKPT -o DIR/genai-<N>l [--build-flags]` under
   GNU time (wall, peak RSS), then onnxruntime_genai: og.Config(folder) with
   config.overlay('{"model": {"decoder": {"session_options": {"intra_op_num_threads": T}}}}')
   (0.18.0's og.Config.overlay merges that JSON over genai_config.json, which is left as it
   is; checked: each intra-op thread asked for adds one OS thread), og.Model(config), GeneratorParams with
   max_length = min_length = prompt + new, do_sample False; append_tokens(prompt) then
   generate_next_token() --new-tokens times. The first generate_next_token only picks from
   the logits append_tokens computed, so prompt = append_tokens + that first pick, decode =
   (new - 1) / the other calls (each one forward), as for transformers. One warm-up
   generation, then --reps, median.

Every model runs in a process of its own under GNU time (/usr/bin/time %M: peak RSS).
Prints the CPU model and flags, versions, then one table (system | prompt tok/s | decode
tok/s | vs transformers | vs llama.cpp: medians over runs with their range, ratios of
medians as prompt / decode, higher = faster), each system's runs, peak RSS and the CPU that
other processes took meanwhile (/proc/stat's busy time less the run's own, in cores: on a
shared machine the work of others shows there and in a wide range; --wait-idle S waits up
to S s before each timed run for them to go under 0.2 cores), and the conversion costs
(wall time, peak RSS, output size) of our build and of the llama.cpp conversion. No network
at run time except the sdist download of a first llama.cpp build.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GNU_TIME = ["/usr/bin/time", "-f", "maxrss_kib=%M"]
STAMP = "genai_speed.json"  # what a checkpoint / copy was written from; reused when it matches
FORMAT_VERSION = 1

# microsoft/bitnet-b1.58-2B-4T's config.json (its auto_map left out), less the layer count.
CONFIG_2B4T = dict(
    architectures=["BitNetForCausalLM"],
    model_type="bitnet",
    vocab_size=128256,
    hidden_size=2560,
    intermediate_size=6912,
    num_hidden_layers=30,
    num_attention_heads=20,
    num_key_value_heads=5,
    hidden_act="relu2",
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    attention_bias=False,
    attention_dropout=0.0,
    initializer_range=0.02,
    bos_token_id=128000,
    eos_token_id=128001,
    torch_dtype="bfloat16",
    use_cache=True,
    quantization_config=dict(quant_method="bitnet", linear_class="bitlinear", quantization_mode="offline"),
)
BOS, EOS, N_BASE_VOCAB = 128000, 128001, 128000
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# BitNet's sub-norms under the names the llama.cpp converter maps (1bitLLM's).
GGUF_RENAMES = {".self_attn.attn_sub_norm.": ".self_attn.inner_attn_ln.",
                ".mlp.ffn_sub_norm.": ".mlp.ffn_layernorm."}
GGUF_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ST_DTYPES = {"BF16": 2, "F32": 4, "U8": 1}


# The llama-cpp-python release whose vendored llama.cpp is measured.
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"

def config_for(layers: int) -> dict:
    return dict(CONFIG_2B4T, num_hidden_layers=layers)


# ---------------------------------------------------------------------------------------------
# safetensors by hand: streaming writer, memory-mapped reader.


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: str, specs) -> None:
    """specs: [(name, dtype, shape, chunks)], chunks() yielding numpy arrays whose bytes, in
    order, are the tensor's. The header is written first, then each tensor as it is made."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, _ in specs:
        n = int(np.prod(shape)) * ST_DTYPES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, _, _, chunks in specs:
            start, (b, e) = f.tell(), header[name]["data_offsets"]
            for chunk in chunks():
                f.write(np.ascontiguousarray(chunk).tobytes())
            if f.tell() - start != e - b:
                raise SystemExit(f"{path}: {name} wrote {f.tell() - start} bytes, not {e - b}")


def read_safetensors(path: str):
    """{name: (dtype, shape, raw uint8 memmap)}."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    return {k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


# ---------------------------------------------------------------------------------------------
# 1. The packed checkpoint.


def tensor_specs(config: dict, seed: int):
    """The packed checkpoint's tensors, each drawn from its own default_rng([seed, index])."""
    h, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd
    outs_ins = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
                "gate_proj": (ff, h), "up_proj": (ff, h), "down_proj": (h, ff)}
    specs = []

    def add(name, dtype, shape, make):
        rng = np.random.default_rng([seed, len(specs)])
        specs.append((name, dtype, shape, lambda rng=rng, make=make, shape=shape: make(rng, shape)))

    def embedding(rng, shape, rows=4096):
        for r in range(0, shape[0], rows):
            n = min(rows, shape[0] - r)
            yield to_bf16(rng.standard_normal((n, shape[1]), dtype=np.float32) * np.float32(0.02))

    def norm(rng, shape):
        yield to_bf16(1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32))

    def packed(rng, shape):
        # Four ternary rows per byte, code + 1 in {0, 1, 2}: pack_weights' layout.
        q = rng.integers(0, 3, size=(4, *shape), dtype=np.uint8)
        yield q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6)

    def weight_scale(rng, shape):
        sigma = 0.02 * np.exp(0.1 * rng.standard_normal())
        yield to_bf16(np.full(shape, 1.0 / (sigma * np.sqrt(2.0 / np.pi)), np.float32))

    add("model.embed_tokens.weight", "BF16", (v, h), embedding)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", "BF16", (h,), norm)
        for part, names in (("self_attn", ATTN), ("mlp", MLP)):
            for lin in names:
                out, inp = outs_ins[lin]
                add(f"{p}{part}.{lin}.weight", "U8", (out // 4, inp), packed)
                add(f"{p}{part}.{lin}.weight_scale", "BF16", (1,), weight_scale)
            if part == "self_attn":
                add(p + "self_attn.attn_sub_norm.weight", "BF16", (h,), norm)
                add(p + "post_attention_layernorm.weight", "BF16", (h,), norm)
        add(p + "mlp.ffn_sub_norm.weight", "BF16", (ff,), norm)
    add("model.norm.weight", "BF16", (h,), norm)
    return specs


def write_tokenizer(path: str, vocab_size: int) -> None:
    """A byte-level BPE tokenizer.json with vocab_size ids: the 256 byte tokens, unused fillers
    to 128000, then the Llama-3 specials (<|begin_of_text|> 128000, <|end_of_text|> 128001)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for i in range(len(vocab), N_BASE_VOCAB):
        vocab[f"<|filler_{i}|>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    specials += [f"<|reserved_special_token_{i}|>" for i in range(vocab_size - N_BASE_VOCAB - 2)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if tok.get_vocab_size() != vocab_size or tok.token_to_id(specials[1]) != EOS:
        raise SystemExit(f"tokenizer: {tok.get_vocab_size()} ids, eos {tok.token_to_id(specials[1])}")
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(dict(tokenizer_class="PreTrainedTokenizerFast", bos_token=specials[0],
                       eos_token=specials[1], model_max_length=4096, clean_up_tokenization_spaces=False),
                  f, indent=2)
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump(dict(bos_token=specials[0], eos_token=specials[1]), f, indent=2)


def write_checkpoint(path: str, layers: int, seed: int) -> None:
    config = config_for(layers)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_safetensors(os.path.join(tmp, "model.safetensors"), tensor_specs(config, seed))
    write_tokenizer(tmp, config["vocab_size"])
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump(dict(bos_token_id=BOS, eos_token_id=EOS, do_sample=False), f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_stamp(tmp, kind="checkpoint", layers=layers, seed=seed)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def sha256(path: str) -> str:
    """A file's sha256 (hex), read in 1 MiB chunks: what stamps record of binaries and sources."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_stamp(path: str, **what) -> None:
    with open(os.path.join(path, STAMP), "w") as f:
        json.dump(dict(version=FORMAT_VERSION, **what), f)


def stamp_matches(path: str, **what) -> bool:
    try:
        with open(os.path.join(path, STAMP)) as f:
            return json.load(f) == dict(version=FORMAT_VERSION, **what)
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# 3. llama.cpp: its build, the converter-ready copy, the conversion, llama-bench.


def write_sentencepiece(path: str, seed: int) -> None:
    """A small BPE sentencepiece tokenizer.model (the converter's BitnetModel reads no other)."""
    import sentencepiece as spm

    rng = np.random.default_rng([seed, 1 << 20])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(400)]
    lines = [" ".join(rng.choice(words, 12)) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=400,
                                   model_type="bpe", num_threads=1, minloglevel=2)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())


def unpack_codes(packed: np.ndarray) -> np.ndarray:
    """uint8 [rows, in] -> int8 codes [4 rows, in] (transformers' unpack_weights)."""
    rows = packed.shape[0]
    out = np.empty((4 * rows, packed.shape[1]), np.int8)
    for i in range(4):
        out[i * rows:(i + 1) * rows] = ((packed >> (2 * i)) & 3).astype(np.int8) - 1
    return out


def write_gguf_source(ckpt: str, path: str, layers: int, seed: int, form: str) -> None:
    """The converter-ready copy of `ckpt` (see the module docstring)."""
    tensors = read_safetensors(os.path.join(ckpt, "model.safetensors"))
    specs = []
    for name, (dtype, shape, raw) in tensors.items():
        new = name
        for a, b in GGUF_RENAMES.items():
            new = new.replace(a, b)
        if form == "float" and name.endswith(".weight_scale"):
            continue
        if form == "float" and dtype == "U8":
            scale = float(from_bf16(tensors[name + "_scale"][2].view(np.uint16))[0])

            def chunks(raw=raw, shape=shape, scale=scale):
                codes = unpack_codes(raw.reshape(shape))
                nonzero = np.count_nonzero(codes) / codes.size
                # weight_quant's mean|W| is then 1 / scale, and its result codes / scale.
                yield codes.astype(np.float32) * np.float32(1.0 / (scale * nonzero))

            specs.append((new, "F32", (shape[0] * 4, shape[1]), chunks))
        else:
            specs.append((new, dtype, shape, lambda raw=raw: [raw]))
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_safetensors(os.path.join(tmp, "model.safetensors"), specs)
    with open(os.path.join(ckpt, "config.json")) as f:
        config = json.load(f)
    if form == "float":
        config.pop("quantization_config")
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_sentencepiece(tmp, seed)
    write_stamp(tmp, kind="gguf-source", layers=layers, seed=seed, form=form)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def llama_source(build: str) -> str | None:
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_HOME_DIRECTORY:"):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def ensure_llama(build: str, work: str, sdist: str | None, jobs: int) -> dict:
    """llama-bench and llama-quantize in build/bin, built from the llama-cpp-python sdist's
    vendored llama.cpp unless they are there already. Returns paths and versions."""
    bins = {n: os.path.join(build, "bin", n) for n in ("llama-bench", "llama-quantize")}
    src = llama_source(build)
    built = False
    if not (src and all(os.path.exists(b) for b in bins.values())):
        if sdist is None:
            found = sorted(glob.glob(os.path.join(work, "sdist", "llama_cpp_python-*.tar.gz")))
            if not found:
                # --no-binary for this package only: with :all: pip builds cmake from source
                # for the sdist's build requirements.
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                                "llama-cpp-python", LLAMA_CPP_PYTHON, "-d", os.path.join(work, "sdist")],
                               check=True)
                found = sorted(glob.glob(os.path.join(work, "sdist", "llama_cpp_python-*.tar.gz")))
            sdist = found[-1]
        top = os.path.basename(sdist)[: -len(".tar.gz")]
        if not os.path.isdir(os.path.join(work, top)):
            with tarfile.open(sdist) as t:
                t.extractall(work, filter="data")
        src = os.path.join(work, top, "vendor", "llama.cpp")
        cmake = shutil.which("cmake") or os.path.join(os.path.dirname(sys.executable), "cmake")
        t0 = time.time()
        subprocess.run([cmake, "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                        "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DLLAMA_CURL=OFF",
                        "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([cmake, "--build", build, "--target", "llama-bench", "llama-quantize",
                        "-j", str(jobs)], check=True, stdout=subprocess.DEVNULL)
        print(f"built llama.cpp ({src}) in {time.time() - t0:.0f} s", flush=True)
        built = True
    out = dict(src=src, built=built, **bins)
    pkg = os.path.basename(os.path.dirname(os.path.dirname(src)))  # <pkg>/vendor/llama.cpp
    out["sdist"] = pkg if pkg.startswith("llama_cpp_python-") else src
    r = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True)
    out["commit"] = r.stdout.strip() if r.returncode == 0 else "?"
    return out


def gguf_types(src: str, path: str) -> dict:
    """{tensor name: ggml type name}, read with the converter's own gguf-py."""
    sys.path.insert(0, os.path.join(src, "gguf-py"))
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def parse_llama_bench(stdout: str) -> dict:
    rows = json.loads(stdout[stdout.index("["):])
    out = {}
    for r in rows:
        kind = "prompt" if r["n_prompt"] > 0 and r["n_gen"] == 0 else "decode" if r["n_gen"] > 0 else None
        if kind:
            out[kind] = r["samples_ts"]
            out.update(build_commit=r.get("build_commit"), build_number=r.get("build_number"),
                       model_type=r.get("model_type"), model_size=r.get("model_size"),
                       cpu_info=r.get("cpu_info"), reps=len(r.get("samples_ts", [])))
    return out


def make_gguf(llama, ckpt, src, work, layers, seed, form, route):
    """The TQ2_0 gguf of `route` (convert: convert_hf_to_gguf.py --outtype tq2_0; quantize:
    --outtype f16, then llama-quantize TQ2_0), made once; returns (path, cost rows). The cost
    rows are kept beside the gguf, so a rerun that reuses it still reports them."""
    gguf = os.path.join(work, f"ckpt-{layers}l-{form}.{route}.tq2_0.gguf")
    costs_file = gguf + ".costs.json"
    if stamp_matches(src, kind="gguf-source", layers=layers, seed=seed, form=form) \
            and os.path.exists(gguf) and os.path.exists(costs_file):
        print(f"reusing {gguf}", flush=True)
        with open(costs_file) as f:
            return gguf, [tuple(c) for c in json.load(f)]
    costs = []
    if not stamp_matches(src, kind="gguf-source", layers=layers, seed=seed, form=form):
        res = run_worker("gguf-source", ckpt=ckpt, path=src, layers=layers, seed=seed, form=form)
        print(f"wrote {src} in {res['wall']:.0f} s, peak {mib(res['peak'])} MiB", flush=True)
        size = os.path.getsize(os.path.join(src, "model.safetensors"))
        # Kept beside the copy: the second route reuses it and reports it as well.
        with open(os.path.join(src, "costs.json"), "w") as f:
            json.dump([res["wall"], res["peak"], size], f)
    with open(os.path.join(src, "costs.json")) as f:
        costs.append((f"llama.cpp: converter-ready copy ({form})", *json.load(f)))
    for f in (gguf, costs_file):
        if os.path.exists(f):
            os.remove(f)
    convert = [sys.executable, os.path.join(llama["src"], "convert_hf_to_gguf.py"), src]
    if form == "packed":
        # Its dequant_bitnet mixes a CPU shift tensor into lazy (meta) tensors and fails.
        convert.append("--no-lazy")
    steps = [("convert_hf_to_gguf.py --outtype tq2_0", convert + ["--outtype", "tq2_0", "--outfile", gguf], gguf)]
    if route == "quantize":
        f16 = gguf[: -len(".tq2_0.gguf")] + ".f16.gguf"
        steps = [("convert_hf_to_gguf.py --outtype f16", convert + ["--outtype", "f16", "--outfile", f16], f16),
                 ("llama-quantize TQ2_0", [llama["llama-quantize"], f16, gguf, "TQ2_0"], gguf)]
    elif route != "convert":
        raise SystemExit(f"--gguf-via: {route!r} is neither convert nor quantize")
    for what, cmd, out in steps:
        status, wall, peak, _, stderr, _ = run_timed(cmd)
        if status != 0:
            raise SystemExit(f"{what} failed (exit {status}):\n{stderr[-3000:]}")
        costs.append((f"llama.cpp: {what}", wall, peak, os.path.getsize(out)))
        print(f"{what}: {out} in {wall:.0f} s, peak {mib(peak)} MiB", flush=True)
    if route == "quantize":
        os.remove(steps[0][2])  # the f16 intermediate
    with open(costs_file, "w") as f:
        json.dump(costs, f)
    return gguf, costs


def bench_gguf(llama, gguf, layers, threads, n_prompt, n_new, reps) -> dict:
    """Checks that every linear weight is TQ2_0, then runs llama-bench on the gguf."""
    types = gguf_types(llama["src"], gguf)
    linears = {n: t for n, t in types.items() if n.split(".")[-2] in GGUF_LINEARS}
    if len(linears) != 7 * layers or set(linears.values()) != {"TQ2_0"}:
        raise SystemExit(f"{gguf}: linear weights are not all TQ2_0: {sorted(set(linears.values()))}")
    summary = {}
    for n, t in types.items():
        summary.setdefault(t, set()).add(n.split(".")[-2] if n.startswith("blk.") else n)
    type_line = "; ".join(f"{t}: {', '.join(sorted(k))}" for t, k in sorted(summary.items()))
    print(f"{os.path.basename(gguf)} tensor types: {type_line}", flush=True)
    status, _, peak, stdout, stderr, others = run_timed(
        [llama["llama-bench"], "-m", gguf, "-t", str(threads), "-p", str(n_prompt), "-n", str(n_new),
         "-r", str(reps), "-o", "json"])
    if status != 0:
        raise SystemExit(f"llama-bench failed (exit {status}):\n{stderr[-3000:]}")
    res = parse_llama_bench(stdout)
    embd = types.get("token_embd.weight", "?")
    row = dict(prompt=res["prompt"], decode=res["decode"], types=type_line, peak=peak,
               others=others,
               label=f"llama.cpp TQ2_0, {embd} embedding/head ({os.path.basename(gguf)})",
               build=f"{res['build_commit']} (build number {res['build_number']})")
    print(f"llama-bench ({llama['llama-bench']}): pp{n_prompt} {cell(row['prompt'])}, tg{n_new} "
          f"{cell(row['decode'])} tok/s; {res['model_type']}, {mib(res['model_size'])} MiB; {details(row)}",
          flush=True)
    return row


# ---------------------------------------------------------------------------------------------
# Workers: each runs in a fresh process under GNU time and prints one JSON line on stdout.


def prompt_ids(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, N_BASE_VOCAB, n).tolist()


def worker_hf(ckpt, dtype, threads, seed, n_prompt, n_new, reps):
    import logging
    import warnings

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(threads)

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(ckpt, **kwargs).eval()
    load = time.perf_counter() - t0
    ids = torch.tensor([prompt_ids(seed, n_prompt)])
    mask = torch.ones_like(ids)

    def generate(n, streamer=None):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, streamer=streamer, pad_token_id=EOS)

    def run():
        clock = Clock()
        t0 = time.perf_counter()
        out = generate(n_new, clock)
        t_end = time.perf_counter()
        # put() is called with the prompt, then once per new token.
        if len(clock.times) != n_new + 1 or out.shape[1] != n_prompt + n_new:
            raise SystemExit(f"streamer saw {len(clock.times)} puts, output {tuple(out.shape)}")
        first, rest = clock.times[1] - t0, t_end - clock.times[1]
        return n_prompt / first, (n_new - 1) / rest, out[0, n_prompt:].tolist()

    t0 = time.perf_counter()
    generate(2)
    warm = time.perf_counter() - t0
    runs = [run() for _ in range(reps)]
    linear = type(model.model.layers[0].self_attn.q_proj)
    return dict(dtype=str(model.dtype).replace("torch.", ""), linear=f"{linear.__module__}.{linear.__name__}",
                load_s=load, warmup_s=warm, prompt=[r[0] for r in runs], decode=[r[1] for r in runs],
                tokens=runs[0][2])


def worker_genai(folder, threads, seed, n_prompt, n_new, reps):
    import onnxruntime_genai as og

    with open(os.path.join(folder, "genai_config.json")) as f:
        file_opts = json.load(f)["model"]["decoder"].get("session_options", {})
    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    t0 = time.perf_counter()
    model = og.Model(config)
    load = time.perf_counter() - t0
    ids = np.array(prompt_ids(seed, n_prompt), dtype=np.int32)

    def run(n):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=n_prompt + n, min_length=n_prompt + n, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        t1 = time.perf_counter()
        gen.generate_next_token()  # picks from append_tokens' logits: no forward
        t2 = time.perf_counter()
        for _ in range(n - 1):
            gen.generate_next_token()
        t3 = time.perf_counter()
        seq = [int(t) for t in gen.get_sequence(0)]
        if len(seq) != n_prompt + n:
            raise SystemExit(f"genai: {len(seq)} tokens, not {n_prompt + n}")
        return dict(append_s=t1 - t0, prompt_s=t2 - t0, decode_s=t3 - t2, tokens=seq[n_prompt:])

    t0 = time.perf_counter()
    run(2)
    warm = time.perf_counter() - t0
    runs = [run(n_new) for _ in range(reps)]
    return dict(load_s=load, warmup_s=warm, prompt=[n_prompt / r["prompt_s"] for r in runs],
                decode=[(n_new - 1) / r["decode_s"] for r in runs],
                append_s=statistics.median(r["append_s"] for r in runs), file_session_options=file_opts,
                tokens=runs[0]["tokens"], og=og.__version__)


def worker_main(argv) -> int:
    kind, args = argv[0], json.loads(argv[1])
    if kind == "checkpoint":
        write_checkpoint(**args)
        res = {}
    elif kind == "gguf-source":
        write_gguf_source(**args)
        res = {}
    else:
        res = {"hf": worker_hf, "genai": worker_genai}[kind](**args)
    print("RESULT " + json.dumps(res), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Driver.


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def wait_idle(limit_s: float, threshold: float = 0.2) -> None:
    """Waits (at most limit_s) until other processes use under `threshold` cores over 5 s."""
    if limit_s <= 0:
        return
    t0 = time.time()
    while True:
        busy0 = busy_cpu_s()
        time.sleep(5)
        others = (busy_cpu_s() - busy0) / 5
        if others < threshold:
            return
        if time.time() - t0 > limit_s:
            print(f"  (not idle after {limit_s:.0f} s: others use {others:.2f} cores; measuring anyway)", flush=True)
            return


def run_timed(cmd):
    """Runs cmd under GNU time: (returncode, wall s, peak RSS bytes, stdout, stderr, others),
    others = the cores' worth of CPU that other processes on the machine used meanwhile."""
    t0, busy0 = time.time(), busy_cpu_s()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        r = subprocess.run(GNU_TIME + cmd, stdout=out, stderr=err)
        wall = time.time() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        mine = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        others = max(0.0, busy_cpu_s() - busy0 - mine) / wall
        err.seek(0)
        out.seek(0)
        stderr = err.read().decode(errors="replace")
        stdout = out.read().decode(errors="replace")
    kib = [ln for ln in stderr.splitlines() if ln.startswith("maxrss_kib=")]
    peak = int(kib[-1].split("=")[1]) * 1024 if kib else 0
    stderr = "\n".join(ln for ln in stderr.splitlines()
                       if not ln.startswith(("maxrss_kib=", "Command exited with", "Command terminated by")))
    return r.returncode, wall, peak, stdout, stderr.strip(), others


def run_worker(kind, **args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(args)]
    status, wall, peak, stdout, stderr, others = run_timed(cmd)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if status != 0 or not lines:
        raise SystemExit(f"{kind} worker failed (exit {status}):\n{stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res.update(peak=peak, wall=wall, others=others)
    return res


def cpu_line() -> tuple[str, str]:
    model, flags = "?", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    amx = sorted(f for f in flags if f.startswith("amx"))
    marks = [f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni")]
    marks.append(f"amx {'yes (' + ' '.join(amx) + ')' if amx else 'no'}")
    return f"{model}; {os.cpu_count()} CPUs", ", ".join(marks)


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def cell(samples: list[float]) -> str:
    """Median tok/s, with the range when there are several runs."""
    m = statistics.median(samples)
    digits = 1 if m >= 100 else 2
    if len(samples) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(samples):.{digits}f}-{max(samples):.{digits}f})"


def details(r: dict) -> str:
    """Runs, peak RSS and the CPU that other processes took meanwhile: work of others on the
    machine shows up there (and in a wide range)."""
    return (f"{len(r['decode'])} run(s), peak RSS {mib(r['peak'])} MiB, other processes used "
            f"{r['others']:.2f} cores meanwhile")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None, help="where everything is written (default: a new temp dir)")
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "bitnet-onnx"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--hf-new-tokens", type=int, default=None, help="transformers' new tokens (default --new-tokens)")
    ap.add_argument("--hf-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="from_pretrained dtype; auto = no argument, what a user gets (the config's bfloat16)")
    ap.add_argument("--reps", type=int, default=3, help="llama-bench repetitions and timed genai generations")
    ap.add_argument("--hf-reps", type=int, default=1, help="timed transformers generations")
    ap.add_argument("--llama-build", default=None, help="llama.cpp build dir, reused (default WORKDIR/llama.cpp-build)")
    ap.add_argument("--llama-sdist", default=None, help="a llama-cpp-python sdist (default: WORKDIR/sdist, else pip download)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel jobs of the llama.cpp build")
    ap.add_argument("--gguf-from", default="float", choices=["float", "packed"],
                    help="what the converter-ready copy holds (see the docstring)")
    ap.add_argument("--gguf-via", default="convert,quantize",
                    help="TQ2_0 routes, comma-separated: convert (--outtype tq2_0) and/or quantize (f16 + llama-quantize)")
    ap.add_argument("--build-flags", default="", help="extra flags for `bitnet-onnx build`, as one string")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each timed run, wait up to S s for other processes to use < 0.2 cores")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    a = ap.parse_args()
    n_hf = a.hf_new_tokens or a.new_tokens
    if min(a.prompt_tokens, a.new_tokens, n_hf) < 2:
        raise SystemExit("--prompt-tokens, --new-tokens and --hf-new-tokens must be at least 2")
    binary = os.path.abspath(a.binary)
    if not a.skip_ours:
        r = subprocess.run([binary, "build", "--help"], capture_output=True) if os.path.exists(binary) else None
        if r is None or r.returncode != 0:
            raise SystemExit(f"{binary} has no `build` command: pass --skip-ours (or --binary)")

    work = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="genai-speed-"))
    os.makedirs(work, exist_ok=True)
    cpu, cpu_flags = cpu_line()
    print(f"CPU: {cpu}\nCPU flags: {cpu_flags}", flush=True)
    ckpt = os.path.join(work, f"ckpt-{a.layers}l")
    if stamp_matches(ckpt, kind="checkpoint", layers=a.layers, seed=a.seed):
        print(f"reusing {ckpt}", flush=True)
    else:
        res = run_worker("checkpoint", path=ckpt, layers=a.layers, seed=a.seed)
        print(f"wrote {ckpt} in {res['wall']:.0f} s, peak {mib(res['peak'])} MiB", flush=True)
    ckpt_bytes = os.path.getsize(os.path.join(ckpt, "model.safetensors"))

    results = {}  # system -> dict(label, prompt, decode: tok/s of each run, peak, others, ...)
    costs = []  # (what, wall s, peak bytes, output bytes)
    versions = {}

    if not a.skip_hf:
        wait_idle(a.wait_idle)
        res = run_worker("hf", ckpt=ckpt, dtype=a.hf_dtype, threads=a.threads, seed=a.seed,
                         n_prompt=a.prompt_tokens, n_new=n_hf, reps=a.hf_reps)
        label = f"transformers ({res['dtype']}{', default dtype' if a.hf_dtype == 'auto' else ''}"
        label += f", {n_hf} new tokens)" if n_hf != a.new_tokens else ")"
        print(f"{label}: load {res['load_s']:.1f} s, warm-up {res['warmup_s']:.1f} s, prompt {cell(res['prompt'])}, "
              f"decode {cell(res['decode'])} tok/s; {details(res)}; linear class {res['linear']}", flush=True)
        results["transformers"] = dict(res, label=label)

    if not a.skip_llama:
        build = os.path.abspath(a.llama_build or os.path.join(work, "llama.cpp-build"))
        llama = ensure_llama(build, work, a.llama_sdist, a.jobs)
        versions["llama.cpp"] = f"{llama['commit'][:12]} (vendored in {llama['sdist']})"
        src = os.path.join(work, f"ckpt-{a.layers}l-gguf-src-{a.gguf_from}")
        for route in a.gguf_via.split(","):
            gguf, steps = make_gguf(llama, ckpt, src, work, a.layers, a.seed, a.gguf_from, route.strip())
            costs += steps
            wait_idle(a.wait_idle)
            row = bench_gguf(llama, gguf, a.layers, a.threads, a.prompt_tokens, a.new_tokens, a.reps)
            versions["llama.cpp build"] = row.pop("build")
            results[f"llama.cpp {route}"] = row
    if not a.skip_ours:
        out = os.path.join(work, f"genai-{a.layers}l")
        shutil.rmtree(out, ignore_errors=True)
        flags = shlex.split(a.build_flags)
        status, wall, peak, _, stderr, _ = run_timed([binary, "build", ckpt, "-o", out] + flags)
        if status != 0:
            raise SystemExit(f"bitnet-onnx build failed (exit {status}):\n{stderr[-3000:]}")
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        costs.append(("ours: bitnet-onnx build" + (f" {a.build_flags}" if flags else ""), wall, peak, size))
        print(f"built {out} in {wall:.1f} s, peak {mib(peak)} MiB, {mib(size)} MiB", flush=True)
        wait_idle(a.wait_idle)
        res = run_worker("genai", folder=out, threads=a.threads, seed=a.seed, n_prompt=a.prompt_tokens,
                         n_new=a.new_tokens, reps=a.reps)
        versions["onnxruntime-genai"] = res["og"]
        print(f"onnxruntime-genai: load {res['load_s']:.1f} s, append_tokens {res['append_s']:.3f} s, prompt "
              f"{cell(res['prompt'])}, decode {cell(res['decode'])} tok/s; genai_config session_options "
              f"{res['file_session_options']}, intra_op_num_threads {a.threads} by overlay; {details(res)}", flush=True)
        results["ours"] = dict(res, label="ours: bitnet-onnx build + onnxruntime-genai")
        if "transformers" in results:
            # A sanity check, not a fidelity measure: a random model's logits are close to ties,
            # so the int4 tables (or transformers' bfloat16) change greedy picks early.
            pairs = list(zip(res["tokens"], results["transformers"]["tokens"]))
            first = next((i for i, (x, y) in enumerate(pairs) if x != y), None)
            print(f"greedy tokens equal to transformers': {sum(x == y for x, y in pairs)} of {len(pairs)}"
                  + (f", first difference at new token {first}" if first is not None else ""), flush=True)

    # Report.
    import torch
    import transformers

    versions = dict(torch=torch.__version__, transformers=transformers.__version__, **versions)
    if "onnxruntime-genai" in versions:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    print()
    print("command: " + " ".join(shlex.quote(x) for x in [sys.executable] + sys.argv))
    print(f"CPU: {cpu}; {cpu_flags}")
    print("versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"model: microsoft/bitnet-b1.58-2B-4T shape, {a.layers} layers, random packed checkpoint "
          f"({mib(ckpt_bytes)} MiB safetensors, seed {a.seed}); {a.threads} threads; prompt {a.prompt_tokens} tokens, "
          f"{a.new_tokens} new tokens, greedy")
    if "transformers" in results and n_hf != a.new_tokens:
        print(f"NOTE: transformers generated {n_hf} new tokens (--hf-new-tokens), the others {a.new_tokens}")
    print()
    # llama-quantize's TQ2_0 (Q6_K embedding/head) is the llama.cpp reference when measured:
    # llama.cpp's own choice for a TQ2_0 file, nearer our int4 tables than the converter's F16.
    print("| system | prompt tok/s | decode tok/s | vs transformers | vs llama.cpp |")
    print("|---|---|---|---|---|")
    med = {k: (statistics.median(r["prompt"]), statistics.median(r["decode"])) for k, r in results.items()}
    ref_keys = ["transformers", next((k for k in ("llama.cpp quantize", "llama.cpp convert") if k in results), None)]
    for key, r in results.items():
        vs = [f"{ratio(med[key][0], med[ref][0])} / {ratio(med[key][1], med[ref][1])}" if ref in med else "-"
              for ref in ref_keys]
        print(f"| {r['label']} | {cell(r['prompt'])} | {cell(r['decode'])} | {vs[0]} | {vs[1]} |")
    print("\ntok/s: median over runs (range); ratios: prompt / decode, the row's median over the reference's"
          + (f"; the llama.cpp reference is {results[ref_keys[1]]['label']}" if ref_keys[1] else ""))
    for key, r in results.items():
        print(f"- {key}: {details(r)}")
    if costs:
        print()
        print("| conversion | wall s | peak RSS MiB | output MiB |")
        print("|---|---|---|---|")
        seen = set()
        for what, wall, peak, size in costs:
            if what not in seen:
                seen.add(what)
                print(f"| {what} | {wall:.1f} | {mib(peak)} | {mib(size)} |")
    for key, r in results.items():
        if "types" in r:
            print(f"{key} gguf tensor types: {r['types']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
