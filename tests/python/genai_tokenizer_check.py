"""Checks that onnxruntime-genai's tokenizer (onnxruntime-extensions inside it) reads a Hugging Face
tokenizer the way transformers does: for every text in the reference files, og's ids (with
add_special_tokens on) must be transformers' ids, and og's decoding of them the text. Prints JSON.

usage: genai_tokenizer_check.py DIR [REFERENCE.json ...]

  DIR        a folder with tokenizer.json and tokenizer_config.json: a Hugging Face checkpoint
             (og needs a genai_config.json to open a tokenizer; when DIR has none, the tokenizer
             files are copied to a temporary folder next to a minimal one built from DIR's
             config.json) or an onnxruntime-genai model folder (its own genai_config.json).
  REFERENCE  JSON files with a list of {"text", "input_ids"} entries under "prompts" or "cases"
             (what samples/generate_checkpoints.py writes; "decoded", where present, is
             transformers' decode(ids, skip_special_tokens=True); "new_tokens", where present, must
             decode to "continuation"). Default: every *.json in
             samples/checkpoints/expected/.

Output: {"ok", "checked", "mismatches": [...], "bos_token_id", "eos_token_ids",
"default_adds_special_tokens"}. `default_adds_special_tokens` is false when og's encode without
update_options(add_special_tokens="true") (og's default is false) gives the ids without BOS;
that is checked too. Exit status 1 on any mismatch. Needs only onnxruntime-genai.
"""

import glob
import json
import os
import shutil
import sys
import tempfile

import onnxruntime_genai as og

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def open_tokenizer(folder: str, scratch: str) -> og.Tokenizer:
    if os.path.exists(os.path.join(folder, "genai_config.json")):
        return og.Tokenizer(folder)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(folder, name)):
            shutil.copy(os.path.join(folder, name), scratch)
    eos = config["eos_token_id"]
    genai = {
        "model": {
            "type": "llama",
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": eos,
            "pad_token_id": eos[0] if isinstance(eos, list) else eos,
            "vocab_size": config["vocab_size"],
            "context_length": config["max_position_embeddings"],
        }
    }
    with open(os.path.join(scratch, "genai_config.json"), "w") as f:
        json.dump(genai, f)
    return og.Tokenizer(scratch)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    folder = argv[0]
    refs = argv[1:] or sorted(glob.glob(os.path.join(ROOT, "samples", "checkpoints", "expected", "*.json")))
    with tempfile.TemporaryDirectory() as scratch:
        tok = open_tokenizer(folder, scratch)
        plain = open_tokenizer(folder, scratch)
        tok.update_options(add_special_tokens="true")
        bos = tok.bos_token_id
        mismatches, checked, default_adds = [], 0, None
        for ref in refs:
            with open(ref) as f:
                doc = json.load(f)
            for entry in doc.get("prompts", []) + doc.get("cases", []):
                text, want = entry["text"], entry["input_ids"]
                got = [int(x) for x in tok.encode(text)]
                got_plain = [int(x) for x in plain.encode(text)]
                decoded = tok.decode(want)
                want_text = entry.get("decoded", text)
                checked += 1
                problems = {}
                if got != want:
                    problems["ids"] = got
                if want and want[0] == bos:
                    adds = got_plain == want
                    if not adds and got_plain != want[1:]:
                        problems["ids_without_special_tokens"] = got_plain
                    default_adds = adds if default_adds is None else default_adds and adds
                if decoded != want_text:
                    problems["decoded"] = decoded
                if "new_tokens" in entry and tok.decode(entry["new_tokens"]) != entry["continuation"]:
                    problems["continuation"] = tok.decode(entry["new_tokens"])
                if problems:
                    mismatches.append(dict(file=os.path.basename(ref), text=text, want=want, **problems))
    out = {
        "ok": not mismatches and checked > 0,
        "checked": checked,
        "mismatches": mismatches,
        "bos_token_id": bos,
        "eos_token_ids": [int(x) for x in tok.eos_token_ids],
        "default_adds_special_tokens": default_adds,
    }
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
