"""Greedy tokens against transformers' (samples/checkpoints/expected/<form>.json).

A generation must equal transformers' new tokens up to the first step whose top-two logit
margin (`step_margins`) is 0.1 or less: there float rounding may legitimately pick the other
token, and every later token may then differ. Every prompt's agreement is reported.
"""
from __future__ import annotations

MARGIN = 0.1


def judge(prompt: dict, prompt_ids: list[int], new_ids: list[int]) -> dict:
    want = list(prompt["new_tokens"])
    margins = list(prompt["step_margins"])
    # Steps that must agree: those before the first close call.
    must = next((i for i, m in enumerate(margins) if m <= MARGIN), len(want))
    same = 0
    while same < min(len(new_ids), len(want)) and new_ids[same] == want[same]:
        same += 1
    ok = prompt_ids == list(prompt["input_ids"]) and same >= must
    return {
        "text": prompt["text"],
        "prompt_ids_match": prompt_ids == list(prompt["input_ids"]),
        "agree": same,
        "of": len(want),
        "must_agree": must,
        "ok": ok,
        "new_tokens": new_ids,
    }
