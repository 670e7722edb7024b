#!/usr/bin/env python3
"""Generate samples/hf/trained_lm/: a small *trained* BitNet language model.

Run from the repository root:

    pip install -r samples/requirements.txt
    python samples/generate_trained_lm.py

The other Hugging Face samples (samples/generate_hf.py) hold random weights, which say
nothing about what a lossy conversion costs a real model. This one is trained, so the cost of
quantizing its float parts (the tied embedding / LM head) can be measured as a change of
validation loss and of top-1 agreement (tests/python/val_loss.py).

1. Corpus: a seeded synthetic language (numpy only, nothing downloaded) over 1024 tokens with
   Zipf-like word frequencies and structure a small model can learn: sentences from templates
   whose determiners, adjectives, verbs and pronouns agree with their noun's class (4 classes),
   verbs conditioned on the subject's semantic category, objects on the verb, nouns on a
   per-document topic, and a copy component (a bracketed span `<< ... >>` recalled verbatim
   after `=` one or more sentences later).
2. Training: transformers' `BitNetForCausalLM` loaded with `from_pretrained` from a float
   checkpoint with quantization_config {quant_method bitnet, linear_class autobitlinear,
   quantization_mode online}: every linear layer is transformers' `AutoBitLinear`, whose
   `WeightQuant` ternarises the weight per tensor (absmean) and `ActQuant` the activations per
   token, both straight-through. The helpers are `@torch.compile`d; training runs them eagerly
   (`torch._dynamo.config.disable`), the way the export traces them, so that the trained numbers
   do not depend on inductor's generated C++ (they compile on CPU too, given a C compiler).
   One pass over the training stream, a fixed number of steps, AdamW, seeded, deterministic
   algorithms, 2 threads.
3. Export: the trained master weights go through generate_hf's checkpoint -> from_pretrained ->
   torch.onnx.export(dynamo=True) path in the `autobitlinear_offline` form (ternary codes as
   float weights and a per-tensor weight_scale; the embedding / LM head stays float32).
   Written: model.onnx + model.onnx.data, val_input_ids.pb (int64 [B, T], held-out sequences),
   val_logits.pb (transformers' float32 logits for them) and MANIFEST.md. ONNX Runtime (CPU) is
   checked against transformers' logits and its validation loss (tests/python/val_loss.py) is
   recorded in the manifest.

Deterministic: regenerating gives byte-identical files with the pinned versions on the same CPU
family (the training is float32 on 2 threads; another instruction set may change the last bits
of the trained weights, and so everything after them).
"""
from __future__ import annotations

import bisect
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper

SAMPLES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SAMPLES)
sys.path.insert(0, SAMPLES)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import generate_hf  # noqa: E402
import val_loss  # noqa: E402
from generate import fmt_hist, op_histogram, value_shape  # noqa: E402

GENERATED_BY = "samples/generate_trained_lm.py"
OUT = os.path.join(SAMPLES, "hf", "trained_lm")
FORM = "autobitlinear_offline"
SEED = 20261215

CONFIG = dict(
    generate_hf.CONFIG,
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=10000.0,  # sharper relative positions at head_dim 32 than the 2B model's 500000
)

SEQ = 128  # training and validation sequence length
BATCH = 16  # training sequences per step
STEPS = 3200  # one pass over STEPS * BATCH training sequences (about 4 minutes on 2 idle cores)
LR, WARMUP, WEIGHT_DECAY = 3e-3, 50, 0.01
VAL_SEQS = 64  # held-out sequences the generator reports on (in torch)
VAL_SAMPLE = 4  # of them, committed as val_input_ids.pb / val_logits.pb (logits: 2 MiB)
THREADS = 2


# ONNX Runtime vs transformers' logits. Both run the same float32 model, but where a value lands
# within an ulp of a rounding boundary of the 8-bit activation quantization the two round it
# differently (summation orders differ); the changed code moves that token's hidden state by a
# quantization step and layer 1's attention carries it to later positions. A handful of
# positions then differ by ~1e-3 while the rest agree to ~1e-7, so the whole-tensor relative L2
# (recorded in MANIFEST.md) swings between ~1e-4 and ~1e-3 with the weights; what is checked:
def ort_matches(g: dict) -> bool:
    return (
        g["top1"] == 1.0
        and g["position_rel_l2_median"] < 1e-5
        and g["positions_over_1e-4"] <= 0.05 * VAL_SAMPLE * SEQ
        and abs(g["val_loss_delta"]) < 1e-4
    )



