#!/usr/bin/env python3
"""Generate samples/checkpoints/: tiny *trained* Hugging Face BitNet checkpoints, their tokenizer
and transformers' reference generations (fixtures for `bitnet-onnx build CHECKPOINT_DIR -o OUT`).

Run from the repository root:

    pip install -r samples/requirements.txt
    python samples/generate_checkpoints.py

1. Corpus: a seeded synthetic English-like language (numpy only, nothing downloaded): a small
   grammar over ~350 words (subject / verb / object agreement, a/an, prepositional phrases,
   adverbs, conjoined clauses with a pronoun agreeing with the subject, paragraphs), each choice
   drawn from a short ranked preference list with geometric weights (each choice 0.3 times as
   likely as the one before it), keyed on the word it depends on. Greedy continuations of such
   text are confident, so generations can be compared token for token.
2. Tokenizer: a byte-level BPE tokenizer in the form of Llama 3 / BitNet-2B-4T (Llama 3's split
   regex, ByteLevel, `ignore_merges`, a TemplateProcessing post-processor that prepends
   `<|begin_of_text|>`), 510 tokens trained with `tokenizers` on the corpus plus the special
   tokens `<|begin_of_text|>` (BOS, id 510) and `<|end_of_text|>` (EOS, id 511) after them, as in
   Llama 3. tokenizer_class `PreTrainedTokenizerFast` (what Llama 3's tokenizer_config declares):
   transformers 5 loads it as `TokenizersBackend`, onnxruntime-genai's tokenizer
   (onnxruntime-extensions) as a generic BPE tokenizer (tests/python/genai_tokenizer_check.py).
3. Model: `BitNetForCausalLM`, the config of microsoft/bitnet-b1.58-2B-4T but tiny (hidden 128,
   2 layers, 4 heads / 2 KV heads, FFN 344, vocab 512), trained with transformers' own
   AutoBitLinear online classes as samples/generate_trained_lm.py does (helpers eager,
   deterministic algorithms, 2 threads, seeded).
4. Checkpoints, each a complete folder (config.json, model.safetensors, generation_config.json
   and the tokenizer files):
     bf16/           microsoft/bitnet-b1.58-2B-4T-bf16's form: the trained master weights in
                     bfloat16, quantization_config autobitlinear / online.
     packed/         microsoft/bitnet-b1.58-2B-4T's form: every BitNet linear ternarised from the
                     trained float32 masters exactly as `WeightQuant` does and packed to uint8
                     [out/4, in] (transformers' `pack_weights`), weight_scale = 1 / absmean in
                     bfloat16 (what `BitLinear` divides by); embeddings and norms bfloat16;
                     bitlinear / offline.
     packed_untied/  packed, with tie_word_embeddings false and an explicit lm_head.weight (a
                     copy of the embedding).
5. References, expected/<form>.json: for each prompt its text, transformers' input ids, the
   greedy continuation (`generate(do_sample=False, max_new_tokens=40)` of the folder loaded with
   `from_pretrained(dir, dtype=torch.float32)`), the float32 logits of the first generation step
   and the top-1 / top-2 logit margin of every step. expected/tokenizer_cases.json: more strings
   and their ids. MANIFEST.md records everything.

Deterministic: regenerating gives byte-identical files with the pinned versions on the same CPU
family (training is float32 on 2 threads; another instruction set may change the last bits of
the trained weights, and so everything after them).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import re
import sys
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SAMPLES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SAMPLES)
sys.path.insert(0, SAMPLES)
import generate_hf  # noqa: E402
import generate_trained_lm  # noqa: E402

GENERATED_BY = "samples/generate_checkpoints.py"
OUT = os.path.join(SAMPLES, "checkpoints")
SEED = 20270117
THREADS = 2

BOS_TOKEN, EOS_TOKEN = "<|begin_of_text|>", "<|end_of_text|>"
BPE_VOCAB = 510  # byte-level BPE tokens (256 bytes + merges); the two special tokens follow
VOCAB = BPE_VOCAB + 2
BOS_ID, EOS_ID = BPE_VOCAB, BPE_VOCAB + 1
# Llama 3's pre-tokenizer split (tokenizer.json of Meta-Llama-3 / bitnet-b1.58-2B-4T).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# microsoft/bitnet-b1.58-2B-4T's config.json, sizes shrunk (hidden 2560 -> 128, 30 -> 2 layers,
# 20 / 5 heads -> 4 / 2, FFN 6912 -> 344 keeping its ratio, vocab 128256 -> 512, 4096 -> 512
# positions); every other field as the real file has it.
CONFIG = dict(
    architectures=["BitNetForCausalLM"],
    attention_bias=False,
    attention_dropout=0.0,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    hidden_act="relu2",
    hidden_size=128,
    initializer_range=0.02,
    intermediate_size=344,
    max_position_embeddings=512,
    model_type="bitnet",
    num_attention_heads=4,
    num_hidden_layers=2,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    torch_dtype="bfloat16",
    use_cache=True,
    vocab_size=VOCAB,
)
FORMS = {
    "packed": dict(quant_method="bitnet", linear_class="bitlinear", quantization_mode="offline"),
    "bf16": dict(quant_method="bitnet", linear_class="autobitlinear", quantization_mode="online"),
    "packed_untied": dict(quant_method="bitnet", linear_class="bitlinear", quantization_mode="offline"),
}

SEQ = 128  # training sequence length (every sequence starts at a document's BOS)
BATCH = 16
STEPS = 3000
LR, WARMUP, WEIGHT_DECAY = 3e-3, 50, 0.01
VAL_SEQS = 32
TOKENIZER_DOCS = 4000  # documents the BPE tokenizer is trained on
MAX_NEW_TOKENS = 40
# Prompt lengths in tokens (BOS included): one prompt per bucket, the candidate with the largest
# top-1 / top-2 margin over all three forms picked from CANDIDATES held-out document openings.
BUCKETS = [(5, 7), (11, 14), (18, 22), (26, 30)]
CANDIDATES = 8
MIN_MARGIN = 0.05


# --------------------------------------------------------------------------- language

ANIMATE = [  # singular, plural, subject pronoun of the singular
    ("cat", "cats", "it"), ("dog", "dogs", "it"), ("bird", "birds", "it"), ("horse", "horses", "it"),
    ("fox", "foxes", "it"), ("rabbit", "rabbits", "it"), ("owl", "owls", "it"), ("wolf", "wolves", "it"),
    ("mouse", "mice", "it"), ("child", "children", "she"), ("farmer", "farmers", "he"),
    ("teacher", "teachers", "she"), ("doctor", "doctors", "she"), ("king", "kings", "he"),
    ("queen", "queens", "she"), ("baker", "bakers", "he"), ("soldier", "soldiers", "he"),
    ("sailor", "sailors", "he"), ("painter", "painters", "she"), ("student", "students", "she"),
    ("girl", "girls", "she"), ("boy", "boys", "he"), ("man", "men", "he"), ("woman", "women", "she"),
    ("friend", "friends", "he"), ("sister", "sisters", "she"), ("brother", "brothers", "he"),
    ("neighbor", "neighbors", "she"), ("guard", "guards", "he"), ("nurse", "nurses", "she"),
]
THINGS = [
    ("book", "books"), ("letter", "letters"), ("song", "songs"), ("apple", "apples"), ("stone", "stones"),
    ("boat", "boats"), ("window", "windows"), ("door", "doors"), ("table", "tables"), ("lamp", "lamps"),
    ("cup", "cups"), ("bell", "bells"), ("key", "keys"), ("box", "boxes"), ("coin", "coins"),
    ("map", "maps"), ("candle", "candles"), ("flower", "flowers"), ("basket", "baskets"), ("coat", "coats"),
    ("hat", "hats"), ("cake", "cakes"), ("ring", "rings"), ("picture", "pictures"), ("chair", "chairs"),
    ("bottle", "bottles"), ("drum", "drums"), ("kite", "kites"), ("rope", "ropes"), ("egg", "eggs"),
]
PLACES = [
    ("river", "rivers"), ("tree", "trees"), ("house", "houses"), ("garden", "gardens"), ("city", "cities"),
    ("village", "villages"), ("road", "roads"), ("hill", "hills"), ("mountain", "mountains"),
    ("forest", "forests"), ("field", "fields"), ("market", "markets"), ("school", "schools"),
    ("lake", "lakes"), ("bridge", "bridges"), ("tower", "towers"), ("castle", "castles"),
    ("station", "stations"), ("harbor", "harbors"), ("valley", "valleys"),
]
NAMES = [
    ("Anna", "she"), ("Ben", "he"), ("Clara", "she"), ("David", "he"), ("Emma", "she"), ("Felix", "he"),
    ("Grace", "she"), ("Henry", "he"), ("Iris", "she"), ("Jack", "he"), ("Lucy", "she"), ("Max", "he"),
    ("Nora", "she"), ("Oscar", "he"), ("Rosa", "she"), ("Tom", "he"),
]
VERBS_T = [  # transitive, objects are things
    ("sees", "see"), ("finds", "find"), ("carries", "carry"), ("likes", "like"), ("builds", "build"),
    ("reads", "read"), ("paints", "paint"), ("opens", "open"), ("watches", "watch"), ("keeps", "keep"),
    ("sells", "sell"), ("buys", "buy"), ("loves", "love"), ("holds", "hold"), ("brings", "bring"),
    ("takes", "take"), ("wants", "want"), ("draws", "draw"), ("cleans", "clean"), ("drops", "drop"),
    ("moves", "move"), ("hides", "hide"), ("fixes", "fix"), ("counts", "count"),
]
VERBS_A = [  # transitive, objects are people or animals
    ("helps", "help"), ("follows", "follow"), ("visits", "visit"), ("calls", "call"), ("meets", "meet"),
    ("thanks", "thank"), ("teaches", "teach"), ("greets", "greet"),
]
VERBS_I = [  # intransitive
    ("sleeps", "sleep"), ("runs", "run"), ("sings", "sing"), ("waits", "wait"), ("laughs", "laugh"),
    ("walks", "walk"), ("smiles", "smile"), ("works", "work"), ("dances", "dance"), ("rests", "rest"),
    ("swims", "swim"), ("shouts", "shout"),
]
VERBS = VERBS_T + VERBS_A + VERBS_I
ADJS = [
    "old", "young", "small", "big", "quiet", "happy", "tired", "brave", "clever", "gentle", "red", "green",
    "dark", "bright", "cold", "warm", "little", "tall", "strange", "kind", "wild", "lazy", "busy", "proud",
]
DET_SG = ["the", "a", "this", "my", "our", "that", "every", "his", "her"]  # by rank
DET_PL = ["the", "some", "these", "many", "our", "those", "two", "three", "my"]
PREPS = ["near", "behind", "under", "over", "across", "beside", "into", "through", "from", "to", "at", "with"]
ADVS = ["slowly", "quickly", "quietly", "again", "today", "often", "always", "soon", "together", "early",
        "later", "happily"]
CONJS = ["and", "but", "because", "so", "while", "when"]
RATIO = 0.3  # weight of each ranked choice relative to the one before it


def geometric(n: int) -> list[float]:
    w = RATIO ** np.arange(n)
    c = np.cumsum(w / w.sum())
    c[-1] = 1.0
    return c.tolist()


def uniform(n: int) -> list[float]:
    c = (np.arange(1, n + 1) / n).tolist()
    c[-1] = 1.0
    return c


def lexicon() -> list[str]:
    """Every word form the grammar can emit (sentence-initial capitals aside)."""
    words = {w for entry in ANIMATE for w in entry} | {w for entry in THINGS + PLACES for w in entry}
    words |= {n for n, _ in NAMES} | {w for v in VERBS for w in v} | set(ADJS + DET_SG + DET_PL + PREPS)
    words |= set(ADVS + CONJS) | {"an", "he", "she", "it", "they"}
    return sorted(words)


class Grammar:
    """A seeded random grammar; `document` writes one document's text."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)

        def prefs(n: int, k: int) -> tuple[list[int], list[float]]:
            return [int(i) for i in rng.permutation(n)[:k]], geometric(k)

        # Keys: the words a choice depends on. A sentence's subject depends on the noun the
        # sentence before ended on (its "focus"); the verb on the subject; the object on the verb.
        foci = [a[0] for a in ANIMATE] + [t[0] for t in THINGS] + [p[0] for p in PLACES] + [n for n, _ in NAMES]
        self.subject_after = {f: prefs(len(ANIMATE), 4) for f in foci}
        self.names = prefs(len(NAMES), 6)
        # A document's first subject is uniform, so that documents (and prompts) open differently.
        self.subject_after["<start>"] = list(range(len(ANIMATE))), uniform(len(ANIMATE))
        self.first_names = list(range(len(NAMES))), uniform(len(NAMES))
        self.verb_for = {s: prefs(len(VERBS), 4) for s in [a[0] for a in ANIMATE] + [n for n, _ in NAMES]}
        self.thing_for = {v: prefs(len(THINGS), 4) for v, _ in VERBS_T}
        self.animate_for = {v: prefs(len(ANIMATE), 4) for v, _ in VERBS_A}
        self.adj_for = {n: prefs(len(ADJS), 3) for n in foci}
        self.prep_for = {v: prefs(len(PREPS), 3) for v, _ in VERBS}
        self.place_for = {p: prefs(len(PLACES), 4) for p in PREPS}
        self.adv_for = {v: prefs(len(ADVS), 3) for v, _ in VERBS}
        self.det_sg, self.det_pl = geometric(len(DET_SG)), geometric(len(DET_PL))
        self.conj = geometric(len(CONJS))

    def document(self, rng: np.random.Generator) -> str:
        buf = iter(())

        def rand() -> float:
            nonlocal buf
            try:
                return next(buf)
            except StopIteration:
                buf = iter(rng.random(1024).tolist())
                return next(buf)

        def pick(table: tuple[list[int], list[float]]) -> int:
            items, c = table
            return items[bisect.bisect_right(c, rand())]

        def rank(c: list[float]) -> int:
            return bisect.bisect_right(c, rand())

        words: list[str] = []

        def noun_phrase(noun_sg: str, form: str, plural: bool, p_adj: float) -> None:
            """DET [ADJ] NOUN; a/an by the next word's first letter."""
            det = DET_PL[rank(self.det_pl)] if plural else DET_SG[rank(self.det_sg)]
            adj = ADJS[pick(self.adj_for[noun_sg])] if rand() < p_adj else None
            nxt = adj or form
            if det == "a" and nxt[0] in "aeiou":
                det = "an"
            words.append(det)
            if adj:
                words.append(adj)
            words.append(form)

        def subject(focus: str) -> tuple[str, bool, str]:
            """Returns (key for the verb, plural, pronoun)."""
            if rand() < 0.15:
                name, pron = NAMES[pick(self.first_names if focus == "<start>" else self.names)]
                words.append(name)
                return name, False, pron
            sg, pl, pron = ANIMATE[pick(self.subject_after[focus])]
            plural = rand() >= 0.85
            noun_phrase(sg, pl if plural else sg, plural, 0.2)
            return sg, plural, "they" if plural else pron

        def verb_phrase(key: str, plural: bool) -> tuple[str, str | None]:
            """VERB [OBJECT]: returns the verb (its 3rd person form, the key of what depends on
            it) and the object's key (the next focus), if any."""
            v = pick(self.verb_for[key])
            third, base = VERBS[v]
            words.append(base if plural else third)
            if v < len(VERBS_T):
                sg, pl = THINGS[pick(self.thing_for[third])]
                obj_pl = rand() >= 0.85
                noun_phrase(sg, pl if obj_pl else sg, obj_pl, 0.15)
                return third, sg
            if v < len(VERBS_T) + len(VERBS_A):
                if rand() < 0.2:
                    name, _ = NAMES[pick(self.names)]
                    words.append(name)
                    return third, name
                sg, pl, _ = ANIMATE[pick(self.animate_for[third])]
                obj_pl = rand() >= 0.85
                noun_phrase(sg, pl if obj_pl else sg, obj_pl, 0.15)
                return third, sg
            return third, None

        def sentence(focus: str) -> str:
            start = len(words)
            key, plural, pron = subject(focus)
            verb, obj = verb_phrase(key, plural)
            new_focus = obj or key
            if rand() < 0.2:  # prepositional phrase
                prep = PREPS[pick(self.prep_for[verb])]
                words.append(prep)
                sg, pl = PLACES[pick(self.place_for[prep])]
                place_pl = rand() >= 0.9
                noun_phrase(sg, pl if place_pl else sg, place_pl, 0.1)
                new_focus = sg
            if rand() < 0.15:
                words.append(ADVS[pick(self.adv_for[verb])])
            if rand() < 0.1:  # ", CONJ PRONOUN VERB [OBJECT]": the pronoun agrees with the subject
                words[-1] += ","
                words.append(CONJS[rank(self.conj)])
                words.append(pron)
                _, obj2 = verb_phrase(key, pron == "they")
                new_focus = obj2 or new_focus
            words[-1] += "!" if rand() < 0.1 else "."
            words[start] = words[start][0].upper() + words[start][1:]
            return new_focus

        n_sent = int(rng.integers(6, 17))
        text = []
        focus = "<start>"
        for i in range(n_sent):
            words.clear()
            focus = sentence(focus)
            text.append(" ".join(words))
            if i + 1 < n_sent:
                text.append("\n" if rand() < 0.1 else " ")
        return "".join(text)


