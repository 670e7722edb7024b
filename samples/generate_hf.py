#!/usr/bin/env python3
"""Generate the Hugging Face BitNet samples in samples/hf/.

Run from the repository root:

    pip install -r samples/requirements.txt
    python samples/generate_hf.py

A tiny `BitNetForCausalLM` (transformers' own BitNet model and its `integrations/bitnet.py`
linear classes) is written as a checkpoint in each of the three forms transformers loads,
loaded back with `from_pretrained` as a user would, and exported with
`torch.onnx.export(dynamo=True)`:

  hf/bitlinear/               quantization_config linear_class "bitlinear" (offline): packed
                              uint8 ternary weights [out/4, in], weight_scale = 1 / absmean
                              (the output is divided by input_scale * weight_scale)
  hf/autobitlinear_offline/   linear_class "autobitlinear", quantization_mode "offline":
                              ternary codes as float weights, weight_scale = absmean
                              (multiplied after the matmul)
  hf/autobitlinear_online/    linear_class "autobitlinear", quantization_mode "online":
                              float master weights ternarised in the graph (WeightQuant)

All three hold the same ternary model: the same codes and per-tensor absmean scales, drawn
from one seeded float model. Each directory gets model.onnx with its weights in
model.onnx.data, input_ids.pb (int64 [2, 7]) and logits.pb (transformers' float32 logits
for those ids), as TensorProto files. samples/hf/MANIFEST.md records shapes and op counts.

Deterministic: fixed seeds, one CPU thread; per-node source locations are stripped. The
checkpoints are written to a temporary directory and not kept.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import fmt_hist, mark_generated, op_histogram, strip_source_locations, value_shape  # noqa: E402

SAMPLES = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(SAMPLES, "hf")
SEED = 20261201

# Tiny but complete: grouped KV heads, two decoder layers (14 BitNet linear layers), tied
# embeddings, relu2 MLP, BitNet's sub-norms. Every feature dimension is a multiple of 4 (the
# packed form stores four rows per byte).
CONFIG = dict(
    architectures=["BitNetForCausalLM"],
    model_type="bitnet",
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="relu2",
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    torch_dtype="float32",
)

FORMS = {
    "bitlinear": dict(linear_class="bitlinear", quantization_mode="offline"),
    "autobitlinear_offline": dict(linear_class="autobitlinear", quantization_mode="offline"),
    "autobitlinear_online": dict(linear_class="autobitlinear", quantization_mode="online"),
}

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def master_state(config: dict = CONFIG) -> dict[str, torch.Tensor]:
    """A seeded float BitNet model's state dict (the -bf16 form, in float32)."""
    from transformers import BitNetConfig, BitNetForCausalLM

    torch.manual_seed(SEED)
    model = BitNetForCausalLM(BitNetConfig(**config)).eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # Norm weights away from 1, so a converter that drops one is caught.
    g = torch.Generator().manual_seed(SEED + 1)
    for k in state:
        if k.endswith("norm.weight"):
            state[k] = (1.0 + 0.2 * torch.randn(state[k].shape, generator=g)).contiguous()
    return state


def is_linear(key: str) -> bool:
    return key.endswith(".weight") and key.split(".")[-2] in LINEARS


def ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """WeightQuant's codes and scale: s = 1 / mean|W| (clamped at 1e-5), round(W s) in [-1, 1]."""
    s = 1.0 / w.float().abs().mean().clamp(min=1e-5)
    return (w.float() * s).round().clamp(-1, 1), s


