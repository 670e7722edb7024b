#!/usr/bin/env python3
"""How often BitNet's int8 activation codes come out differently: a `bitnet-onnx build` graph
in ONNX Runtime against transformers in float32, beside transformers in float32 against
float64 (not a test; needs torch and transformers: run with the samples' environment).

    flip_rate.py --binary LABEL=PATH [--binary LABEL=PATH ...] [--prompts 100] [--seed 0]

Every BitNet linear layer quantizes its input per token: `s = 127 / max(|x|)`, codes
`clamp(round(x * s), -128, 127)`. A float difference anywhere upstream moves a value across a
`k + 0.5` boundary now and then, and that code flips; so the rate of prompts with at least one
flipped code measures how much rounding noise a graph adds, and float32 against float64 in
transformers itself is the floor any float32 implementation can be held to.

For each checkpoint (the trained samples/checkpoints/packed and packed_untied, and a random-weight
checkpoint of another shape made here from a seed: 3 layers, hidden 192, 6 heads / 2 KV heads,
FFN 512, untied head, packed as microsoft/bitnet-b1.58-2B-4T is) and `--prompts` random prompts
(token ids uniform over the vocabulary, lengths 4-64, seeded), the prompt step (the first
generation step: every position of the prompt) is run:

* in transformers (`BitNetForCausalLM.from_pretrained(dir, dtype=float32)`, the `@torch.compile`d
  BitNet helpers eager, as the sample generator runs them), with a forward pre-hook on every
  BitNet linear layer that computes the layer's codes from its input with transformers' own
  expression (`activation_quant`), and the same model cast to float64;
* in ONNX Runtime (CPU, 2 threads, all graph optimisations) on the folder each `--binary` builds
  with `--head float --embeddings float` (the tables would move every code of the first layer),
  with every activation quantization's codes (`.../act_quant/Clip`) added to the graph outputs
  of a copy of model.onnx (extra outputs change no arithmetic).

A prompt counts as flipped when any code of any layer at any position differs. Codes are
compared rather than logits because a code is the discrete event that every later difference
follows from. Prints the CPU model and, per checkpoint, the counts side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The graph's quantization per transformers layer input: the fused projections share one.
GRAPH_NAMES = {
    "q_proj": "attn/qkv_proj",
    "o_proj": "attn/o_proj",
    "gate_proj": "mlp/gate_up_proj",
    "down_proj": "mlp/down_proj",
}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def random_checkpoint(path: str, seed: int) -> None:
    """A random-weight BitNet checkpoint in the packed BitLinear form: transformers' own
    initialisation (seeded), every linear ternarised as WeightQuant does, packed by
    transformers' pack_weights, weight_scale = 1 / mean|W| in bfloat16."""
    import torch
    from safetensors.torch import save_file
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import pack_weights

    config = dict(
        architectures=["BitNetForCausalLM"], attention_bias=False, attention_dropout=0.0,
        bos_token_id=510, eos_token_id=511, hidden_act="relu2", hidden_size=192,
        initializer_range=0.02, intermediate_size=512, max_position_embeddings=256,
        model_type="bitnet", num_attention_heads=6, num_hidden_layers=3, num_key_value_heads=2,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        torch_dtype="bfloat16", use_cache=True, vocab_size=512,
    )
    torch.manual_seed(seed)
    model = BitNetForCausalLM(BitNetConfig(**config)).eval()
    # Norm weights are 1 at initialisation; give them spread so the sub-norms matter.
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().float()
        if k.endswith("norm.weight"):
            v = 1.0 + 0.1 * torch.randn(v.shape)
        if k.split(".")[-2] in LINEARS:
            s = 1.0 / v.abs().mean().clamp(min=1e-5)
            codes = (v * s).round().clamp(-1, 1)
            out[k] = pack_weights(codes.clone())
            out[k[: -len("weight")] + "weight_scale"] = s.reshape(1).to(torch.bfloat16)
        else:
            out[k] = v.to(torch.bfloat16).contiguous()
    config["quantization_config"] = dict(quant_method="bitnet", linear_class="bitlinear",
                                         quantization_mode="offline")
    os.makedirs(path, exist_ok=True)
    json.dump(config, open(os.path.join(path, "config.json"), "w"), indent=2)
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    # `build` copies the tokenizer files: the trained sample's fit this vocabulary.
    src = os.path.join(ROOT, "samples/checkpoints/packed")
    for f in os.listdir(src):
        if f.startswith("tokenizer") or f == "special_tokens_map.json":
            with open(os.path.join(src, f), "rb") as a, open(os.path.join(path, f), "wb") as b:
                b.write(a.read())