def documents(grammar: Grammar, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [grammar.document(rng) for _ in range(n)]


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == BPE_VOCAB, tok.get_vocab_size()
    tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    assert tok.token_to_id(BOS_TOKEN) == BOS_ID and tok.token_to_id(EOS_TOKEN) == EOS_ID
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{BOS_TOKEN}:0 $A:0",
            pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
            special_tokens=[(BOS_TOKEN, BOS_ID)],
        ),
    ])
    return tok


def special(content: str) -> dict:
    return dict(content=content, lstrip=False, normalized=False, rstrip=False, single_word=False)


def write_tokenizer(tok, path: str) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json as Llama 3 /
    bitnet-b1.58-2B-4T ship them (no chat template; clean_up_tokenization_spaces off, which
    transformers 5 ignores for BPE anyway and onnxruntime-extensions would apply when decoding)."""
    tok.save(os.path.join(path, "tokenizer.json"), pretty=True)
    config = {
        "added_tokens_decoder": {str(BOS_ID): dict(special(BOS_TOKEN), special=True),
                                 str(EOS_ID): dict(special(EOS_TOKEN), special=True)},
        "bos_token": BOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": CONFIG["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    dump_json(os.path.join(path, "tokenizer_config.json"), config)
    dump_json(os.path.join(path, "special_tokens_map.json"),
              {"bos_token": special(BOS_TOKEN), "eos_token": special(EOS_TOKEN)})


def dump_json(path: str, obj, indent: int = 2) -> None:
    """Indented JSON, with every list of numbers on one line."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    text = re.sub(
        r"\[\s+([-+0-9.eE,\s]+?)\s+\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    with open(path, "w") as f:
        f.write(text + "\n")


