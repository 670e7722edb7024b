#!/usr/bin/env python3
"""Generate samples/checkpoints/families/: tiny *trained* checkpoints of each public ternary model
family in the layout its published checkpoints use, and transformers' references for them
(fixtures for `bitnet-onnx build` on checkpoints other than BitNetForCausalLM's).

Run from the repository root (all families, or the ones named; each family is independent of
the others, so a subset regenerates the same bytes):

    pip install -r samples/requirements.txt
    python samples/generate_families.py [FAMILY ...]
    python samples/generate_families.py --exports-only [FAMILY ...]

`--exports-only` writes only the ONNX exports (samples/hf/<name>/) from the committed folders,
without training, and updates their line of the MANIFEST.

Families (see FAMILIES and the MANIFEST it writes for every field):

  llama_bitlinear      tiiuae Falcon3-*-1.58bit / HF1BitLLM Llama3-8B-1.58 form: LlamaForCausalLM,
                       quantization_config {quant_method: bitnet} without linear_class (so
                       transformers' default, BitLinear offline), weights packed uint8 [out/4, in]
                       + weight_scale [1] (1/absmean, divided by), SiLU, no sub-norms, untied
                       head, explicit head_dim (64, not hidden/heads = 32), rope_theta 1000042 and
                       rope_scaling of type llama3, written with the pre-5 top-level keys
                       (rope_theta, rope_scaling) as those checkpoints have them.
  qwen3_autobitlinear  codys12 Qwen3-*-BitNet form: Qwen3ForCausalLM, autobitlinear online with
                       use_rms_norm (an RMSNorm `<proj>.rms_norm.weight` on every BitNet
                       linear's input), bfloat16 master weights, q_norm / k_norm, tied head.
  onebitllm            1bitLLM bitnet_b1_58-* form: architectures [BitnetForCausalLM],
                       model_type llama (remote code), float16 master weights (absmean online),
                       SiLU, sub-norms `self_attn.inner_attn_ln` (after attention, before o_proj)
                       and `mlp.ffn_layernorm` (after act(gate) * up, before down_proj). No
                       transformers class loads it; its reference is transformers'
                       BitNetForCausalLM (hidden_act silu, autobitlinear online) on the same
                       weights under BitNet's names (attn_sub_norm / ffn_sub_norm sit where
                       1bitLLM's sub-norms sit). Llama 2's tokenizer layout (sentencepiece-
                       derived BPE with byte fallback, <unk> 0, <s> 1, </s> 2).
  trilm_unpacked       SpectraSuite TriLM *_Unpacked form: LlamaForCausalLM, no
                       quantization_config, float16 weights that are ternary codes times one
                       absmean scale per shard of rows (TRILM_SHARDS contiguous row blocks).
                       GPT-NeoX's tokenizer layout (byte-level BPE, <|endoftext|> 0).
  bonsai_unpacked      prism-ml Ternary-Bonsai -unpacked form: Qwen3ForCausalLM, no
                       quantization_config, float16 ternary codes times one absmean scale per
                       group of 128 along the input, embedding (and so the tied head) too.

Every family is trained from scratch (seeded, deterministic algorithms, 2 threads) on the corpus
of samples/generate_checkpoints.py with transformers' own quantized classes: `from_pretrained`
of a float checkpoint with quantization_config autobitlinear / online (AutoBitLinear: weights
ternarised per tensor by WeightQuant, activations to int8 per token by ActQuant). The folder is
then written in the family's layout from the trained float32 weights, loaded back with
`from_pretrained` (float32) and that model is the reference: expected/families/<name>.json
(greedy continuations, same record format as expected/packed.json) and
expected/families/<name>_val.json (validation loss, argmax and margins, the format of
expected/val.json with one form, <name>). The unpacked families' reference is transformers'
float forward (float activations; the int8 activations of training are not part of the
published model). Each is also exported with torch.onnx.export(dynamo=True) to samples/hf/<name>/
(onebitllm: its reference BitNetForCausalLM), for `convert` + `verify`.

Deterministic: regenerating gives byte-identical files with the pinned versions on the same CPU
family (see samples/generate_checkpoints.py).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SAMPLES = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SAMPLES)
import generate  # noqa: E402
import generate_checkpoint_val  # noqa: E402
import generate_checkpoints as gc  # noqa: E402
import generate_hf  # noqa: E402
import generate_trained_lm  # noqa: E402

GENERATED_BY = "samples/generate_families.py"
OUT = os.path.join(SAMPLES, "checkpoints", "families")
EXPECTED = os.path.join(SAMPLES, "checkpoints", "expected", "families")
HF_OUT = os.path.join(SAMPLES, "hf")

STEPS = 400  # training steps of gc.BATCH x gc.SEQ tokens (1-4 minutes a family on a busy core)
# One thread: on a shared, oversubscribed machine two OpenMP threads wait on each other at every
# barrier (measured 3.8 s a step with 2 threads at load 10, against 0.1 s on 2 idle cores).
THREADS = 1
# Exported to samples/hf/<name>/ for `convert` + `verify`: every family (each export holds the
# model's float32 weights as transformers computes with them, 1.3-1.9 MB).
EXPORTS = ("llama_bitlinear", "qwen3_autobitlinear", "onebitllm", "trilm_unpacked", "bonsai_unpacked")
LR, WARMUP, WEIGHT_DECAY = 3e-3, 50, 0.01
VAL_ROWS = 16  # held-out rows in the _val.json records (generate_checkpoint_val.py's count)
TRILM_SHARDS = 2  # row shards with one scale each (TriLM's model-parallel shards; see MANIFEST)
BONSAI_GROUP = 128  # Ternary-Bonsai's group along the input dimension

# --------------------------------------------------------------------------- tokenizers

# Llama 3 style (generate_checkpoints.py's tokenizer: BOS 510, EOS 511) plus Llama 3 Instruct's
# chat tokens after them, for the Llama-architecture families with a chat template.
LLAMA_CHAT_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"]
START_HEADER_ID, END_HEADER_ID, EOT_ID = gc.VOCAB, gc.VOCAB + 1, gc.VOCAB + 2
LLAMA_CHAT_VOCAB = gc.VOCAB + len(LLAMA_CHAT_TOKENS)
# Meta-Llama-3-8B-Instruct's chat template.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen3 style: Qwen2's split regex, NFC, byte-level BPE without a BOS, then <|endoftext|>
# (document separator and pad), <|im_start|>, <|im_end|> (EOS of the chat models).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_BPE = 509
QWEN_VOCAB = QWEN_BPE + len(QWEN_SPECIALS)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = QWEN_BPE, QWEN_BPE + 1, QWEN_BPE + 2
# Qwen3's chat template, reduced to plain messages (no tools, no reasoning_content parsing),
# with its generation prompt and its `enable_thinking=false` empty think block.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


# Llama 2 style (1bitLLM ships Llama 2's tokenizer): the sentencepiece-derived tokenizer.json that
# transformers' LlamaConverter writes: <unk> 0, <s> 1, </s> 2, the 256 byte-fallback tokens
# <0x00>..<0xFF>, then sentencepiece-like BPE pieces ('▁' marks a word start; trained split at
# whitespace, between letters and other characters and at every digit, as sentencepiece splits
# by whitespace, Unicode script and digit); normalizer Prepend('▁') + Replace(' ', '▁'), no
# pre-tokenizer, byte fallback, BOS added by the post-processor (add_bos_token).
LLAMA2_SPECIALS = ["<unk>", "<s>", "</s>"]
LLAMA2_UNK_ID, LLAMA2_BOS_ID, LLAMA2_EOS_ID = 0, 1, 2
LLAMA2_BYTES = [f"<0x{b:02X}>" for b in range(256)]
LLAMA2_SPLIT = r"▁?\p{L}+|▁?\p{N}|▁?[^\p{L}\p{N}▁]+|▁"
# GPT-NeoX style (TriLM uses GPT-NeoX-20B's tokenizer): byte-level BPE, NFC, <|endoftext|> 0
# (BOS, EOS and unk, the document separator), <|padding|> 1, no BOS added.
NEOX_SPECIALS = ["<|endoftext|>", "<|padding|>"]
NEOX_ENDOFTEXT_ID = 0


def llama2_tokenizer(texts: list[str]):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    prefix = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainee = Tokenizer(models.BPE())
    trainee.normalizer = prefix
    trainee.pre_tokenizer = pre_tokenizers.Split(Regex(LLAMA2_SPLIT), behavior="isolated")
    base = len(LLAMA2_SPECIALS) + len(LLAMA2_BYTES)
    trainer = trainers.BpeTrainer(vocab_size=gc.VOCAB - base, special_tokens=[], show_progress=False)
    trainee.train_from_iterator(texts, trainer)
    trained = json.loads(trainee.to_str())["model"]
    assert len(trained["vocab"]) == gc.VOCAB - base, len(trained["vocab"])
    vocab = {t: i for i, t in enumerate(LLAMA2_SPECIALS + LLAMA2_BYTES)}
    for t, i in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab[t] = base + i
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    # Pieces never cross the training splits, so no pre-tokenizer is needed to apply them (the
    # Llama 2 files have none).
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = prefix
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in LLAMA2_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", LLAMA2_BOS_ID)])
    assert tok.get_vocab_size() == gc.VOCAB and tok.token_to_id("</s>") == LLAMA2_EOS_ID
    return tok


def neox_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=gc.VOCAB, special_tokens=NEOX_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == gc.VOCAB, tok.get_vocab_size()
    assert [tok.token_to_id(t) for t in NEOX_SPECIALS] == [0, 1]
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True)
    return tok


def special_tokens_decoder(tokens: list[str], first: int = 0) -> dict:
    return {str(first + i): dict(gc.special(t), special=True) for i, t in enumerate(tokens)}


def write_llama2_tokenizer(tok, path: str, max_len: int) -> None:
    """Llama 2's files: tokenizer.json, tokenizer_config.json (LlamaTokenizer, add_bos_token,
    legacy false) and special_tokens_map.json (no tokenizer.model: the sentencepiece model is
    not reproduced)."""
    tok.save(os.path.join(path, "tokenizer.json"), pretty=True)
    gc.dump_json(os.path.join(path, "tokenizer_config.json"), {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": special_tokens_decoder(LLAMA2_SPECIALS),
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": max_len,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    })
    gc.dump_json(os.path.join(path, "special_tokens_map.json"), {
        "bos_token": gc.special("<s>"), "eos_token": gc.special("</s>"), "unk_token": gc.special("<unk>")})


def write_neox_tokenizer(tok, path: str, max_len: int) -> None:
    """GPT-NeoX's files: tokenizer.json, tokenizer_config.json (GPTNeoXTokenizer, no BOS or
    EOS added, <|endoftext|> as BOS, EOS and unk) and special_tokens_map.json."""
    tok.save(os.path.join(path, "tokenizer.json"), pretty=True)
    gc.dump_json(os.path.join(path, "tokenizer_config.json"), {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": special_tokens_decoder(NEOX_SPECIALS),
        "bos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": max_len,
        "pad_token": None,
        "tokenizer_class": "GPTNeoXTokenizer",
        "unk_token": "<|endoftext|>",
    })
    end = gc.special("<|endoftext|>")
    gc.dump_json(os.path.join(path, "special_tokens_map.json"), {"bos_token": end, "eos_token": end, "unk_token": end})


def tokenizer_for_ids(kind: str) -> tuple[int | None, int]:
    """`tokenizer_for`'s BOS and document-end ids, without training."""
    return {"qwen": (None, ENDOFTEXT_ID), "llama2": (LLAMA2_BOS_ID, LLAMA2_EOS_ID),
            "neox": (None, NEOX_ENDOFTEXT_ID)}.get(kind, (gc.BOS_ID, gc.EOS_ID))


