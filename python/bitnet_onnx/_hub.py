"""Checkpoints by Hugging Face Hub id (`bitnet-onnx build ORG/NAME -o DIR`)."""

from __future__ import annotations

import os
import re

# What `bitnet-onnx build` reads from a checkpoint: config.json and the other JSON files
# (generation config, tokenizer, sharded index), the safetensors weights and a
# SentencePiece/tiktoken tokenizer.model. Nothing else of a repository is downloaded.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]

# ORG/NAME as the Hub spells repository ids: one slash, no leading dot or dash.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubError(Exception):
    """A Hub id that could not be resolved to a local checkpoint directory."""


def looks_like_hub_id(arg: str) -> bool:
    """True when `arg` is not an existing path and reads as ORG/NAME."""
    return not os.path.exists(arg) and _HUB_ID.match(arg) is not None


def resolve(repo_id: str) -> str:
    """The local directory of checkpoint `repo_id`, from the Hub cache or downloaded into it.

    Uses `huggingface_hub.snapshot_download` (the `bitnet-onnx[hub]` extra), so the cache
    location, `HF_HOME`, `HF_HUB_OFFLINE`, tokens and the progress bars are the Hub client's
    own.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubError(
            f"{repo_id} is not a local directory, and resolving it as a Hugging Face Hub id "
            "needs huggingface_hub: pip install 'bitnet-onnx[hub]'"
        ) from None
    try:
        return snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS)
    except Exception as e:  # the client's errors have no common base across its versions
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        where = " (HF_HUB_OFFLINE is set: only the local Hub cache was searched)" if offline else ""
        raise HubError(
            f"{repo_id} is not a local directory and could not be resolved as a Hugging Face "
            f"Hub id{where}: {type(e).__name__}: {e}"
        ) from None