# --------------------------------------------------------------------------- training


def sequences(tok, texts: list[str]) -> np.ndarray:
    """Training rows of SEQ tokens, each starting at a document's BOS: documents (BOS text EOS)
    are concatenated into a row until it is full; the rest of the last one is dropped."""
    rows, row = [], []
    for enc in tok.encode_batch(texts):
        ids = enc.ids + [EOS_ID]  # the post-processor put BOS in front
        assert ids[0] == BOS_ID
        row.extend(ids)
        if len(row) >= SEQ:
            rows.append(row[:SEQ])
            row = []
    return np.asarray(rows, dtype=np.int64)


@torch.no_grad()
def val_loss(model, ids: torch.Tensor) -> float:
    model.eval()
    losses = [float(generate_trained_lm.lm_loss(model, ids[i : i + 16])) for i in range(0, ids.shape[0], 16)]
    model.train()
    return float(np.mean(losses))


def train(train_ids: torch.Tensor, val_ids: torch.Tensor) -> tuple[dict, list[str], float, float]:
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    config = dict(CONFIG, torch_dtype="float32")
    torch.manual_seed(SEED)
    init = BitNetForCausalLM(BitNetConfig(**config))
    model = generate_trained_lm.load_online(
        {k: v.detach().clone().contiguous() for k, v in init.state_dict().items()}, config
    )
    linears = [m for m in model.modules() if isinstance(m, AutoBitLinear)]
    assert len(linears) == 7 * CONFIG["num_hidden_layers"] and all(m.online_quant for m in linears)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.train()
    opt, sched = generate_trained_lm.optimizer(model, STEPS, LR, WARMUP, WEIGHT_DECAY)
    log = []
    start = time.perf_counter()
    running = 0.0
    for step in range(STEPS):
        loss = generate_trained_lm.lm_loss(model, train_ids[step * BATCH : (step + 1) * BATCH])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0 or step == 0:
            n = 1 if step == 0 else 100
            line = f"step {step + 1:4d}: train loss {running / n:.4f}, val loss {val_loss(model, val_ids):.4f}"
            print(f"{line}  [{time.perf_counter() - start:.0f} s]", flush=True)
            if (step + 1) % 250 == 0 or step == 0:
                log.append(line)
            running = 0.0
    seconds = time.perf_counter() - start
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return state, log, seconds, val_loss(model, val_ids)