# --------------------------------------------------------------------------- corpus

# Token layout: [start, count). Agreeing classes hold one token per (root, class).
N_CLASS = 4  # agreement classes (like gender x number)
N_CAT = 8  # semantic categories of nouns (and document topics)
LAYOUT = [
    ("special", 16),  # PAD BOS EOS . , << >> = ! and 7 reserved (never emitted)
    ("det", 4 * N_CLASS),  # 4 determiners, each in 4 agreeing forms
    ("pron", 2 * N_CLASS),  # 2 pronouns x 4 forms
    ("conj", 8),
    ("prep", 24),
    ("adv", 40),
    ("adj", 24 * N_CLASS),  # 24 roots x 4 forms
    ("verb", 72 * N_CLASS),  # 72 roots x 4 forms (agree with the subject)
    ("noun", 496),  # each noun has a class and a category
    ("name", 32),  # proper names (subjects, and material for the copy spans)
]
BASE = {}
_at = 0
for _name, _n in LAYOUT:
    BASE[_name] = _at
    _at += _n
VOCAB = _at
assert VOCAB == CONFIG["vocab_size"]
PAD, BOS, EOS, DOT, COMMA, OPEN, CLOSE, RECALL, BANG = range(9)
N_DET, N_PRON, N_ADJ, N_VERB = 4, 2, 24, 72
N_NOUN, N_NAME = dict(LAYOUT)["noun"], dict(LAYOUT)["name"]
COPY_DOCS = 1.0  # share of documents with a recalled span
SPAN = (4, 11)  # span lengths: [low, high)


def zipf(n: int, rng: np.random.Generator, s: float = 1.1, q: float = 2.7) -> np.ndarray:
    """Zipf-Mandelbrot weights over n items in a random (seeded) rank order."""
    w = 1.0 / (np.arange(n) + q) ** s
    return w[rng.permutation(n)] / w.sum()


def cdf(p: np.ndarray) -> list[float]:
    c = np.cumsum(p / p.sum())
    c[-1] = 1.0
    return c.tolist()


