"""Locating the `bitnet-onnx` binary that the wheel bundles."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

# The name the wheel installs the Rust binary under (crates/bitnet-onnx-py). The command
# `bitnet-onnx` itself is the Python entry point in `_cli`, which execs this binary.
BIN_NAME = "bitnet-onnx-bin" + (".exe" if sys.platform == "win32" else "")


def _user_scripts() -> str | None:
    scheme = {"nt": "nt_user", "posix": "posix_user"}.get(os.name)
    if sys.platform == "darwin" and getattr(sys, "_framework", None):
        scheme = "osx_framework_user"
    if scheme is None:
        return None
    try:
        return sysconfig.get_path("scripts", scheme=scheme)
    except KeyError:
        return None


def find_binary() -> str:
    """The path of the bundled `bitnet-onnx` binary.

    Looked for where pip puts a wheel's scripts: the environment's scripts directory, the user
    scheme's (``pip install --user``), and ``bin/`` beside the package
    (``pip install --target``). Raises FileNotFoundError when none holds it.
    """
    candidates = [sysconfig.get_path("scripts"), _user_scripts()]
    candidates.append(str(Path(__file__).resolve().parent.parent / "bin"))
    for d in candidates:
        if d is None:
            continue
        p = os.path.join(d, BIN_NAME)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise FileNotFoundError(
        f"the bitnet-onnx binary ({BIN_NAME}) was not found in "
        + ", ".join(d for d in candidates if d)
        + ": reinstall the bitnet-onnx wheel"
    )