# --------------------------------------------------------------------------- checkpoints


Tensors = dict[str, torch.Tensor]


def checkpoint_tensors(form: str, master: Tensors, state: Tensors) -> Tensors:
    """`master`: the master weights in bfloat16 (no lm_head), `state` the trained float32 ones.
    The packed forms hold every BitNet linear as WeightQuant's codes of the float32 weight,
    packed by transformers' pack_weights, and its weight_scale = WeightQuant's scale
    1 / mean|W| (BitLinear divides its output by it) in bfloat16; the rest is `master`."""
    from transformers.integrations.bitnet import pack_weights

    if form == "bf16":
        return dict(master)
    out = {}
    for k, v in master.items():
        if not generate_hf.is_linear(k):
            out[k] = v
            continue
        codes, s = generate_hf.ternary(state[k])
        out[k] = pack_weights(codes.clone())
        out[k[: -len("weight")] + "weight_scale"] = s.reshape(1).to(torch.bfloat16)
    if form == "packed_untied":
        out["lm_head.weight"] = master["model.embed_tokens.weight"].clone()
    return out


def write_checkpoint(path: str, form: str, master: Tensors, state: Tensors, tok) -> Tensors:
    from safetensors.torch import save_file
    from transformers import BitNetConfig, GenerationConfig

    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    config = dict(CONFIG, quantization_config=FORMS[form])
    if form == "packed_untied":
        config["tie_word_embeddings"] = False
    config["transformers_version"] = __import__("transformers").__version__
    dump_json(os.path.join(path, "config.json"), config)
    model_config = BitNetConfig(**{k: v for k, v in config.items() if k != "quantization_config"})
    GenerationConfig.from_model_config(model_config).save_pretrained(path)
    tensors = checkpoint_tensors(form, master, state)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(tok, path)
    return tensors