def tokenizer_for(kind: str, texts: list[str]):
    """The tokenizer of a kind trained on `texts`, its BOS id (None when it adds none) and the
    id that ends each document in the training rows."""
    train = {"qwen": qwen_tokenizer, "llama2": llama2_tokenizer, "neox": neox_tokenizer}.get(kind)
    tok = train(texts) if train else llama_tokenizer(texts, kind == "llama_chat")
    return (tok, *tokenizer_for_ids(kind))


def llama_tokenizer(texts: list[str], chat: bool):
    tok = gc.train_tokenizer(texts)
    if chat:
        tok.add_special_tokens(LLAMA_CHAT_TOKENS)
        assert tok.token_to_id("<|eot_id|>") == EOT_ID
    return tok


def qwen_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=QWEN_BPE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == QWEN_BPE, tok.get_vocab_size()
    tok.add_special_tokens(QWEN_SPECIALS)
    assert tok.token_to_id("<|im_end|>") == IM_END_ID
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def write_llama_tokenizer(tok, path: str, chat: bool, max_len: int) -> None:
    """Llama 3's files (generate_checkpoints.py's), with Llama 3 Instruct's chat tokens, EOS
    `<|eot_id|>` and chat template when `chat`."""
    gc.write_tokenizer(tok, path)
    if not chat:
        return
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    for i, t in enumerate(LLAMA_CHAT_TOKENS):
        config["added_tokens_decoder"][str(gc.VOCAB + i)] = dict(gc.special(t), special=True)
    config["chat_template"] = LLAMA3_CHAT_TEMPLATE
    config["eos_token"] = "<|eot_id|>"
    config["model_max_length"] = max_len
    gc.dump_json(cfg_path, dict(sorted(config.items())))
    gc.dump_json(os.path.join(path, "special_tokens_map.json"),
                 {"bos_token": gc.special(gc.BOS_TOKEN), "eos_token": gc.special("<|eot_id|>")})


