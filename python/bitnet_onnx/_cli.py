"""The `bitnet-onnx` command of the wheel: resolves Hub ids, then becomes the Rust binary.

Only `build`'s checkpoint argument is touched: when it is not an existing path and reads as
ORG/NAME, it is replaced by the checkpoint's directory in the local Hugging Face Hub cache
(downloading what is missing). Then the process execs the bundled binary with the same
arguments, so its exit codes, standard output and error, and signal handling (Ctrl-C) are the
binary's own: the Python interpreter is gone by then.
"""

from __future__ import annotations

import os
import sys

from . import _hub
from ._binary import find_binary

# `bitnet-onnx build` options that take a value (crates/bitnet-cli/src/build.rs); the wheel's
# tests compare this set with `bitnet-onnx build --help`.
BUILD_VALUE_OPTIONS = frozenset(
    [
        "-o", "--output", "--target", "--embeddings", "--head", "--table-block-size", "--block-size",
        "--logits", "--for", "--kernel", "--attention",
    ]  # fmt: skip
)
_SHORT_WITH_VALUE = "o"


def checkpoint_index(args: list[str]) -> int | None:
    """Index in `args` (the arguments after `build`) of the checkpoint positional, if any."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return i + 1 if i + 1 < len(args) else None
        if a.startswith("--"):
            if "=" not in a and a in BUILD_VALUE_OPTIONS:
                i += 1
        elif a.startswith("-") and len(a) > 1:
            # A cluster of short flags such as -qo DIR: a value option takes the rest of the
            # cluster, or the next argument when it ends the cluster.
            for j, c in enumerate(a[1:]):
                if c in _SHORT_WITH_VALUE:
                    if j == len(a) - 2:
                        i += 1
                    break
        else:
            return i
        i += 1
    return None


def resolve_args(argv: list[str]) -> list[str]:
    """`argv` (without the program name) with a Hub id given to `build` made a local path."""
    if not argv or argv[0] != "build":
        return argv
    rest = argv[1:]
    if any(a in ("-h", "--help") for a in rest):
        return argv
    k = checkpoint_index(rest)
    if k is None or not _hub.looks_like_hub_id(rest[k]):
        return argv
    rest = list(rest)
    rest[k] = _hub.resolve(rest[k])
    return ["build", *rest]


def main() -> None:
    """Entry point of the `bitnet-onnx` console script."""
    try:
        args = resolve_args(sys.argv[1:])
        binary = find_binary()
    except (_hub.HubError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(binary, ["bitnet-onnx", *args])
    # No exec on Windows: run the binary and pass its exit code on.
    import subprocess

    sys.exit(subprocess.call([binary, *args]))


if __name__ == "__main__":
    main()