def load(path: str):
    from transformers import BitNetForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BitNetForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def check_ternary(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> int:
    """The packed codes are WeightQuant's: transformers' unpack_weights(packed) / s equals
    WeightQuant.forward(W) bit for bit for every BitNet linear's trained float32 weight W
    (s = 1 / mean|W|, stored rounded to bfloat16 as weight_scale)."""
    from transformers.integrations.bitnet import WeightQuant, unpack_weights

    n = 0
    for k, w in state.items():
        if not generate_hf.is_linear(k):
            continue
        codes = unpack_weights(tensors[k], dtype=torch.float32)
        assert codes.shape == w.shape, (k, codes.shape, w.shape)
        _, s = generate_hf.ternary(w)
        online = WeightQuant.forward(None, w.float())
        assert torch.equal(codes / s, online), k
        scale = tensors[k[: -len("weight")] + "weight_scale"]
        assert scale.dtype == torch.bfloat16 and torch.equal(scale, s.reshape(1).to(torch.bfloat16)), k
        n += 1
    return n


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).double()
    per_position = d.norm(dim=-1) / b.double().norm(dim=-1)
    return {
        "rel_l2": float(d.norm() / b.double().norm()),
        "max_abs": float(d.abs().max()),
        "position_rel_l2_median": float(per_position.median()),
        "top1": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
    }


def code_flips(state: dict[str, torch.Tensor], master: dict[str, torch.Tensor]) -> tuple[int, int]:
    """How many ternary codes change when the float32 masters are rounded to bfloat16."""
    flips = total = 0
    for k, w in master.items():
        if generate_hf.is_linear(k):
            flips += int((generate_hf.ternary(state[k])[0] != generate_hf.ternary(w)[0]).sum())
            total += w.numel()
    return flips, total


# --------------------------------------------------------------------------- references


def prompt_candidates(tok_hf, texts: list[str]) -> list[list[str]]:
    """For each bucket, the longest word-boundary prefixes of held-out documents whose token
    count (BOS included) falls into it: CANDIDATES per bucket, each from its own document."""
    out, at = [], 0
    for lo, hi in BUCKETS:
        found = []
        while len(found) < CANDIDATES:
            text = texts[at]
            at += 1
            words = text.split(" ")
            best = None
            for n in range(1, len(words)):
                prefix = " ".join(words[:n])
                if "\n" in prefix.split(" ")[-1]:
                    continue  # never end on a line break
                count = len(tok_hf(prefix)["input_ids"])
                if count > hi:
                    break
                if count >= lo:
                    best = prefix
            if best is not None:
                found.append(best)
        out.append(found)
    return out


@torch.no_grad()
def greedy(model, tok_hf, text: str) -> dict:
    enc = tok_hf(text, return_tensors="pt")
    ids = enc["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=enc["attention_mask"],
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=EOS_ID,
    )
    new = out.sequences[0, ids.shape[1]:]
    logits = torch.stack([step[0] for step in out.logits])  # [steps, V], float32
    top2 = logits.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    assert torch.equal(logits.argmax(-1), new), "greedy token is not the argmax"
    # The cached generation against one forward pass over prompt + continuation (no cache).
    full = model(input_ids=out.sequences[:, :-1], use_cache=False).logits[0, ids.shape[1] - 1 :]
    return {
        "input_ids": ids[0].tolist(),
        "new_tokens": new.tolist(),
        "first_step_logits": logits[0],
        "margins": margins,
        "full_same_tokens": bool(torch.equal(full.argmax(-1), new)),
        "full_max_abs": float((full - logits).abs().max()),
    }


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


# --------------------------------------------------------------------------- main