class Language:
    """A seeded random grammar; `documents` writes a token stream from it."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.noun_class = rng.integers(0, N_CLASS, N_NOUN)
        self.noun_cat = rng.integers(0, N_CAT, N_NOUN)
        self.name_class = rng.integers(0, N_CLASS, N_NAME)
        self.name_cat = rng.integers(0, N_CAT, N_NAME)
        base = zipf(N_NOUN, rng)
        # Nouns given the document topic: half the mass on the topic's category.
        self.noun_topic = []
        for t in range(N_CAT):
            in_t = np.where(self.noun_cat == t, base, 0.0)
            self.noun_topic.append(cdf(0.5 * base / base.sum() + 0.5 * in_t / in_t.sum()))
        # Objects given the verb: 70% from the verb's preferred category.
        self.verb_pref = rng.integers(0, N_CAT, N_VERB)
        self.noun_cat_only = []
        for c in range(N_CAT):
            in_c = np.where(self.noun_cat == c, base, 0.0)
            self.noun_cat_only.append(cdf(in_c))
        # Verb root given the subject's category; adjective root given the noun's category;
        # adverb given the verb root; determiner; preposition; conjunction; names.
        self.verb_given_cat = [cdf(zipf(N_VERB, rng, s=1.2)) for _ in range(N_CAT)]
        self.adj_given_cat = [cdf(zipf(N_ADJ, rng)) for _ in range(N_CAT)]
        self.adv_given_verb = [cdf(zipf(40, rng, s=1.3)) for _ in range(N_VERB)]
        self.det = cdf(zipf(N_DET, rng, s=1.0, q=1.0))
        self.prep = cdf(zipf(24, rng))
        self.conj = cdf(zipf(8, rng, q=1.0))
        self.name = cdf(zipf(N_NAME, rng, q=1.0))
        self.rng = rng

    def documents(self, n_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """At least n_tokens tokens of whole documents, and a parallel mask of the positions
        whose token is a recalled copy (predictable only by looking back at the span)."""
        rng = np.random.default_rng(seed)
        u = iter(())
        out: list[int] = []
        copy: list[int] = []

        def rand() -> float:
            nonlocal u
            try:
                return next(u)
            except StopIteration:
                u = iter(rng.random(1 << 16).tolist())
                return next(u)

        def draw(c: list[float]) -> int:
            return bisect.bisect_right(c, rand())

        def emit(*toks: int, copied: bool = False) -> None:
            out.extend(toks)
            copy.extend([int(copied)] * len(toks))

        def noun_phrase(c_noun: list[float]) -> tuple[int, int]:
            """DET [ADJ [ADJ]] NOUN, agreeing; returns (class, category) of the head."""
            if rand() < 0.12:
                k = draw(self.name)
                emit(BASE["name"] + k)
                return int(self.name_class[k]), int(self.name_cat[k])
            n = draw(c_noun)
            cls, cat = int(self.noun_class[n]), int(self.noun_cat[n])
            emit(BASE["det"] + draw(self.det) * N_CLASS + cls)
            r = rand()
            for _ in range(2 if r < 0.1 else 1 if r < 0.45 else 0):
                emit(BASE["adj"] + draw(self.adj_given_cat[cat]) * N_CLASS + cls)
            emit(BASE["noun"] + n)
            return cls, cat

        def verb(cls: int, cat: int) -> int:
            v = draw(self.verb_given_cat[cat])
            emit(BASE["verb"] + v * N_CLASS + cls)
            return v

        def sentence(topic: int) -> None:
            cls, cat = noun_phrase(self.noun_topic[topic])
            kind = rand()
            if kind < 0.2:  # NP , CONJ PRON VERB ... : the pronoun agrees with the subject
                emit(COMMA, BASE["conj"] + draw(self.conj))
                emit(BASE["pron"] + (0 if rand() < 0.7 else 1) * N_CLASS + cls)
            v = verb(cls, cat)
            r = rand()
            if r < 0.5:  # object, mostly from the verb's preferred category
                obj = self.noun_cat_only[self.verb_pref[v]] if rand() < 0.7 else self.noun_topic[topic]
                noun_phrase(obj)
            elif r < 0.75:  # prepositional phrase on the topic
                emit(BASE["prep"] + draw(self.prep))
                noun_phrase(self.noun_topic[topic])
            if rand() < 0.4:
                emit(BASE["adv"] + draw(self.adv_given_verb[v]))
            emit(BANG if rand() < 0.08 else DOT)

        while len(out) < n_tokens:
            topic = int(rng.integers(N_CAT))
            n_sent = int(rng.integers(3, 10))
            span = None
            recall_at = -1
            if rand() < COPY_DOCS:  # a span to be recalled later in the document
                k = int(rng.integers(*SPAN))
                pool = rng.integers(0, N_NOUN + N_NAME, k)
                span = [BASE["noun"] + int(p) for p in pool]  # nouns, then names (contiguous)
                open_at = int(rng.integers(0, n_sent - 1))
                recall_at = int(rng.integers(open_at + 1, n_sent))
            emit(BOS)
            for i in range(n_sent):
                if span is not None and i == open_at:
                    emit(OPEN, *span, CLOSE)
                if span is not None and i == recall_at:
                    emit(RECALL)
                    emit(*span, copied=True)
                    emit(DOT)
                sentence(topic)
            emit(EOS)
        return np.asarray(out, dtype=np.int64), np.asarray(copy, dtype=bool)


def chunks(stream: np.ndarray, n: int) -> np.ndarray:
    """The first n consecutive, non-overlapping windows of SEQ tokens."""
    assert stream.size >= n * SEQ, (stream.size, n * SEQ)
    return stream[: n * SEQ].reshape(n, SEQ)


def entropy_nats(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def ngram_baselines(train: np.ndarray, val: np.ndarray) -> dict[str, float]:
    """Unigram entropy of the training stream; unigram and add-0.1 bigram cross-entropy of
    the validation windows' next tokens (fitted on the training stream)."""
    uni = np.bincount(train.reshape(-1), minlength=VOCAB).astype(np.float64)
    big = np.zeros((VOCAB, VOCAB))
    np.add.at(big, (train[:, :-1].reshape(-1), train[:, 1:].reshape(-1)), 1.0)
    prev, nxt = val[:, :-1].reshape(-1), val[:, 1:].reshape(-1)
    p_uni = (uni + 0.1) / (uni + 0.1).sum()
    p_big = (big[prev, nxt] + 0.1) / (big[prev].sum(1) + 0.1 * VOCAB)
    return {
        "unigram_entropy": entropy_nats(uni),
        "unigram_val_ce": float(-np.log(p_uni[nxt]).mean()),
        "bigram_val_ce": float(-np.log(p_big).mean()),
        "tokens_used": int((uni > 0).sum()),
    }