def write_qwen_tokenizer(tok, path: str, max_len: int) -> None:
    """Qwen3's files: tokenizer.json, tokenizer_config.json (Qwen2Tokenizer, no BOS, EOS
    <|im_end|>, pad <|endoftext|>, the chat template)."""
    tok.save(os.path.join(path, "tokenizer.json"), pretty=True)
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(QWEN_BPE + i): dict(gc.special(t), special=True) for i, t in enumerate(QWEN_SPECIALS)},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": max_len,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    gc.dump_json(os.path.join(path, "tokenizer_config.json"), config)


# --------------------------------------------------------------------------- families

# Shared sizes: hidden 128, 2 layers, FFN 256 (llama_bitlinear: 384; it is stored packed, the
# others in 16 bits, which keeps each of their folders under 1 MB).
BASE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, max_position_embeddings=512,
            initializer_range=0.02, attention_bias=False, attention_dropout=0.0, use_cache=True)

FAMILIES = {
    "llama_bitlinear": dict(
        cls="LlamaForCausalLM", tokenizer="llama_chat", seed=gc.SEED + 101,
        config=dict(
            architectures=["LlamaForCausalLM"], model_type="llama", **dict(BASE, intermediate_size=384),
            bos_token_id=gc.BOS_ID, eos_token_id=[gc.EOS_ID, EOT_ID], head_dim=64, hidden_act="silu",
            is_bitnet_config=True, mlp_bias=False, num_attention_heads=4, num_key_value_heads=2,
            pretraining_tp=1, rms_norm_eps=1e-6,
            rope_scaling=dict(factor=8.0, high_freq_factor=4.0, low_freq_factor=1.0,
                              original_max_position_embeddings=64, rope_type="llama3"),
            rope_theta=1000042.0, tie_word_embeddings=False, torch_dtype="bfloat16",
            vocab_size=LLAMA_CHAT_VOCAB,
            quantization_config=dict(modules_to_not_convert=None, quant_method="bitnet"),
        ),
    ),
    "qwen3_autobitlinear": dict(
        cls="Qwen3ForCausalLM", tokenizer="qwen", seed=gc.SEED + 102,
        config=dict(
            architectures=["Qwen3ForCausalLM"], model_type="qwen3", **BASE,
            bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID, head_dim=64, hidden_act="silu",
            max_window_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_scaling=None, rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=True,
            torch_dtype="bfloat16", use_sliding_window=False, vocab_size=QWEN_VOCAB,
            quantization_config=dict(quant_method="bitnet", linear_class="autobitlinear",
                                     quantization_mode="online", use_rms_norm=True, rms_norm_eps=1e-6),
        ),
    ),
    "onebitllm": dict(
        cls="BitnetForCausalLM", tokenizer="llama2", seed=gc.SEED + 103,
        config=dict(
            architectures=["BitnetForCausalLM"], model_type="llama", **BASE,
            auto_map={"AutoConfig": "configuration_bitnet.BitnetConfig",
                      "AutoModelForCausalLM": "modeling_bitnet.BitnetForCausalLM"},
            bos_token_id=LLAMA2_BOS_ID, eos_token_id=LLAMA2_EOS_ID, hidden_act="silu", input_bits=8,
            num_attention_heads=4, num_key_value_heads=4, pad_token_id=None, pretraining_tp=1,
            rms_norm_eps=1e-5, rope_scaling=None, rope_theta=10000.0, tie_word_embeddings=False,
            torch_dtype="float16", vocab_size=gc.VOCAB, weight_bits=1,
        ),
    ),
    "trilm_unpacked": dict(
        cls="LlamaForCausalLM", tokenizer="neox", seed=gc.SEED + 104,
        config=dict(
            architectures=["LlamaForCausalLM"], model_type="llama", **BASE,
            bos_token_id=NEOX_ENDOFTEXT_ID, eos_token_id=NEOX_ENDOFTEXT_ID, hidden_act="silu", mlp_bias=False,
            num_attention_heads=4, num_key_value_heads=4, pretraining_tp=1, rms_norm_eps=1e-5,
            rope_scaling=None, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="float16",
            vocab_size=gc.VOCAB,
        ),
    ),
    "bonsai_unpacked": dict(
        cls="Qwen3ForCausalLM", tokenizer="qwen", seed=gc.SEED + 105,
        config=dict(
            architectures=["Qwen3ForCausalLM"], model_type="qwen3", **BASE,
            bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID, head_dim=64, hidden_act="silu",
            max_window_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_scaling=None, rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=True,
            torch_dtype="float16", use_sliding_window=False, vocab_size=QWEN_VOCAB,
        ),
    ),
}
ONLINE = dict(quant_method="bitnet", linear_class="autobitlinear", quantization_mode="online")
# 1bitLLM's names -> transformers BitNet's (the reference model's).
ONEBIT_RENAME = {".self_attn.inner_attn_ln.": ".self_attn.attn_sub_norm.", ".mlp.ffn_layernorm.": ".mlp.ffn_sub_norm."}

Tensors = dict[str, torch.Tensor]


def transformers_class(name: str):
    import transformers

    return getattr(transformers, "BitNetForCausalLM" if name == "BitnetForCausalLM" else name)


def reference_config(fam: dict) -> dict:
    """The config transformers' reference class runs: for onebitllm, BitNetForCausalLM's. A deep
    copy: transformers' config classes write into nested dicts (rope_scaling gains rope_theta)."""
    c = copy.deepcopy(fam["config"])
    if fam["cls"] == "BitnetForCausalLM":
        for k in ("auto_map", "input_bits", "weight_bits", "pretraining_tp"):
            c.pop(k)
        c.update(architectures=["BitNetForCausalLM"], model_type="bitnet", quantization_config=dict(ONLINE))
    return c


def training_config(fam: dict) -> dict:
    """The architecture with autobitlinear online (use_rms_norm kept where the family has it)."""
    c = reference_config(fam)
    q = dict(ONLINE)
    if c.get("quantization_config", {}).get("use_rms_norm"):
        q.update(use_rms_norm=True, rms_norm_eps=c["quantization_config"]["rms_norm_eps"])
    c["quantization_config"] = q
    c["torch_dtype"] = "float32"
    return c