def main() -> int:
    wall = time.perf_counter()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    # transformers' BitNet helpers are @torch.compile'd: run them eagerly.
    torch._dynamo.config.disable = True
    import safetensors
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    grammar = Grammar(SEED)
    n_train_docs = 0
    tok_texts = documents(grammar, TOKENIZER_DOCS, SEED + 1)
    tok = train_tokenizer(tok_texts)
    print(f"tokenizer: {tok.get_vocab_size()} tokens  [{time.perf_counter() - wall:.0f} s]", flush=True)

    # Training rows: documents until STEPS * BATCH rows are full.
    rng_docs = np.random.default_rng(SEED + 2)
    chunks = []
    while sum(len(c) for c in chunks) < STEPS * BATCH:
        texts = [grammar.document(rng_docs) for _ in range(4000)]
        n_train_docs += len(texts)
        chunks.append(sequences(tok, texts))
    rows = np.concatenate(chunks)[: STEPS * BATCH]
    val_texts = documents(grammar, 400, SEED + 3)
    val_rows = sequences(tok, val_texts)[:VAL_SEQS]
    print(f"corpus: {rows.size:,} training tokens ({n_train_docs} documents), {val_rows.size:,} held out  "
          f"[{time.perf_counter() - wall:.0f} s]", flush=True)

    state, log, seconds, final_val = train(torch.from_numpy(rows), torch.from_numpy(val_rows))
    print(f"trained in {seconds:.1f} s; val loss {final_val:.4f}", flush=True)

    # The trained model itself (float32 masters, AutoBitLinear online) on held-out rows.
    cfg32 = dict(CONFIG, torch_dtype="float32")
    trained = generate_trained_lm.load_online(state, cfg32).eval()
    val_ids = torch.from_numpy(val_rows[:8].copy())
    with torch.no_grad():
        ref_logits = trained(input_ids=val_ids, use_cache=False).logits

    # The masters in bfloat16: the -bf16 checkpoint, and the packed forms' embeddings and norms
    # (their BitNet linears are ternarised from the float32 masters).
    master = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items() if k != "lm_head.weight"}
    flips = code_flips(state, master)
    print(f"ternary codes changed by the bfloat16 rounding of the masters: {flips[0]} of {flips[1]}", flush=True)
    os.makedirs(OUT, exist_ok=True)
    tensors, models, agree = {}, {}, {}
    for form in FORMS:
        path = os.path.join(OUT, form)
        tensors[form] = write_checkpoint(path, form, master, state, tok)
        models[form] = load(path)
        m = models[form]
        if form == "packed_untied":
            assert m.lm_head.weight is not m.model.embed_tokens.weight
            assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
        else:
            assert m.lm_head.weight is m.model.embed_tokens.weight
        with torch.no_grad():
            logits = m(input_ids=val_ids, use_cache=False).logits
        agree[form] = compare(logits, ref_logits)
        agree[form]["val_loss"] = val_loss(m, torch.from_numpy(val_rows))
        print(f"{form}: vs the trained model {json.dumps(agree[form])}", flush=True)
        assert agree[form]["rel_l2"] < 5e-2 and agree[form]["top1"] > 0.97, agree[form]
    n_linear = check_ternary(state, tensors["packed"])
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear

    assert sum(isinstance(x, BitLinear) for x in models["packed"].modules()) == n_linear
    assert sum(isinstance(x, AutoBitLinear) and x.online_quant for x in models["bf16"].modules()) == n_linear
    with torch.no_grad():
        a = models["packed"](input_ids=val_ids, use_cache=False).logits
        b = models["packed_untied"](input_ids=val_ids, use_cache=False).logits
        c = models["bf16"](input_ids=val_ids, use_cache=False).logits
    assert torch.equal(a, b), "untied head changed the logits"
    packed_vs_bf16 = compare(a, c)

    tok_hf = AutoTokenizer.from_pretrained(os.path.join(OUT, "packed"))
    assert tok_hf.bos_token_id == BOS_ID and tok_hf.eos_token_id == EOS_ID

    # Prompts: per bucket, the candidate with the largest min margin over the three forms.
    held_out = documents(grammar, 200, SEED + 4)
    candidates = prompt_candidates(tok_hf, held_out)
    prompts, all_margins = [], []
    for bucket in candidates:
        scored = []
        for text in bucket:
            runs = {form: greedy(models[form], tok_hf, text) for form in FORMS}
            full = all(
                len(r["new_tokens"]) == MAX_NEW_TOKENS and EOS_ID not in r["new_tokens"] for r in runs.values()
            )
            worst = min(min(r["margins"]) for r in runs.values())
            all_margins.append(worst)
            scored.append((full, worst, text))
        best = max(scored, key=lambda s: (s[0], s[1]))
        assert best[0], f"every candidate of the bucket stops early: {bucket}"
        prompts.append(best[2])
    print(f"prompts chosen: {prompts}  [{time.perf_counter() - wall:.0f} s]", flush=True)
    cand_summary = {
        "candidates": len(all_margins),
        "median_min_margin": float(np.median(all_margins)),
        "over_threshold": int(sum(m > MIN_MARGIN for m in all_margins)),
    }

    expected_dir = os.path.join(OUT, "expected")
    os.makedirs(expected_dir, exist_ok=True)
    results = {}
    for form in FORMS:
        entries = []
        for text in prompts:
            r = greedy(models[form], tok_hf, text)
            enc = tok_hf(text)["input_ids"]
            assert enc == r["input_ids"] and enc[0] == BOS_ID and EOS_ID not in enc
            assert tok_hf(text, add_special_tokens=False)["input_ids"] == enc[1:]
            m = r["margins"]
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
            assert r["full_same_tokens"], (form, text)
            assert min(m) > MIN_MARGIN, (form, text, min(m))
        results[form] = entries
        doc = {
            "generated_by": GENERATED_BY,
            "checkpoint": f"samples/checkpoints/{form}",
            "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__},
            "model": "BitNetForCausalLM.from_pretrained(checkpoint, dtype=torch.float32), eval(); "
                     "the @torch.compile'd BitNet helpers run eagerly (torch._dynamo.config.disable); "
                     f"attention {models[form].config._attn_implementation}",
            "tokenizer": {
                "call": "AutoTokenizer.from_pretrained(checkpoint)(text)['input_ids'] "
                        "(add_special_tokens=True: BOS prepended, no EOS)",
                "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            },
            "generate": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS,
                         "note": "new_tokens excludes the prompt; no prompt reached EOS"},
            "first_step_logits": "float32 logits [vocab] of the first generation step (the last prompt "
                                 "position), as float32 values",
            "step_margins": "top-1 minus top-2 logit at each generation step (float32 logits, rounded to 1e-6)",
            "prompts": entries,
        }
        dump_json(os.path.join(expected_dir, f"{form}.json"), doc, indent=1)

    # More tokenizer cases (digits, spaces, newlines, non-ASCII, special-token text).
    cases_text = [
        "Hello, World! 12345 and 3.14159 cost $20.",
        "  two  spaces,\ttab and\n\nnew paragraph\n",
        "Caf\u00e9 na\u00efve \u2014 \u201cquotes\u201d and an emoji \U0001F600.",
        "don't, we'll, I'm, they're, it's",
        f"text with {EOS_TOKEN} inside",
        held_out[-1][:200],
    ]
    cases = []
    for text in cases_text:
        ids = tok_hf(text)["input_ids"]
        cases.append({"text": text, "input_ids": ids, "decoded": tok_hf.decode(ids, skip_special_tokens=True)})
    dump_json(os.path.join(expected_dir, "tokenizer_cases.json"), {
        "generated_by": GENERATED_BY,
        "tokenizer": "samples/checkpoints/packed (the same files in every folder)",
        "call": "AutoTokenizer.from_pretrained(dir)(text)['input_ids']; "
                "decoded = decode(ids, skip_special_tokens=True)",
        "cases": cases,
    }, indent=1)

    write_manifest(
        tok=tok, tok_texts=tok_texts, rows=rows, val_rows=val_rows, n_train_docs=n_train_docs, log=log,
        final_val=final_val, agree=agree, packed_vs_bf16=packed_vs_bf16, tensors=tensors,
        results=results, cand_summary=cand_summary, n_linear=n_linear, flips=flips,
        versions={"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                  "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                  "accelerate": __import__("accelerate").__version__, "numpy": np.__version__},
    )
    print(f"done in {time.perf_counter() - wall:.0f} s", flush=True)
    return 0