def transformers_codes(ck: str, prompts: list[np.ndarray], dtype) -> list[dict[str, np.ndarray]]:
    """Per prompt, every layer input's codes `[seq, hidden]`, keyed `{layer}.{proj}`."""
    import torch
    from transformers import BitNetForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BitNetForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
    model = model.to(dtype)
    got: dict[str, np.ndarray] = {}

    def hook(key):
        def f(_module, args):
            x = args[0]
            # transformers' activation_quant, in the layer input's dtype.
            scale = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
            got[key] = (x * scale).round().clamp(-128, 127)[0].detach().numpy().astype(np.int16)
        return f

    for name, module in model.named_modules():
        short = name.split(".")[-1]
        if short in GRAPH_NAMES:
            layer = name.split(".")[2]
            module.register_forward_pre_hook(hook(f"{layer}.{short}"))
    out = []
    with torch.no_grad():
        for ids in prompts:
            got = {}
            model(torch.tensor(ids[None, :], dtype=torch.int64), use_cache=False)
            out.append(dict(got))
    return out


def build(binary: str, ck: str, out: str) -> None:
    r = subprocess.run([binary, "build", ck, "-o", out, "--head", "float", "--embeddings", "float",
                        "-q"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{binary} build {ck} failed: {r.stderr}")


def graph_codes(folder: str, prompts: list[np.ndarray], threads: int) -> list[dict[str, np.ndarray]]:
    import onnx
    import onnxruntime as ort

    m = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)
    g = m.graph
    wanted = {}
    for n in g.node:
        for short, gname in GRAPH_NAMES.items():
            prefix = "/model/layers."
            if n.op_type == "Clip" and n.name.endswith(f"/{gname}/act_quant/Clip") and n.name.startswith(prefix):
                layer = n.name[len(prefix):].split("/")[0]
                wanted[f"{layer}.{short}"] = n.output[0]
    for name in wanted.values():
        g.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    copy = os.path.join(folder, "model_codes.onnx")
    onnx.save(m, copy)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(copy, so, providers=["CPUExecutionProvider"])
    past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    out = []
    for ids in prompts:
        feed = {"input_ids": ids[None, :].astype(np.int64),
                "attention_mask": np.ones((1, len(ids)), np.int64)}
        for p in past:
            feed[p.name] = np.zeros((1, p.shape[1], 0, p.shape[3]), np.float32)
        names = list(wanted.values())
        res = sess.run(names, feed)
        out.append({k: r[0].astype(np.int16) for k, r in zip(wanted.keys(), res)})
    return out


def flips(a: list[dict], b: list[dict]) -> tuple[int, int]:
    """Prompts with at least one differing code, and differing codes in all."""
    prompts = codes = 0
    for x, y in zip(a, b):
        if x.keys() != y.keys():
            sys.exit(f"layers differ: {sorted(x)} vs {sorted(y)}")
        d = sum(int((x[k] != y[k]).sum()) for k in x)
        prompts += d > 0
        codes += d
    return prompts, codes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", required=True,
                    help="LABEL=PATH of a bitnet-onnx binary (repeatable)")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch._dynamo.config.disable = True  # the BitNet helpers eager, as the samples were made
    torch.set_num_threads(args.threads)
    binaries = [b.split("=", 1) for b in args.binary]
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}; {args.prompts} prompts, "
          f"lengths 4-64, seed {args.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        rand = os.path.join(tmp, "random_3l_6h2kv_untied")
        random_checkpoint(rand, args.seed + 1)
        checkpoints = [("packed (trained)", os.path.join(ROOT, "samples/checkpoints/packed")),
                       ("packed_untied (trained)", os.path.join(ROOT, "samples/checkpoints/packed_untied")),
                       ("random 3 layers 6/2 heads untied", rand)]
        header = ["checkpoint", "hf f32 vs f64"] + [f"{label} vs hf f32" for label, _ in binaries]
        rows = []
        for title, ck in checkpoints:
            vocab = json.load(open(os.path.join(ck, "config.json")))["vocab_size"]
            rng = np.random.default_rng(args.seed)
            prompts = [rng.integers(0, vocab - 2, size=int(rng.integers(4, 65))) for _ in range(args.prompts)]
            ref32 = transformers_codes(ck, prompts, torch.float32)
            ref64 = transformers_codes(ck, prompts, torch.float64)
            row = [title, flips(ref32, ref64)]
            for label, binary in binaries:
                folder = os.path.join(tmp, f"{label}_{len(rows)}")
                build(binary, ck, folder)
                row.append(flips(graph_codes(folder, prompts, args.threads), ref32))
            rows.append(row)
        print()
        print("prompts with at least one flipped int8 activation code (codes flipped in all)")
        print(" | ".join(header))
        for r in rows:
            print(" | ".join([r[0]] + [f"{p}/{args.prompts} ({c})" for p, c in r[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