def checkpoint(form: str, master: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from transformers.integrations.bitnet import pack_weights

    out = {}
    for k, v in master.items():
        if k == "lm_head.weight":
            continue  # tied to the embedding
        if not is_linear(k) or form == "autobitlinear_online":
            out[k] = v
            continue
        codes, s = ternary(v)
        scale_key = k[: -len("weight")] + "weight_scale"
        if form == "bitlinear":
            out[k] = pack_weights(codes.clone())
            out[scale_key] = s.reshape(1)
        else:
            out[k] = codes
            out[scale_key] = (1.0 / s).reshape(1)
    return out


def write_checkpoint(path: str, form: str, master: dict[str, torch.Tensor], config: dict = CONFIG) -> None:
    from safetensors.torch import save_file

    cfg = dict(config)
    cfg["quantization_config"] = dict(quant_method="bitnet", **FORMS[form])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    save_file(checkpoint(form, master), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def export(
    form: str,
    master: dict[str, torch.Tensor],
    ids: torch.Tensor,
    out_dir: str | None = None,
    config: dict = CONFIG,
    check: bool = True,
    files: tuple[str, str] = ("input_ids.pb", "logits.pb"),
    generated_by: str = "samples/generate.py",
) -> np.ndarray:
    """Writes `form`'s checkpoint, loads it with from_pretrained, exports it to `out_dir`
    (default samples/hf/<form>) and returns ONNX Runtime's logits for `ids` (None when
    `check` is off: no onnx.checker, no ORT run, for the large benchmark models).
    With `check`, `ids` and transformers' logits for them are saved in `out_dir` as the
    TensorProto files named by `files`; `generated_by` is stamped into the model."""
    from transformers import BitNetForCausalLM

    out_dir = out_dir or os.path.join(OUT, form)
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as ckpt:
        write_checkpoint(ckpt, form, master, config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = BitNetForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.numpy()

    class Forward(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    # The BitNet helpers are torch.compile'd: the exporter traces through them only with
    # dynamo's own compilation off.
    torch._dynamo.config.disable = True
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=1, max=config["max_position_embeddings"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Forward(model),
            (ids,),
            dynamo=True,
            verbose=False,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}},
        )
    proto = program.model_proto
    strip_source_locations(proto)
    mark_generated(
        proto,
        f"transformers BitNetForCausalLM, quantization_config {FORMS[form]}, "
        "torch.onnx.export(dynamo=True)",
        generated_by,
    )
    path = os.path.join(out_dir, "model.onnx")
    for f in ("model.onnx", "model.onnx.data"):
        if os.path.exists(os.path.join(out_dir, f)):
            os.remove(os.path.join(out_dir, f))
    onnx.save_model(
        proto,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    if not check:
        return None
    onnx.checker.check_model(path, full_check=True)
    onnx.save_tensor(numpy_helper.from_array(ids.numpy(), "input_ids"), os.path.join(out_dir, files[0]))
    onnx.save_tensor(numpy_helper.from_array(logits, "logits"), os.path.join(out_dir, files[1]))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy()})[0]
    diff = float(np.abs(got - logits).max())
    print(f"{form}: max |ORT - transformers| = {diff:.2e}")
    return got


def main() -> int:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    master = master_state()
    ids = torch.from_numpy(np.random.default_rng(SEED).integers(3, CONFIG["vocab_size"], (2, 7)))
    lines = [
        "# Hugging Face BitNet samples",
        "",
        "Generated by samples/generate_hf.py; do not edit. One tiny `BitNetForCausalLM`",
        f"({CONFIG['num_hidden_layers']} layers, hidden {CONFIG['hidden_size']}, FFN "
        f"{CONFIG['intermediate_size']}, {CONFIG['num_attention_heads']} heads / "
        f"{CONFIG['num_key_value_heads']} KV heads, vocab {CONFIG['vocab_size']}, tied embeddings) "
        "in the three forms transformers loads, each loaded with `from_pretrained` and exported with "
        "`torch.onnx.export(dynamo=True)`.",
        "",
        "The other folders here have their own generators and records: `trained_lm/` "
        "(samples/generate_trained_lm.py), and the exports of the ternary family samples, "
        "`llama_bitlinear/`, `qwen3_autobitlinear/`, `onebitllm/`, `trilm_unpacked/`, "
        "`bonsai_unpacked/` (samples/generate_families.py; sizes and checks in "
        "samples/checkpoints/families/MANIFEST.md).",
        "",
        f"Versions: torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}.",
        "",
    ]
    for form in FORMS:
        export(form, master, ids)
        path = os.path.join(OUT, form, "model.onnx")
        model = onnx.load(path, load_external_data=False)
        hist = op_histogram(model)
        lines += [
            f"## `samples/hf/{form}`",
            "",
            f"- quantization_config: `{json.dumps(FORMS[form], sort_keys=True)}`",
            f"- Size: model.onnx {os.path.getsize(path):,} B, model.onnx.data "
            f"{os.path.getsize(path + '.data'):,} B. Opset "
            + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
            + ".",
            "- Inputs: " + ", ".join(f"`{value_shape(i)}`" for i in model.graph.input)
            + ". Outputs: " + ", ".join(f"`{value_shape(o)}`" for o in model.graph.output) + ".",
            f"- Nodes by op type ({sum(hist.values())} nodes): {fmt_hist(hist)}.",
            "",
        ]
    with open(os.path.join(OUT, "MANIFEST.md"), "w") as f:
        f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