def load(cls, config: dict, tensors: Tensors, dtype=torch.float32):
    """`cls.from_pretrained` of a temporary folder holding `config` and `tensors`."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        gc.dump_json(os.path.join(d, "config.json"), config)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(d, dtype=dtype)


def is_linear(key: str) -> bool:
    return generate_hf.is_linear(key)


def rows_of(tok, texts: list[str], eos: int, bos: int | None) -> np.ndarray:
    """Training rows of gc.SEQ tokens, each starting at a document's start (BOS where the
    tokenizer adds one): documents (text then `eos`) concatenated into a row until it is full;
    the rest of the last one is dropped."""
    rows, row = [], []
    for enc in tok.encode_batch(texts):
        ids = enc.ids + [eos]
        assert bos is None or ids[0] == bos
        row.extend(ids)
        if len(row) >= gc.SEQ:
            rows.append(row[: gc.SEQ])
            row = []
    return np.asarray(rows, dtype=np.int64)


def train(name: str, fam: dict, train_ids: torch.Tensor, val_ids: torch.Tensor) -> tuple[Tensors, list[str], float, float]:
    from transformers.integrations.bitnet import AutoBitLinear

    cls = transformers_class(fam["cls"])
    config = training_config(fam)
    arch = {k: v for k, v in config.items() if k != "quantization_config"}
    torch.manual_seed(fam["seed"])
    init = cls(cls.config_class(**arch))
    state = {k: v.detach().clone().contiguous() for k, v in init.state_dict().items()}
    if config["tie_word_embeddings"]:
        state.pop("lm_head.weight")
    if config["quantization_config"].get("use_rms_norm"):
        for k in [k for k in state if is_linear(k)]:
            state[k[: -len("weight")] + "rms_norm.weight"] = torch.ones(state[k].shape[1])
    model = load(cls, config, state)
    linears = [m for m in model.modules() if isinstance(m, AutoBitLinear)]
    assert len(linears) == 7 * config["num_hidden_layers"] and all(m.online_quant for m in linears), name
    assert all((m.rms_norm is not None) == bool(config["quantization_config"].get("use_rms_norm")) for m in linears)
    if name == "bonsai_unpacked":
        ternary_embedding(model)
    model.train()
    opt, sched = generate_trained_lm.optimizer(model, STEPS, LR, WARMUP, WEIGHT_DECAY)
    log, running, start = [], 0.0, time.perf_counter()
    for step in range(STEPS):
        loss = generate_trained_lm.lm_loss(model, train_ids[step * gc.BATCH : (step + 1) * gc.BATCH])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0 or step == 0:
            n = 1 if step == 0 else 100
            line = f"step {step + 1:4d}: train loss {running / n:.4f}, val loss {gc.val_loss(model, val_ids):.4f}"
            print(f"{name}: {line}  [{time.perf_counter() - start:.0f} s]", flush=True)
            log.append(line)
            running = 0.0
    seconds = time.perf_counter() - start
    if name == "bonsai_unpacked":
        from torch.nn.utils import parametrize

        for m in (model.model.embed_tokens, model.lm_head):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        assert model.lm_head.weight is model.model.embed_tokens.weight
    trained = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        trained.pop("lm_head.weight", None)
    return trained, log, seconds, gc.val_loss(model, val_ids)


class GroupTernary(torch.nn.Module):
    """Bonsai's rule as a straight-through parametrization: per row and group of BONSAI_GROUP
    columns, s = mean|W_group| (clamped at 1e-5), W -> round(W / s) clamped to [-1, 1] times s;
    the gradient passes through unchanged (as WeightQuant's does)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rows, cols = w.shape
        g = w.reshape(rows, cols // BONSAI_GROUP, BONSAI_GROUP)
        s = g.abs().mean(-1, keepdim=True).clamp(min=1e-5)
        q = ((g / s).round().clamp(-1, 1) * s).reshape(rows, cols)
        return w + (q - w).detach()


def ternary_embedding(model) -> None:
    """Trains Bonsai's ternary embedding and tied head: transformers has no quantized embedding
    class, so both modules get GroupTernary on the one weight they share (registered on each,
    the shared Parameter stays one: the tie and the optimizer's single copy are kept)."""
    from torch.nn.utils import parametrize

    assert model.lm_head.weight is model.model.embed_tokens.weight
    weight = model.model.embed_tokens.weight
    for m in (model.model.embed_tokens, model.lm_head):
        parametrize.register_parametrization(m, "weight", GroupTernary())
    assert model.model.embed_tokens.parametrizations.weight.original is weight
    assert model.lm_head.parametrizations.weight.original is weight


# --------------------------------------------------------------------------- layouts


def absmean_codes(w: torch.Tensor, axis_blocks: list[tuple[slice, slice]]) -> tuple[torch.Tensor, list[float]]:
    """WeightQuant's rule applied per block: s = 1 / mean|W_block| (clamped at 1e-5), codes
    round(W s) clamped to [-1, 1]; returns the codes and each block's mean |W| (1/s)."""
    w = w.float()
    codes = torch.empty_like(w)
    scales = []
    for rs, cs in axis_blocks:
        codes[rs, cs], s = generate_hf.ternary(w[rs, cs])
        scales.append(float(1.0 / s))
    return codes, scales


def row_shards(w: torch.Tensor, n: int) -> list[tuple[slice, slice]]:
    rows = w.shape[0]
    assert rows % n == 0
    return [(slice(i * rows // n, (i + 1) * rows // n), slice(None)) for i in range(n)]


def input_groups(w: torch.Tensor, g: int) -> list[tuple[slice, slice]]:
    """One block per row and group of `g` columns (Bonsai's groups along the input)."""
    rows, cols = w.shape
    assert cols % g == 0
    return [(slice(r, r + 1), slice(c, c + g)) for r in range(rows) for c in range(0, cols, g)]


def float_ternary(w: torch.Tensor, blocks: list[tuple[slice, slice]]) -> torch.Tensor:
    """The codes times their block's scale (mean |W| of the block), rounded to float16: the
    unpacked families' stored weight. The scale is rounded to float16 first so that every
    stored value of a block is exactly +-that float16 scale or 0."""
    codes, scales = absmean_codes(w, blocks)
    out = torch.zeros_like(codes, dtype=torch.float16)
    for (rs, cs), s in zip(blocks, scales):
        out[rs, cs] = (codes[rs, cs] * torch.tensor(s, dtype=torch.float16).float()).to(torch.float16)
    return out


def layout(name: str, fam: dict, state: Tensors) -> Tensors:
    """The family's published tensors from the trained float32 state."""
    from transformers.integrations.bitnet import pack_weights

    out = {}
    if name == "llama_bitlinear":
        for k, v in state.items():
            if is_linear(k):
                codes, s = generate_hf.ternary(v)
                out[k] = pack_weights(codes.clone())
                out[k[: -len("weight")] + "weight_scale"] = s.reshape(1).to(torch.bfloat16)
            else:
                out[k] = v.to(torch.bfloat16)
    elif name == "qwen3_autobitlinear":
        out = {k: v.to(torch.bfloat16) for k, v in state.items()}
    elif name == "onebitllm":
        for k, v in state.items():
            for theirs, ours in ONEBIT_RENAME.items():
                k = k.replace(ours, theirs)
            out[k] = v.to(torch.float16)
    elif name == "trilm_unpacked":
        for k, v in state.items():
            out[k] = float_ternary(v, row_shards(v, TRILM_SHARDS)) if is_linear(k) else v.to(torch.float16)
    elif name == "bonsai_unpacked":
        for k, v in state.items():
            ternary = is_linear(k) or k == "model.embed_tokens.weight"
            out[k] = float_ternary(v, input_groups(v, BONSAI_GROUP)) if ternary else v.to(torch.float16)
    else:
        raise KeyError(name)
    return out


def reference_tensors(name: str, tensors: Tensors) -> Tensors:
    """The tensors under the reference class's names (onebitllm: BitNet's)."""
    if name != "onebitllm":
        return tensors
    out = {}
    for k, v in tensors.items():
        for theirs, ours in ONEBIT_RENAME.items():
            k = k.replace(theirs, ours)
        out[k] = v
    return out


def write_folder(name: str, fam: dict, tensors: Tensors, tok) -> None:
    from safetensors.torch import save_file

    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    config = dict(sorted(copy.deepcopy(fam["config"]).items()))
    gc.dump_json(os.path.join(path, "config.json"), config)
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    if fam["tokenizer"] == "qwen":
        gen = {"bos_token_id": ENDOFTEXT_ID, "eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID}
    gc.dump_json(os.path.join(path, "generation_config.json"), gen)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    max_len = config["max_position_embeddings"]
    if fam["tokenizer"] == "qwen":
        write_qwen_tokenizer(tok, path, max_len)
    elif fam["tokenizer"] == "llama2":
        write_llama2_tokenizer(tok, path, max_len)
    elif fam["tokenizer"] == "neox":
        write_neox_tokenizer(tok, path, max_len)
    else:
        write_llama_tokenizer(tok, path, fam["tokenizer"] == "llama_chat", max_len)


def load_folder(name: str, fam: dict, dtype=torch.float32):
    """The folder as transformers loads it: from_pretrained, or for onebitllm (remote code)
    BitNetForCausalLM on the same weights under BitNet's names."""
    from safetensors.torch import load_file

    path = os.path.join(OUT, name)
    cls = transformers_class(fam["cls"])
    if name == "onebitllm":
        tensors = reference_tensors(name, load_file(os.path.join(path, "model.safetensors")))
        return load(cls, reference_config(fam), tensors, dtype).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(path, dtype=dtype).eval()


# --------------------------------------------------------------------------- references


def check_model(name: str, model) -> dict:
    """What transformers built from the folder: the linear classes and their settings."""
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear

    bit = sum(isinstance(m, BitLinear) for m in model.modules())
    auto = [m for m in model.modules() if isinstance(m, AutoBitLinear)]
    plain = sum(type(m) is torch.nn.Linear for m in model.modules())
    n = 7 * model.config.num_hidden_layers
    want = {
        "llama_bitlinear": (n, 0, 1), "qwen3_autobitlinear": (0, n, 1), "onebitllm": (0, n, 1),
        "trilm_unpacked": (0, 0, n + 1), "bonsai_unpacked": (0, 0, n + 1),
    }[name]
    assert (bit, len(auto), plain) == want, (name, bit, len(auto), plain)
    assert all(m.online_quant for m in auto)
    if name == "qwen3_autobitlinear":
        assert all(m.rms_norm is not None for m in auto)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == model.config.tie_word_embeddings, name
    return {"BitLinear": bit, "AutoBitLinear online": len(auto), "nn.Linear": plain, "tied_head": tied}


def references(name: str, fam: dict, tok_hf, held_out: list[str], val_rows: np.ndarray) -> tuple[list[dict], dict]:
    model = load_folder(name, fam)
    candidates = gc.prompt_candidates(tok_hf, held_out)
    eos = fam["config"]["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer_for_ids(fam["tokenizer"])[1]}
    entries, all_margins = [], []
    for bucket in candidates:
        scored = []
        for text in bucket:
            r = gc.greedy(model, tok_hf, text)
            full = len(r["new_tokens"]) == gc.MAX_NEW_TOKENS and not (eos & set(r["new_tokens"]))
            all_margins.append(min(r["margins"]))
            scored.append((full, min(r["margins"]), text, r))
        best = max(scored, key=lambda s: (s[0], s[1]))
        assert best[0], f"{name}: every candidate of the bucket stops early: {bucket}"
        _, _, text, r = best
        m = r["margins"]
        assert r["full_same_tokens"], (name, text)
        entries.append({
            "text": text,
            "input_ids": r["input_ids"],
            "new_tokens": r["new_tokens"],
            "continuation": tok_hf.decode(r["new_tokens"]),
            "min_margin": round(min(m), 6),
            "min_margin_step": int(np.argmin(m)),
            "step_margins": [round(x, 6) for x in m],
            "first_step_top1": int(r["first_step_logits"].argmax()),
            "first_step_logits": [float(x) for x in r["first_step_logits"].tolist()],
            "full_recompute_same_tokens": r["full_same_tokens"],
            "full_recompute_max_abs": float(f"{r['full_max_abs']:.3e}"),
        })
    ids = torch.from_numpy(val_rows.copy())
    f32 = generate_checkpoint_val.figures(model, ids)
    f64 = generate_checkpoint_val.figures(load_folder(name, fam, torch.float64), ids)
    agree = float(np.mean(np.array(f32["argmax"]) == np.array(f64["argmax"])))
    val = {
        "val_loss": f32["loss"],
        "val_loss_f64": f64["loss"],
        "top1_f32_vs_f64": agree,
        "argmax": f32["argmax"],
        "margin": f32["margin"],
        "candidates": {"count": len(all_margins), "median_min_margin": float(np.median(all_margins))},
    }
    return entries, val


# --------------------------------------------------------------------------- ONNX export


def export(name: str, fam: dict, ids: torch.Tensor) -> dict:
    """torch.onnx.export(dynamo=True) of the folder as transformers loads it (float32, no cache)
    to samples/hf/<name>/ with input_ids.pb and transformers' logits.pb, as generate_hf.py
    exports BitNetForCausalLM."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = load_folder(name, fam)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.numpy()

    class Forward(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=2, max=fam["config"]["max_position_embeddings"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Forward(model), (ids,), dynamo=True, verbose=False, input_names=["input_ids"],
            output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq}},
        )
    proto = program.model_proto
    generate.strip_source_locations(proto)
    generate.mark_generated(
        proto, f"transformers {fam['cls']} loaded from samples/checkpoints/families/{name}, "
        "torch.onnx.export(dynamo=True)", GENERATED_BY)
    out_dir = os.path.join(HF_OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    path = os.path.join(out_dir, "model.onnx")
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    onnx.checker.check_model(path, full_check=True)
    onnx.save_tensor(numpy_helper.from_array(ids.numpy(), "input_ids"), os.path.join(out_dir, "input_ids.pb"))
    onnx.save_tensor(numpy_helper.from_array(logits, "logits"), os.path.join(out_dir, "logits.pb"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy()})[0]
    diff = float(np.abs(got - logits).max())
    top1 = float((got.argmax(-1) == logits.argmax(-1)).mean())
    print(f"{name}: exported, max |ORT - transformers| = {diff:.2e}, top-1 {top1:.4f}", flush=True)
    return {"max_abs": diff, "top1": top1,
            "files": {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}}


# --------------------------------------------------------------------------- main


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_family(name: str, corpus: dict) -> dict:
    wall = time.perf_counter()
    fam = FAMILIES[name]
    tok, rows, val_rows, tok_hf_dir = corpus[fam["tokenizer"]]
    state, log, seconds, final_val = train(name, fam, torch.from_numpy(rows), torch.from_numpy(val_rows[:32]))
    print(f"{name}: trained in {seconds:.0f} s, val loss {final_val:.4f}", flush=True)
    tensors = layout(name, fam, state)
    write_folder(name, fam, tensors, tok)
    model = load_folder(name, fam)
    classes = check_model(name, model)
    # The folder against the trained model (float32 masters, AutoBitLinear online, int8 activations).
    trained = load(transformers_class(fam["cls"]), training_config(fam), reference_tensors(name, state)).eval()
    ids8 = torch.from_numpy(val_rows[:8].copy())
    with torch.no_grad():
        agree = gc.compare(model(input_ids=ids8, use_cache=False).logits, trained(input_ids=ids8, use_cache=False).logits)
    from transformers import AutoTokenizer

    tok_hf = AutoTokenizer.from_pretrained(os.path.join(OUT, name))
    prompts, val = references(name, fam, tok_hf, corpus["held_out"], val_rows[:VAL_ROWS])
    import transformers

    versions = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    os.makedirs(EXPECTED, exist_ok=True)
    gc.dump_json(os.path.join(EXPECTED, f"{name}.json"), {
        "generated_by": GENERATED_BY,
        "checkpoint": f"samples/checkpoints/families/{name}",
        "versions": versions,
        "model": ("BitNetForCausalLM (hidden_act silu, autobitlinear online) on the folder's weights "
                  "under BitNet's names" if name == "onebitllm" else f"{fam['cls']}.from_pretrained(checkpoint)")
                 + ", dtype=torch.float32, eval(); the @torch.compile'd BitNet helpers run eagerly "
                 f"(torch._dynamo.config.disable); attention {model.config._attn_implementation}",
        "tokenizer": {"call": "AutoTokenizer.from_pretrained(checkpoint)(text)['input_ids']",
                      "bos_token_id": tok_hf.bos_token_id, "eos_token_id": fam["config"]["eos_token_id"]},
        "generate": {"do_sample": False, "max_new_tokens": gc.MAX_NEW_TOKENS,
                     "note": "new_tokens excludes the prompt; no prompt reached EOS"},
        "first_step_logits": "float32 logits [vocab] of the first generation step (the last prompt position)",
        "step_margins": "top-1 minus top-2 logit at each generation step (float32 logits, rounded to 1e-6)",
        "prompts": prompts,
    }, indent=1)
    gc.dump_json(os.path.join(EXPECTED, f"{name}_val.json"), {
        "generated_by": GENERATED_BY,
        "versions": versions,
        "note": f"rows of {gc.SEQ} token ids; argmax and margin are per next-token position ({gc.SEQ - 1} per row)",
        "input_ids": val_rows[:VAL_ROWS].tolist(),
        "forms": {name: val},
    }, indent=1)
    exported = None
    if name in EXPORTS:
        exported = export(name, fam, torch.from_numpy(val_rows[:2, :16].copy()))
    print(f"{name}: val loss {val['val_loss']:.4f} (float64 {val['val_loss_f64']:.4f}); prompts min margins "
          f"{[p['min_margin'] for p in prompts]}  [{time.perf_counter() - wall:.0f} s]", flush=True)
    return dict(log=log, seconds=seconds, final_val=final_val, agree=agree, val=val, prompts=prompts,
                classes=classes, tensors=tensors, exported=exported, versions=versions)


def corpus_for(kinds: set[str]) -> dict:
    """Tokenizers, training and validation rows per tokenizer kind, and the held-out documents
    prompts are drawn from (generate_checkpoints.py's grammar, seeds and counts)."""
    grammar = gc.Grammar(gc.SEED)
    tok_texts = gc.documents(grammar, gc.TOKENIZER_DOCS, gc.SEED + 1)
    rng_docs = np.random.default_rng(gc.SEED + 2)
    train_texts = [grammar.document(rng_docs) for _ in range(14000)]
    val_texts = gc.documents(grammar, 400, gc.SEED + 3)
    out = {"held_out": gc.documents(grammar, 200, gc.SEED + 4)}
    for kind in sorted(kinds):
        tok, bos, eos = tokenizer_for(kind, tok_texts)
        rows = rows_of(tok, train_texts, eos, bos)
        assert len(rows) >= STEPS * gc.BATCH, (kind, len(rows))
        out[kind] = (tok, rows[: STEPS * gc.BATCH], rows_of(tok, val_texts, eos, bos), None)
        print(f"corpus {kind}: {len(rows):,} rows of {gc.SEQ} from {len(train_texts):,} documents", flush=True)
    return out


def export_only(names: list[str]) -> None:
    """The exports of the committed folders (no training): the same ids as run_family's (the
    first two validation rows' first 16 tokens, from the same tokenizer and documents)."""
    grammar = gc.Grammar(gc.SEED)
    tok_texts = gc.documents(grammar, gc.TOKENIZER_DOCS, gc.SEED + 1)
    val_texts = gc.documents(grammar, 400, gc.SEED + 3)
    for n in names:
        fam = FAMILIES[n]
        tok, bos, eos = tokenizer_for(fam["tokenizer"], tok_texts)
        val_rows = rows_of(tok, val_texts, eos, bos)
        e = export(n, fam, torch.from_numpy(val_rows[:2, :16].copy()))
        sections = manifest_sections()
        assert n in sections, f"{n}: no MANIFEST section; run the family first"
        kept = [line for line in sections[n].rstrip("\n").split("\n") if not line.startswith(EXPORT_LINE.format(n))]
        sections[n] = "\n".join(kept + [export_line(n, e)]) + "\n"
        write_manifest(sections)


def main(argv: list[str]) -> int:
    only = "--exports-only" in argv
    argv = [a for a in argv if a != "--exports-only"]
    names = argv or list(EXPORTS if only else FAMILIES)
    for n in names:
        if n not in FAMILIES:
            print(f"unknown family {n!r}; known: {', '.join(FAMILIES)}", file=sys.stderr)
            return 2
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch._dynamo.config.disable = True
    wall = time.perf_counter()
    if only:
        export_only(names)
        print(f"done in {time.perf_counter() - wall:.0f} s", flush=True)
        return 0
    corpus = corpus_for({FAMILIES[n]["tokenizer"] for n in names})
    print(f"corpus ready  [{time.perf_counter() - wall:.0f} s]", flush=True)
    results = {}
    for n in names:
        results[n] = run_family(n, corpus)
        write_manifest_section(n, results[n])
    print(f"done in {time.perf_counter() - wall:.0f} s", flush=True)
    return 0


# --------------------------------------------------------------------------- manifest

HEADER = "## `"  # each family's section starts with "## `<name>/`"


def manifest_sections() -> dict[str, str]:
    """The family sections of the current MANIFEST.md, so that a run over some families keeps
    the others' sections."""
    path = os.path.join(OUT, "MANIFEST.md")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        text = f.read()
    out = {}
    for part in text.split("\n" + HEADER)[1:]:
        name = part.split("/", 1)[0]
        out[name] = HEADER + part.rstrip("\n") + "\n"
    return out


def write_manifest_section(name: str, r: dict) -> None:
    fam = FAMILIES[name]
    path = os.path.join(OUT, name)
    files = {f: os.path.getsize(os.path.join(path, f)) for f in sorted(os.listdir(path))}
    a, v = r["agree"], r["val"]
    lines = [
        f"## `{name}/` ({sum(files.values()):,} B)",
        "",
        DESCRIPTIONS[name],
        "",
        "- config.json: `" + json.dumps(dict(sorted(fam["config"].items()))) + "`",
        "- Files: " + ", ".join(f"`{k}` {n:,} B" for k, n in files.items()) + ".",
        f"- model.safetensors sha256 `{sha(os.path.join(path, 'model.safetensors'))}`; tensors (`N` = 0, 1):",
        *gc.tensor_table(r["tensors"]),
        f"- transformers built: {json.dumps(r['classes'])}.",
        f"- Training: {STEPS} steps of {gc.BATCH} x {gc.SEQ} tokens on {THREADS} thread(s) (seed {fam['seed']}; "
        "the time it took is printed, not recorded, so that the file regenerates byte for byte):",
        *[f"  - {line}" for line in r["log"]],
        f"  - final: validation loss {r['final_val']:.4f} (32 held-out rows, the trained float32 model).",
        f"- The folder loaded back vs the trained model (float32 masters, AutoBitLinear online), logits of 8 "
        f"held-out rows: rel. L2 {a['rel_l2']:.2e}, max abs {a['max_abs']:.2e}, top-1 {a['top1']:.4f}.",
        f"- Reference (`expected/families/{name}_val.json`, {VAL_ROWS} rows): validation loss {v['val_loss']:.6f} "
        f"(float64 {v['val_loss_f64']:.6f}), argmax float32 vs float64 {v['top1_f32_vs_f64']:.4f}.",
        f"- Greedy references (`expected/families/{name}.json`): prompts' min top-1/top-2 margins "
        f"{[p['min_margin'] for p in r['prompts']]} (all {v['candidates']['count']} candidates: median "
        f"{v['candidates']['median_min_margin']:.3f}).",
    ]
    if r["exported"]:
        lines.append(export_line(name, r["exported"]))
    sections = manifest_sections()
    sections[name] = "\n".join(lines) + "\n"
    write_manifest(sections)


EXPORT_LINE = "- Export `samples/hf/{}/`"


def export_line(name: str, e: dict) -> str:
    return (EXPORT_LINE.format(name) + " (torch.onnx.export dynamo, float32, no cache): "
            + ", ".join(f"`{k}` {n:,} B" for k, n in e["files"].items())
            + f"; ONNX Runtime vs transformers on input_ids.pb: max abs {e['max_abs']:.2e}, "
            f"top-1 {e['top1']:.4f}.")


DESCRIPTIONS = {
    "llama_bitlinear": (
        "tiiuae Falcon3-*-1.58bit / HF1BitLLM Llama3-8B-1.58 form. `LlamaForCausalLM`, "
        "`quantization_config` `{modules_to_not_convert: null, quant_method: bitnet}` as onebitllms' "
        "`quantize_to_1bit` writes it (no linear_class: transformers' `BitLinear`, offline, "
        "`y = x_q . t / (s_x * weight_scale)`), top-level `is_bitnet_config: true`, `pretraining_tp: 1`. "
        "Every BitNet linear packed uint8 [out/4, in] by transformers' `pack_weights` from WeightQuant's "
        "codes of the trained float32 weight, `weight_scale` [1] bfloat16 = 1 / mean|W|; embeddings, norms "
        "and the untied head bfloat16. SiLU, no sub-norms, head_dim 64 with 4 heads of a 128 hidden size "
        "(hidden / heads = 32), 2 KV heads, rope_theta 1000042 (Falcon3's), rope_scaling llama3 (factor 8, "
        "low 1, high 4, original 64 positions: the 32 frequencies fall in all three llama3 bands), written "
        "as transformers 4 did (`rope_theta`, `rope_scaling`; transformers 5 reads them into "
        "`rope_parameters`). Tokenizer: Llama 3's layout with Llama 3 Instruct's chat tokens "
        "(`<|start_header_id|>` 512, `<|end_header_id|>` 513, `<|eot_id|>` 514, one reserved 515) and chat "
        "template; BOS 510, eos_token_id [511, 514] (Llama 3.1 Instruct lists both)."
    ),
    "qwen3_autobitlinear": (
        "codys12 Qwen3-*-BitNet form. `Qwen3ForCausalLM`, `quantization_config` autobitlinear / online with "
        "`use_rms_norm: true` (`rms_norm_eps` 1e-6): transformers' `AutoBitLinear` applies an RMSNorm "
        "(`<proj>.rms_norm.weight`, LlamaRMSNorm over the layer's input features) to the input, then ActQuant, "
        "then the WeightQuant'd weight. bfloat16 master weights (the trained float32 ones rounded), "
        "q_norm / k_norm per head, head_dim 64, tied head. Tokenizer: Qwen3's layout (Qwen2 split regex, NFC, "
        "byte-level BPE, no BOS; `<|endoftext|>` 509 = bos_token_id in config and pad, `<|im_start|>` 510, "
        "`<|im_end|>` 511 = eos_token_id; tokenizer_class Qwen2Tokenizer; a reduced Qwen3 chat template: "
        "messages, generation prompt, the `enable_thinking=false` empty think block)."
    ),
    "onebitllm": (
        "1bitLLM bitnet_b1_58-* form. config: `architectures [BitnetForCausalLM]`, `model_type llama`, "
        "`auto_map` to the remote code, `input_bits 8`, `weight_bits 1`, float16 master weights (ternarised "
        "at run time with absmean, activations per token to int8), SiLU, MHA (4 KV heads = heads), untied "
        "head. Sub-norms: `model.layers.N.self_attn.inner_attn_ln.weight` [hidden], an RMSNorm on the "
        "attention output before o_proj, and `model.layers.N.mlp.ffn_layernorm.weight` [intermediate], on "
        "act(gate) * up before down_proj (where BitNetForCausalLM's attn_sub_norm / ffn_sub_norm sit; read "
        "in a re-implementation of 1bitLLM's modeling_bitnet.py, the original file was not in the index). "
        "The folder loads in no transformers class (remote code); the reference is BitNetForCausalLM "
        "(hidden_act silu, autobitlinear online, rms_norm_eps 1e-5) on the same float16 weights under "
        "BitNet's names. Tokenizer: Llama 2's layout (1bitLLM ships Llama 2's): the sentencepiece-derived "
        "tokenizer.json transformers' LlamaConverter writes (BPE with byte fallback, `<unk>` 0, `<s>` 1, "
        "`</s>` 2, `<0x00>`..`<0xFF>` 3-258, then '▁'-prefixed pieces; normalizer Prepend('▁') + "
        "Replace(' ', '▁'), no pre-tokenizer, BOS added by the post-processor), tokenizer_config "
        "`LlamaTokenizer` with `add_bos_token: true`, `legacy: false`; BOS 1, EOS 2 (no tokenizer.model: "
        "the sentencepiece model itself is not reproduced)."
    ),
    "trilm_unpacked": (
        "SpectraSuite TriLM *_Unpacked form. `LlamaForCausalLM`, no quantization_config, float16 weights. "
        f"Every linear (q/k/v/o, gate/up/down) is ternary codes times one scale per shard of rows: the rows "
        f"split into {TRILM_SHARDS} contiguous equal blocks, each with its own absmean scale "
        "(s = mean|W_block|, codes round(W/s) clamped), stored as code * s in float16 (s rounded to float16 "
        "first, so every stored value of a block is +-s or 0). The shard rule is model parallelism's "
        "(a scale per tensor-parallel shard); neither TriLM's training code nor its model card was in the "
        "index, so the shard count of the real checkpoints is not checked here: treat 2 as an example. "
        "Embeddings, norms and the untied head float16, not ternary. Reference: transformers' float forward "
        "(float activations). Trained with AutoBitLinear online (per-tensor scale, int8 activations) and "
        "re-ternarised per shard for the folder. Tokenizer: GPT-NeoX's layout (byte-level BPE, NFC, "
        "`<|endoftext|>` 0 = BOS = EOS = unk and the document separator, `<|padding|>` 1, no BOS added; "
        "tokenizer_config `GPTNeoXTokenizer`)."
    ),
    "bonsai_unpacked": (
        "prism-ml Ternary-Bonsai -unpacked form. `Qwen3ForCausalLM`, no quantization_config, float16 weights: "
        f"every linear and the embedding (so the tied head too) is ternary codes times one absmean scale per "
        f"row and group of {BONSAI_GROUP} input columns, stored as code * s in float16 (s rounded to float16 "
        "first). q_norm / k_norm, head_dim 64, Qwen3's tokenizer layout as in qwen3_autobitlinear. "
        "Reference: transformers' float forward (float activations). Trained with AutoBitLinear online "
        "(per-tensor scale, int8 activations) and the embedding / tied head ternarised per group in every "
        "forward (a straight-through parametrization, GroupTernary: transformers has no quantized "
        "embedding); the linears re-ternarised per group for the folder. The comparison with the trained "
        "model below is against its float embedding (the parametrization removed)."
    ),
}


def write_manifest(sections: dict[str, str]) -> None:
    lines = [
        "# Ternary checkpoint families (trained, tiny)",
        "",
        f"Generated by {GENERATED_BY}; do not edit. Fixtures for `bitnet-onnx build` on the public ternary",
        "checkpoint families other than BitNetForCausalLM: one folder per family in the layout its published",
        "checkpoints use, transformers' references in `../expected/families/` (`<name>.json`: greedy",
        "continuations of 40 tokens, first-step logits, per-step top-1/top-2 margins, the record format of",
        "`../expected/packed.json`; `<name>_val.json`: validation loss, argmax and margins on held-out rows,",
        "the format of `../expected/val.json` with the one form `<name>`). `tests/python/build_family.py`",
        "compares a built folder with them.",
        "",
        "Common: hidden 128, 2 layers, FFN 256 (llama_bitlinear 384), 512 positions; corpus, grammar, seeds and training loop of",
        f"samples/generate_checkpoints.py (AdamW lr {LR}, {WARMUP} warm-up steps then cosine to 10%, weight decay "
        f"{WEIGHT_DECAY}, clip 1.0), {STEPS} steps, {THREADS} thread(s), deterministic algorithms; each family's own seed.",
        "Versions: torch 2.15.0, transformers 5.23.0 (samples/requirements.txt).",
        "",
    ]
    for name in FAMILIES:
        lines.append(sections.get(name, f"## `{name}/`\n\nNot generated yet.\n"))
    with open(os.path.join(OUT, "MANIFEST.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
