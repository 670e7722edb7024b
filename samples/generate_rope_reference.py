#!/usr/bin/env python3
"""Reference rotary tables computed by transformers, for `build`'s RoPE (crates/bitnet-build/src/rope.rs).

    python samples/generate_rope_reference.py   # writes samples/rope/reference.json

For each case, a LlamaConfig (or Qwen3Config) with the case's rope settings, spelled as a
transformers 4 config (`rope_scaling`, top-level `rope_theta`) or a transformers 5 one
(`rope_parameters`), is loaded from its config.json dict with `from_dict` (as from_pretrained
reads it); its rotary embedding (`LlamaRotaryEmbedding`, the module the decoder calls) gives
`inv_freq`, `attention_scaling` and the cos/sin it multiplies queries and keys by at the listed
positions. The Rust test (crates/bitnet-build/tests/rope_reference.rs) reads the same config
dicts and compares. Needs torch and transformers (samples/requirements.txt); CI only reads the
JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

OUT = Path(__file__).resolve().parent / "rope" / "reference.json"

BASE = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096}

CASES = [
    ("default, implicit theta (LlamaConfig 10000)", "llama", {}),
    ("default, transformers 4 rope_theta (Falcon3)", "llama", {"rope_theta": 1000042.0, "head_dim": 128}),
    ("default, transformers 5 rope_parameters", "llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
    ("linear", "llama", {"rope_scaling": {"type": "linear", "factor": 4.0}, "rope_theta": 10000.0}),
    ("dynamic", "llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "rope_theta": 10000.0}),
    ("llama3 (Llama 3.1's settings)", "llama", {
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    }),
    ("llama3, transformers 5 spelling, original from max_position_embeddings", "llama", {
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        "max_position_embeddings": 512,
    }),
    ("yarn (factor 4, attention factor from log)", "llama", {
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    }),
    ("yarn with mscale / mscale_all_dim and betas, no truncation", "llama", {
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 50000.0, "factor": 8.0,
                            "original_max_position_embeddings": 512, "mscale": 0.707,
                            "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2, "truncate": False},
    }),
    ("yarn with an explicit attention_factor", "qwen3", {
        "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048,
                         "attention_factor": 1.25},
        "rope_theta": 1000000.0, "head_dim": 128,
    }),
    ("Qwen3 default (Qwen3Config head_dim 128)", "qwen3", {"rope_theta": 1000000.0}),
]

POSITIONS = [0, 1, 2, 7, 100, 255, 256, 1000, 4095]


def f32(xs):
    # float32 values as JSON numbers: each float32 is exactly a double, printed round-trip.
    return [float(x) for x in xs.to(torch.float32).flatten().tolist()]


def main() -> None:
    torch.manual_seed(0)
    cases = []
    for name, kind, extra in CASES:
        d = dict(BASE)
        d.update(extra)
        config_dict = dict(d)
        config_dict["model_type"] = kind
        cls, emb = (LlamaConfig, LlamaRotaryEmbedding) if kind == "llama" else (Qwen3Config, Qwen3RotaryEmbedding)
        config = cls.from_dict(json.loads(json.dumps(d)))
        rope = emb(config)
        max_pos = d["max_position_embeddings"]
        positions = [p for p in POSITIONS if p < max_pos]
        pos = torch.tensor([positions], dtype=torch.int64)
        x = torch.zeros(1, len(positions), 8, dtype=torch.float32)
        with torch.no_grad():
            cos, sin = rope(x, pos)
        half = rope.inv_freq.numel()
        cases.append({
            "name": name,
            "config": config_dict,
            "head_dim": config.head_dim,
            "rope_type": config.rope_parameters["rope_type"],
            "inv_freq": f32(rope.inv_freq),
            "attention_scaling": float(rope.attention_scaling),
            "positions": positions,
            # transformers' tables repeat the half twice (cat(freqs, freqs)); the first half is
            # what GroupQueryAttention's caches hold.
            "cos": [f32(cos[0, i, :half]) for i in range(len(positions))],
            "sin": [f32(sin[0, i, :half]) for i in range(len(positions))],
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({
            "generated_by": "samples/generate_rope_reference.py",
            "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
            "cases": cases,
        }, f, indent=0)
        f.write("\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