# --------------------------------------------------------------------------- training


def load_online(state: dict[str, torch.Tensor], config: dict = CONFIG):
    """transformers' BitNetForCausalLM with AutoBitLinear (online) layers, from_pretrained
    from a float checkpoint holding `state` (the -bf16 form: master weights)."""
    from transformers import BitNetForCausalLM

    with tempfile.TemporaryDirectory() as ckpt:
        generate_hf.write_checkpoint(ckpt, "autobitlinear_online", state, config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return BitNetForCausalLM.from_pretrained(ckpt, dtype=torch.float32)


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, copy: np.ndarray) -> dict[str, float]:
    """Mean next-token loss over ids (and over the recalled-copy positions / the rest)."""
    model.eval()
    nll = []
    for i in range(0, ids.shape[0], 16):
        logits = model(input_ids=ids[i : i + 16], use_cache=False).logits
        nll.append(F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[i : i + 16, 1:], reduction="none"))
    model.train()
    nll = torch.cat(nll).numpy()
    c = copy[:, 1:]
    return {"val_loss": float(nll.mean()), "copy_loss": float(nll[c].mean()), "other_loss": float(nll[~c].mean())}


def optimizer(model, steps: int, lr: float, warmup: int, weight_decay: float):
    """AdamW (betas 0.9/0.95, weight decay on matrices only) and its schedule: linear warm-up
    over `warmup` steps, then cosine from lr down to 10% of it at `steps`."""
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    other = [p for n, p in model.named_parameters() if p.ndim != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def train(train_ids: torch.Tensor, val_ids: torch.Tensor, val_copy: np.ndarray) -> tuple[dict, list[str], float, dict]:
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    torch.manual_seed(SEED)
    init = BitNetForCausalLM(BitNetConfig(**CONFIG))
    model = load_online({k: v.detach().clone().contiguous() for k, v in init.state_dict().items()})
    linears = [m for m in model.modules() if isinstance(m, AutoBitLinear)]
    assert len(linears) == 7 * CONFIG["num_hidden_layers"] and all(m.online_quant for m in linears)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.train()
    opt, sched = optimizer(model, STEPS, LR, WARMUP, WEIGHT_DECAY)
    log = []
    start = time.perf_counter()
    running = 0.0
    for step in range(STEPS):
        loss = lm_loss(model, train_ids[step * BATCH : (step + 1) * BATCH])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0 or step == 0:
            n = 1 if step == 0 else 100
            v = evaluate(model, val_ids[:16], val_copy[:16])
            line = (
                f"step {step + 1:4d}: train loss {running / n:.4f}, val loss (16 seqs) "
                f"{v['val_loss']:.4f} (recalled-copy positions {v['copy_loss']:.4f})"
            )
            print(f"{line}  [{time.perf_counter() - start:.0f} s]", flush=True)
            if (step + 1) % 200 == 0 or step == 0:
                log.append(line)
            running = 0.0
    seconds = time.perf_counter() - start
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return state, log, seconds, evaluate(model, val_ids, val_copy)


# --------------------------------------------------------------------------- main


def main() -> int:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    # transformers' BitNet helpers are @torch.compile'd: run them eagerly, as the export does.
    torch._dynamo.config.disable = True

    lang = Language(SEED)
    train_stream, _ = lang.documents(STEPS * BATCH * SEQ, SEED + 1)
    val_stream, val_copy_stream = lang.documents(VAL_SEQS * SEQ, SEED + 2)
    train_np = chunks(train_stream, STEPS * BATCH)
    val_np = chunks(val_stream, VAL_SEQS)
    val_copy = chunks(val_copy_stream, VAL_SEQS)
    base = ngram_baselines(train_np, val_np)
    print(
        f"corpus: {train_np.size:,} training tokens ({STEPS} steps x {BATCH} x {SEQ}), "
        f"{val_np.size:,} held-out; {base['tokens_used']} of {VOCAB} token ids occur; "
        f"unigram entropy {base['unigram_entropy']:.4f} nats; val cross-entropy: unigram "
        f"{base['unigram_val_ce']:.4f}, add-0.1 bigram {base['bigram_val_ce']:.4f}",
        flush=True,
    )

    state, log, seconds, final = train(torch.from_numpy(train_np), torch.from_numpy(val_np), val_copy)
    print(
        f"trained in {seconds:.1f} s ({THREADS} threads); val loss ({VAL_SEQS} seqs, online model) "
        f"{final['val_loss']:.4f} (recalled-copy positions {final['copy_loss']:.4f}, other "
        f"{final['other_loss']:.4f})",
        flush=True,
    )

    ids = torch.from_numpy(val_np[:VAL_SAMPLE].copy())
    os.makedirs(OUT, exist_ok=True)
    generate_hf.export(
        FORM, state, ids, out_dir=OUT, config=CONFIG,
        files=("val_input_ids.pb", "val_logits.pb"), generated_by=GENERATED_BY,
    )
    model_path = os.path.join(OUT, "model.onnx")
    reference = val_loss.load(os.path.join(OUT, "val_logits.pb"))
    got, ort_logits = {}, {}
    for level in ("basic", "all"):
        got[level], ort_logits[level] = val_loss.evaluate(model_path, ids.numpy(), level, reference)
        print(f"ONNX Runtime ({level}) vs transformers: {json.dumps(got[level])}", flush=True)
        g = got[level]
        assert ort_matches(g), g
    floor, _ = val_loss.evaluate(model_path, ids.numpy(), "all", ort_logits["basic"])
    print(f"ONNX Runtime all vs basic: {json.dumps(floor)}", flush=True)
    # The offline model over the whole held-out set, in ONNX Runtime.
    full, _ = val_loss.evaluate(model_path, val_np, "basic")
    print(f"ONNX Runtime val loss over {VAL_SEQS} held-out seqs: {full['val_loss']:.4f}", flush=True)

    onnx_model = onnx.load(model_path, load_external_data=False)
    hist = op_histogram(onnx_model)
    b = got["basic"]
    sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in ("model.onnx", "model.onnx.data", "val_input_ids.pb", "val_logits.pb")}
    lines = [
        "# Trained BitNet language model sample",
        "",
        f"Generated by {GENERATED_BY}; do not edit. A small `BitNetForCausalLM` trained on a synthetic",
        "language, for measuring what a lossy conversion costs a trained model (validation-loss change,",
        "top-1 agreement): `python tests/python/val_loss.py MODEL --input-ids "
        "samples/hf/trained_lm/val_input_ids.pb --reference-logits samples/hf/trained_lm/val_logits.pb`.",
        "",
        f"Versions: torch {torch.__version__.split('+')[0]}, transformers {__import__('transformers').__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}.",
        "",
        "## Model",
        "",
        f"- `BitNetForCausalLM`: {CONFIG['num_hidden_layers']} layers, hidden {CONFIG['hidden_size']}, FFN "
        f"{CONFIG['intermediate_size']} (relu2), {CONFIG['num_attention_heads']} heads / "
        f"{CONFIG['num_key_value_heads']} KV heads, vocab {VOCAB}, tied embeddings (float32: the "
        f"embedding is the LM head), max positions {CONFIG['max_position_embeddings']}, rope_theta "
        f"{CONFIG['rope_theta']:g}; "
        f"{sum(v.numel() for k, v in state.items() if k != 'lm_head.weight'):,} parameters, "
        f"{7 * CONFIG['num_hidden_layers']} BitNet linear layers.",
        "- Trained with transformers' own BitNet quantization: loaded with `from_pretrained` from a float "
        "checkpoint with quantization_config `{\"quant_method\": \"bitnet\", \"linear_class\": "
        "\"autobitlinear\", \"quantization_mode\": \"online\"}`, so every linear layer is `AutoBitLinear` "
        "(weights ternarised per tensor with absmean, activations per token to 8 bits, both "
        "straight-through); the `@torch.compile`d helpers run eagerly.",
        f"- Training: {STEPS} steps of {BATCH} x {SEQ} tokens (one pass over {train_np.size:,} tokens), "
        f"AdamW (lr {LR}, betas 0.9/0.95, weight decay {WEIGHT_DECAY} on matrices), {WARMUP} warm-up "
        "steps then cosine to 10%, gradient clip 1.0; seeded, deterministic algorithms, "
        f"{THREADS} threads.",
        *[f"  - {line}" for line in log],
        f"- Exported in the `{FORM}` form (quantization_config `{json.dumps(generate_hf.FORMS[FORM], sort_keys=True)}`: "
        "ternary codes as float weights, per-tensor weight_scale = absmean) through "
        "samples/generate_hf.py's checkpoint -> `from_pretrained` -> `torch.onnx.export(dynamo=True)`.",
        "",
        "## Corpus",
        "",
        f"A seeded synthetic language (`Language` in {GENERATED_BY}, numpy only) over {VOCAB} token "
        f"ids, {base['tokens_used']} of which occur (PAD and 7 reserved ids never do): Zipf-like "
        "frequencies within each word class; sentences from templates (subject, verb, optional object "
        "or prepositional phrase, optional adverb, `.` or `!`) whose determiners, adjectives, verbs and "
        f"pronouns agree with their noun's class ({N_CLASS} classes); the verb depends on the subject's "
        f"semantic category ({N_CAT}), the object on the verb, nouns on a per-document topic; documents "
        f"of 3-9 sentences between BOS and EOS, {COPY_DOCS:.0%} of them with a span of {SPAN[0]}-{SPAN[1] - 1} "
        "random nouns/names `<< ... >>` recalled verbatim after `=` one or more sentences later. Training and validation "
        "streams are drawn independently (different seeds) and cut into consecutive windows of "
        f"{SEQ} tokens.",
        "",
        f"- Unigram entropy (training stream): {base['unigram_entropy']:.4f} nats "
        f"({base['unigram_entropy'] / math.log(2):.3f} bits).",
        f"- Validation cross-entropy of n-gram baselines fitted on the training stream: unigram "
        f"{base['unigram_val_ce']:.4f}, add-0.1 bigram {base['bigram_val_ce']:.4f} nats.",
        f"- Trained model (transformers, online form, {VAL_SEQS} held-out sequences): "
        f"{final['val_loss']:.4f} nats; {final['copy_loss']:.4f} on the recalled-copy positions, "
        f"{final['other_loss']:.4f} on the rest. ONNX Runtime on model.onnx, same "
        f"{VAL_SEQS} sequences: {full['val_loss']:.4f}.",
        "",
        "## Files",
        "",
        f"- `model.onnx` {sizes['model.onnx']:,} B, `model.onnx.data` {sizes['model.onnx.data']:,} B. Opset "
        + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in onnx_model.opset_import)
        + ". Inputs: " + ", ".join(f"`{value_shape(i)}`" for i in onnx_model.graph.input)
        + ". Outputs: " + ", ".join(f"`{value_shape(o)}`" for o in onnx_model.graph.output) + ".",
        f"- Nodes by op type ({sum(hist.values())} nodes): {fmt_hist(hist)}.",
        f"- `val_input_ids.pb` {sizes['val_input_ids.pb']:,} B: int64 {list(ids.shape)}, the first "
        f"{VAL_SAMPLE} held-out sequences. `val_logits.pb` {sizes['val_logits.pb']:,} B: float32 "
        f"{list(reference.shape)}, transformers' logits for them (the exported `{FORM}` model "
        "loaded with `from_pretrained`).",
        f"- Validation loss (mean next-token cross-entropy over `val_input_ids.pb`, "
        f"{b['tokens']} predictions): transformers {b['reference_val_loss']:.6f}, ONNX Runtime CPU "
        f"{b['val_loss']:.6f} (next-token accuracy {b['next_token_accuracy']:.4f}).",
        "- ONNX Runtime vs transformers' logits: "
        + "; ".join(
            f"{lvl}: rel. L2 {got[lvl]['rel_l2']:.2e}, max abs {got[lvl]['max_abs_error']:.2e}, top-1 "
            f"{got[lvl]['top1']:.4f}; per position: median rel. L2 {got[lvl]['position_rel_l2_median']:.1e}, "
            f"{got[lvl]['positions_over_1e-4']} of {ids.numel()} positions over 1e-4"
            for lvl in got
        )
        + f". ONNX Runtime all vs basic: rel. L2 {floor['rel_l2']:.2e}, top-1 {floor['top1']:.4f}, "
        f"val-loss change {floor['val_loss_delta']:+.1e}. Where a value lands within an ulp of a "
        "rounding boundary of the 8-bit activation quantization, two float32 implementations round "
        "it differently and attention carries the changed token to later positions: a few positions "
        "differ by ~1e-3, the rest by ~1e-7. Any other implementation of this model (a conversion "
        "too) shows the same noise, so read a conversion's val-loss change and top-1 agreement "
        "against the all-vs-basic figures above.",
        "",
    ]
    with open(os.path.join(OUT, "MANIFEST.md"), "w") as f:
        f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