def tensor_table(tensors: dict[str, torch.Tensor]) -> list[str]:
    """One line per distinct (name pattern, dtype, shape), layers folded into `layers.N`."""
    seen = {}
    for k, v in sorted(tensors.items()):
        parts = k.split(".")
        if len(parts) > 2 and parts[1] == "layers":
            parts[2] = "N"
        key = ".".join(parts)
        seen.setdefault(key, (str(v.dtype).replace("torch.", ""), list(v.shape)))
    return [f"  - `{k}`: {d} {s}" for k, (d, s) in seen.items()]


def write_manifest(**a) -> None:
    tensors, results, agree = a["tensors"], a["results"], a["agree"]
    sizes = {}
    for form in FORMS:
        d = os.path.join(OUT, form)
        sizes[form] = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    v = a["versions"]
    c = CONFIG
    lines = [
        "# Hugging Face BitNet checkpoints (trained, tiny)",
        "",
        f"Generated by {GENERATED_BY}; do not edit. Fixtures for `bitnet-onnx build CHECKPOINT_DIR -o OUT_DIR`:",
        "three checkpoint folders in the forms microsoft/bitnet-b1.58-2B-4T is published in, one tokenizer,",
        "and transformers' greedy generations for a few prompts (`expected/`).",
        "",
        "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ". onnxruntime-genai is not used to make",
        "these files; `tests/python/genai_tokenizer_check.py DIR` checks that its tokenizer reads the same ids.",
        "",
        "## Model",
        "",
        f"`BitNetForCausalLM` with microsoft/bitnet-b1.58-2B-4T's config except its sizes: hidden {c['hidden_size']}, "
        f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads "
        f"(head dim {c['hidden_size'] // c['num_attention_heads']}), FFN {c['intermediate_size']} (relu2), vocab "
        f"{c['vocab_size']}, max positions {c['max_position_embeddings']}, rope_theta {c['rope_theta']:g}, "
        f"rms_norm_eps {c['rms_norm_eps']:g}, tied embeddings, no biases; BOS {BOS_ID}, EOS {EOS_ID}. "
        f"{sum(x.numel() for x in a['tensors']['bf16'].values()):,} parameters, {a['n_linear']} BitNet linear layers.",
        "",
        f"Trained with transformers' own BitNet quantization: `from_pretrained` of a float checkpoint with "
        "quantization_config autobitlinear / online, so every linear layer is `AutoBitLinear` (weights "
        "ternarised per tensor with absmean by `WeightQuant`, activations per token to 8 bits by `ActQuant`, "
        "both straight-through); the `@torch.compile`d helpers run eagerly. "
        f"{STEPS} steps of {BATCH} x {SEQ} tokens ({a['rows'].size:,} tokens from {a['n_train_docs']:,} documents, one "
        f"pass; every row starts at a document's BOS), AdamW (lr {LR}, betas 0.9/0.95, weight decay "
        f"{WEIGHT_DECAY} on matrices), {WARMUP} warm-up steps then cosine to 10%, gradient clip 1.0; seeded, "
        f"deterministic algorithms, {THREADS} threads.",
        "",
        *[f"- {line}" for line in a["log"]],
        f"- final: validation loss {a['final_val']:.4f} nats/token ({VAL_SEQS} held-out rows of {SEQ}, "
        "trained float32 model).",
        "",
        "## Corpus and tokenizer",
        "",
        f"A seeded synthetic English-like language (`Grammar` in {GENERATED_BY}, numpy only): {len(lexicon())} word "
        "forms; sentences subject (a name, or determiner [adjective] noun, singular or plural) + verb agreeing "
        "with it + object (a thing or a person) + optional prepositional phrase, adverb and `, CONJ PRONOUN "
        "VERB ...` clause whose pronoun agrees with the subject; `.` or `!`; a/an by the next word; "
        "sentences joined by a space or (10%) a line break, 6-16 per document. Every choice comes from a "
        f"ranked list of 3-6 options, each {RATIO:g} times as likely as the one before, keyed on what it depends on (the "
        "subject on the noun the previous sentence ended on (uniform for a document's first sentence), the "
        "verb on the subject, the object, "
        "preposition and adverb on the verb, the place on the preposition, the adjective on the noun).",
        "",
        f"Tokenizer: byte-level BPE trained with `tokenizers` on {len(a['tok_texts']):,} documents: {BPE_VOCAB} tokens "
        f"(256 bytes + {BPE_VOCAB - 256} merges) then the special tokens `{BOS_TOKEN}` ({BOS_ID}, BOS) and "
        f"`{EOS_TOKEN}` ({EOS_ID}, EOS), as in Llama 3. Llama 3's tokenizer.json layout: pre-tokenizer Split "
        "(Llama 3's regex) + ByteLevel, BPE with `ignore_merges`, decoder ByteLevel, post-processor "
        "ByteLevel + TemplateProcessing `BOS $A`. tokenizer_config.json: tokenizer_class "
        "`PreTrainedTokenizerFast` (transformers 5 loads `TokenizersBackend`; onnxruntime-genai 0.18.0 "
        "loads it too), bos/eos tokens, no `add_bos_token` (both libraries read BOS from the "
        "post-processor), `clean_up_tokenization_spaces` false. transformers' `tokenizer(text)` prepends "
        "BOS and appends nothing; onnxruntime-genai's `Tokenizer.encode` adds no special tokens unless "
        "`tokenizer.update_options(add_special_tokens=\"true\")` (its default is false), with it the ids are "
        "transformers'. Documents are `BOS text EOS` in training.",
        "",
        "## Folders",
        "",
    ]
    descr = {
        "packed": "the form of microsoft/bitnet-b1.58-2B-4T: every BitNet linear's weight packed uint8 "
                  "[out/4, in] by transformers' `pack_weights` (four rows per byte: row i + k*out/4 in bits "
                  "2k..2k+1, code+1), ternarised from the trained float32 masters exactly as `WeightQuant` "
                  "does (checked bit for bit against `WeightQuant.forward`), `weight_scale` [1] bfloat16 = "
                  "1 / mean|W| (WeightQuant's scale; `BitLinear.forward` computes `y / (input_scale * "
                  "weight_scale)`); embeddings and norms bfloat16; tied head (no lm_head.weight).",
        "bf16": "the form of microsoft/bitnet-b1.58-2B-4T-bf16: the trained master weights rounded to "
                "bfloat16, ternarised on the fly by `AutoBitLinear` (online); the rounding moves "
                f"{a['flips'][0]} of the {a['flips'][1]:,} ternary codes across a rounding boundary, so this "
                "form's codes differ from packed's there.",
        "packed_untied": "packed, with tie_word_embeddings false and `lm_head.weight` (bfloat16, a copy of "
                         "the embedding): same logits as packed, bit for bit.",
    }
    for form in FORMS:
        f = sizes[form]
        lines += [
            f"### `{form}/` ({sum(f.values()):,} B)",
            "",
            f"{descr[form]} quantization_config `{json.dumps(FORMS[form])}`.",
            "",
            "- Files: " + ", ".join(f"`{k}` {n:,} B" for k, n in f.items()) + ".",
            f"- model.safetensors sha256 {sha(os.path.join(OUT, form, 'model.safetensors'))}; tensors "
            "(`N` = 0, 1):",
            *tensor_table(tensors[form]),
            f"- `from_pretrained(dtype=float32)` vs the trained model (float32 masters, online), logits of 8 "
            f"held-out rows: rel. L2 {agree[form]['rel_l2']:.2e} (median over positions "
            f"{agree[form]['position_rel_l2_median']:.1e}), max abs {agree[form]['max_abs']:.2e}, top-1 "
            f"{agree[form]['top1']:.4f}; validation loss {agree[form]['val_loss']:.4f} ({VAL_SEQS} rows; the "
            f"trained model: {a['final_val']:.4f}).",
            "",
        ]
    p = a["packed_vs_bf16"]
    lines += [
        f"packed vs bf16 ({a['flips'][0]} codes differ; packed's weight_scale is rounded to bfloat16; "
        "`BitLinear`'s integer-code arithmetic vs `AutoBitLinear`'s dequantized one): rel. L2 "
        f"{p['rel_l2']:.2e}, max abs {p['max_abs']:.2e}, top-1 {p['top1']:.4f}. The differences from the "
        "trained model are bfloat16 rounding (embeddings, norms, weight_scale; for bf16 the codes above) "
        "amplified by the 8-bit activation quantization: a relative change of 2^-9 in an input moves "
        "many activations across a rounding boundary of their int8 code.",
        "",
        "## References (`expected/`)",
        "",
        "`expected/<form>.json`: per prompt its text, `input_ids` (transformers' tokenizer, BOS prepended), "
        f"`new_tokens` (`generate(do_sample=False, max_new_tokens={MAX_NEW_TOKENS})`, the folder loaded with "
        "`from_pretrained(dir, dtype=torch.float32)`, helpers eager), `continuation` (decoded), "
        "`first_step_logits` (float32 [vocab], last prompt position), `step_margins` (top-1 minus top-2 "
        "logit per step) and their minimum. Each continuation was also recomputed by one forward pass over "
        "prompt + continuation without the KV cache: same argmax at every step. "
        f"Prompts: per length bucket {BUCKETS} (tokens, BOS included), the opening of held-out documents with "
        f"the largest min margin over the three forms of {CANDIDATES} candidates "
        f"(all {a['cand_summary']['candidates']} candidates: median min margin "
        f"{a['cand_summary']['median_min_margin']:.3f}, {a['cand_summary']['over_threshold']} over {MIN_MARGIN}).",
        "",
        "| prompt | tokens | " + " | ".join(f"{form} min margin (step)" for form in FORMS) + " | same continuation in all forms |",
        "|---|---|" + "---|" * len(FORMS) + "---|",
    ]
    for i, e in enumerate(results["packed"]):
        same = all(results[f][i]["new_tokens"] == e["new_tokens"] for f in FORMS)
        text = e["text"].replace("\n", "\\n")
        lines.append(
            f"| `{text}` | {len(e['input_ids'])} | "
            + " | ".join(f"{results[f][i]['min_margin']:.3f} ({results[f][i]['min_margin_step']})" for f in FORMS)
            + f" | {'yes' if same else 'no'} |"
        )
    lines += [
        "",
        "`expected/tokenizer_cases.json`: more strings (digits, runs of spaces, tab, line breaks, non-ASCII, "
        "contractions, the EOS token's text) with transformers' ids and decoding.",
        "",
    ]
    with open(os.path.join(OUT, "MANIFEST.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
