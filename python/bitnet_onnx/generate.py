"""Generate text with a model folder written by `bitnet-onnx build`, in onnxruntime-genai.

    pip install 'bitnet-onnx[genai]'
    python -m bitnet_onnx.generate OUT_DIR "The capital of France is" --max-new-tokens 64

Greedy decoding by default (the folder's genai_config.json); `--sample` samples with
`--temperature`/`--top-p`. Prints the continuation as it is generated, then the prompt and
decode speed on standard error. `--threads N` sets ONNX Runtime's intra-op threads for this run
(the folder's config is not changed). `--chat` wraps the prompt in the tokenizer's chat
template (BitNet-2B-4T is an instruction-tuned model). Exit status 2 when the folder cannot be
loaded or onnxruntime-genai is missing.

From Python::

    from bitnet_onnx.generate import generate
    out = generate("bitnet-2b-genai", "The capital of France is", max_new_tokens=32)
    print(out["text"], out["decode_tokens_per_s"])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Union

    PathLike = Union[str, os.PathLike[str]]

GENAI_MISSING = (
    "onnxruntime-genai is not installed: pip install 'bitnet-onnx[genai]' "
    "(or pip install onnxruntime-genai==0.18.0)"
)


def generate(
    model: PathLike,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    threads: int = 0,
    sample: bool = False,
    temperature: float = 0.8,
    top_p: float = 0.95,
    chat: bool = False,
    on_text: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Generate a continuation of `prompt` with the onnxruntime-genai folder `model`.

    `model` is a folder written by `bitnet-onnx build`. Decoding is greedy unless `sample`
    (then `temperature` and `top_p` apply); at most `max_new_tokens` tokens are generated (fewer
    when the model emits its end-of-sequence token). `threads` > 0 sets ONNX Runtime's intra-op
    threads for this call. `chat` applies the tokenizer's chat template to the prompt (the
    template writes BOS itself); otherwise BOS is added as transformers' tokenizer adds it.
    `on_text` is called with each piece of decoded text as soon as its token is generated.

    Returns a dict: ``text`` (the continuation), ``prompt_ids`` and ``ids`` (the new token ids),
    ``prompt_s`` and ``decode_s`` (seconds), ``prompt_tokens_per_s`` and
    ``decode_tokens_per_s``. Raises ImportError when onnxruntime-genai is not installed, and
    onnxruntime-genai's own error when the folder cannot be loaded.
    """
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        raise ImportError(GENAI_MISSING) from e
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")

    config = og.Config(os.fspath(model))
    if threads > 0:
        overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
        config.overlay(json.dumps(overlay))
    m = og.Model(config)
    tokenizer = og.Tokenizer(m)
    text_in = prompt
    if chat:
        # The template writes the special tokens (BOS included) itself.
        messages = json.dumps([{"role": "user", "content": prompt}])
        text_in = tokenizer.apply_chat_template(messages=messages, add_generation_prompt=True)
    else:
        # As transformers' tokenizer call does: BOS first (onnxruntime-genai's encode leaves
        # special tokens out unless asked).
        tokenizer.update_options(add_special_tokens="true")
    prompt_ids = [int(i) for i in tokenizer.encode(text_in)]
    params = og.GeneratorParams(m)
    options: dict[str, Any] = {"max_length": len(prompt_ids) + max_new_tokens, "do_sample": sample}
    if sample:
        options.update(temperature=temperature, top_p=top_p)
    params.set_search_options(**options)
    generator = og.Generator(m, params)
    stream = tokenizer.create_stream()

    start = time.perf_counter()
    generator.append_tokens(prompt_ids)
    prompt_done = time.perf_counter()
    ids: list[int] = []
    pieces: list[str] = []
    while not generator.is_done() and len(ids) < max_new_tokens:
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        ids.append(token)
        piece = stream.decode(token)
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    end = time.perf_counter()
    prompt_s, decode_s = prompt_done - start, end - prompt_done
    return {
        "text": "".join(pieces),
        "prompt_ids": prompt_ids,
        "ids": ids,
        "prompt_s": prompt_s,
        "decode_s": decode_s,
        "prompt_tokens_per_s": len(prompt_ids) / max(prompt_s, 1e-9),
        "decode_tokens_per_s": len(ids) / max(decode_s, 1e-9),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m bitnet_onnx.generate MODEL_DIR PROMPT [options]`."""
    ap = argparse.ArgumentParser(
        prog="python -m bitnet_onnx.generate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("model", help="a folder written by `bitnet-onnx build`")
    ap.add_argument("prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    ap.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming the text")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    if not os.path.isfile(os.path.join(args.model, "genai_config.json")):
        print(
            f"error: {args.model}: not a model folder written by `bitnet-onnx build` (no genai_config.json)",
            file=sys.stderr,
        )
        return 2

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        out = generate(
            args.model,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            threads=args.threads,
            sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
            chat=args.chat,
            on_text=None if args.json else stream,
        )
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as e:  # onnxruntime-genai's errors have no common base class
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        sys.stdout.write("\n")
    n, m = len(out["prompt_ids"]), len(out["ids"])
    print(
        f"prompt: {n} tokens in {out['prompt_s']:.3f} s ({out['prompt_tokens_per_s']:.1f} tokens/s); "
        f"decode: {m} tokens in {out['decode_s']:.3f} s ({out['decode_tokens_per_s']:.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
