"""bitnet-onnx from Python: the `bitnet-onnx` command line, as functions.

Each function runs the bundled `bitnet-onnx` binary (the same one the `bitnet-onnx` command
runs) and returns its JSON report as a dict::

    import bitnet_onnx
    report = bitnet_onnx.convert("model.onnx", "model.ternary.onnx", target="ort")
    print(report["totals"])
    result = bitnet_onnx.verify("model.onnx", "model.ternary.onnx")
    assert result["passed"]

Keyword options are the command's flags with underscores (``block_size=64`` is
``--block-size 64``); ``None`` leaves the command's default. Models are paths, or for
`inspect`, `convert` and `verify` an ``onnx.ModelProto`` (written to a temporary file first;
the ``onnx`` package is needed only for that). Bad input raises `BadInputError`, a subclass of
`Error`, with the message the command prints (which names the file, tensor or key).

Why a wrapper over the binary rather than bindings: the binary memory-maps models and streams
the converted weights to disk, so models over 2 GB and external data work as on the command
line, nothing is copied into the Python process, progress and warnings reach standard error as
they happen, and Ctrl-C stops the work (the child is killed, no half-written output is left).
"""

from __future__ import annotations

# Only cheap modules at import time: the `bitnet-onnx` command imports this package before it
# execs the binary, and every import here adds to each command's start.
import os
import sys
from collections.abc import Mapping

from . import _hub
from ._binary import find_binary

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` alone takes tens of milliseconds to import
    from collections.abc import Sequence
    from typing import IO, Any, Union

    import onnx

    PathLike = Union[str, os.PathLike[str]]
    ModelArg = Union[str, os.PathLike[str], onnx.ModelProto]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("bitnet-onnx")
        except PackageNotFoundError:  # imported from a source tree
            return "0.0.0"
    raise AttributeError(f"module 'bitnet_onnx' has no attribute {name!r}")

__all__ = [
    "BadInputError",
    "Error",
    "HubError",
    "VerificationFailed",
    "build",
    "check",
    "convert",
    "find_binary",
    "inspect",
    "verify",
]


class Error(Exception):
    """A `bitnet-onnx` command that failed.

    Attributes: `message` (what the command printed on standard error, without the
    ``error:`` prefix), `returncode`, `stderr` (everything it printed there) and `command`
    (its arguments).
    """

    def __init__(self, message: str, returncode: int, stderr: str, command: Sequence[str]):
        super().__init__(message)
        self.message = message
        self.returncode = returncode
        self.stderr = stderr
        self.command = list(command)


class BadInputError(Error):
    """Bad input: an unreadable or malformed model or checkpoint, a bad flag (exit code 2)."""


class VerificationFailed(Error):
    """`convert(..., verify=True)` wrote the model but it did not pass verification (exit 1)."""


class HubError(BadInputError):
    """A checkpoint argument that is neither a local directory nor a resolvable Hub id."""


def _flag_args(options: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        # A trailing underscore lets a flag that is a Python keyword be passed: for_="web".
        flag = "--" + key.rstrip("_").replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(v, (tuple, list)) and len(v) == 2:
                    v = f"{v[0]}..{v[1]}"
                out += [flag, f"{k}={v}"]
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return out


def _message(stderr: str) -> str:
    """The command's error message: from its last line starting ``error:`` to the end."""
    lines = stderr.rstrip("\n").split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return "\n".join([lines[i][len("error:") :].strip(), *lines[i + 1 :]]).strip()
    return stderr.strip() or "bitnet-onnx failed"


def _pump(src: IO[bytes], sink: list[bytes], echo: IO[str] | None) -> None:
    for line in iter(src.readline, b""):
        sink.append(line)
        if echo is not None:
            echo.write(line.decode("utf-8", "replace"))
            echo.flush()


def _run(args: list[str], quiet_stderr: bool = False) -> tuple[int, str, str]:
    """Runs the binary; standard error is echoed to ours as it comes (progress, warnings)."""
    import signal
    import subprocess
    import threading

    cmd = [find_binary(), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    err: list[bytes] = []
    t = threading.Thread(
        target=_pump, args=(proc.stderr, err, None if quiet_stderr else sys.stderr), daemon=True
    )
    t.start()
    try:
        out = proc.stdout.read()
        code = proc.wait()
    except KeyboardInterrupt:
        # The binary writes outputs atomically: stopping it leaves no half-written file.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    t.join()
    return code, out.decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace")


def _report(text: str) -> dict[str, Any]:
    import json

    report: dict[str, Any] = json.loads(text)
    return report


def _fail(code: int, stderr: str, args: list[str]) -> Error:
    cls = VerificationFailed if code == 1 else BadInputError if code == 2 else Error
    return cls(_message(stderr), code, stderr, args)


class _ModelFile:
    """A model argument as a path: itself, or an `onnx.ModelProto` saved to a temporary file."""

    def __init__(self, model: ModelArg):
        self.model = model
        self.tmp: Any = None

    def __enter__(self) -> str:
        if isinstance(self.model, (str, os.PathLike)):
            return os.fspath(self.model)
        if not hasattr(self.model, "SerializeToString") or not hasattr(self.model, "graph"):
            raise TypeError(
                f"expected a path or an onnx.ModelProto, not {type(self.model).__name__}"
            )
        import tempfile

        import onnx

        for t in self.model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                raise BadInputError(
                    f"initializer {t.name!r} of the ModelProto refers to external data, which "
                    "a temporary copy cannot resolve: pass the model's path instead",
                    2,
                    "",
                    [],
                )
        self.tmp = tempfile.TemporaryDirectory(prefix="bitnet-onnx-")
        path = os.path.join(self.tmp.name, "model.onnx")
        try:
            big = self.model.ByteSize() >= 2**31 - 2**24
        except (ValueError, OverflowError):
            big = True
        # Over protobuf's 2 GB limit a model can only be saved with its tensors outside.
        onnx.save_model(self.model, path, save_as_external_data=big)
        return path

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def inspect(model: ModelArg) -> dict[str, Any]:
    """What is inside a model and which linear layers can become ternary.

    Runs ``bitnet-onnx inspect MODEL --json`` and returns its report.
    Raises BadInputError (with the command's message) for an unreadable or malformed model.
    """
    with _ModelFile(model) as path:
        args = ["inspect", path, "--json"]
        code, out, err = _run(args, quiet_stderr=True)
    if code != 0:
        raise _fail(code, err, args)
    return _report(out)


def convert(
    model: ModelArg,
    output: PathLike,
    *,
    target: str | None = None,
    activations: str | None = None,
    block_size: int | None = None,
    accuracy_level: int | None = None,
    scale: str | None = None,
    lossless_group: int | str | None = None,
    method: str | None = None,
    threshold: float | None = None,
    preset: str | None = None,
    tensorrt_block_size: int | None = None,
    include: str | None = None,
    exclude: str | None = None,
    min_params: int | None = None,
    head: str | None = None,
    embeddings: str | None = None,
    table_block_size: int | None = None,
    logits: str | None = None,
    quantize_head: bool = False,
    external_data: bool = False,
    single_file: bool = False,
    threads: int | None = None,
    verify: bool = False,
    quiet: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Convert a model's MatMul/Gemm weights to ternary codes plus scales; write `output`.

    Runs ``bitnet-onnx convert MODEL -o OUTPUT --report FILE`` with the given flags
    (``target="ort"`` is ``--target ort``; see ``bitnet-onnx convert --help`` for each flag's
    values and defaults, and `options` for flags added later) and returns the report: per-layer
    entries and ``totals`` (layers converted, bytes before and after, compression, ...).
    Work longer than a second reports its progress on standard error; `quiet=True` silences it.

    Raises BadInputError for a bad model or flag (nothing is written), and VerificationFailed
    when `verify=True` and the converted model failed the check.
    """
    flags = dict(
        target=target, activations=activations, block_size=block_size,
        accuracy_level=accuracy_level, scale=scale, lossless_group=lossless_group,
        method=method, threshold=threshold,
        preset=preset, tensorrt_block_size=tensorrt_block_size, include=include,
        exclude=exclude, min_params=min_params, head=head, embeddings=embeddings,
        table_block_size=table_block_size, logits=logits, quantize_head=quantize_head,
        external_data=external_data, single_file=single_file, threads=threads, verify=verify,
        quiet=quiet, **options,
    )  # fmt: skip
    import tempfile

    with _ModelFile(model) as path, tempfile.TemporaryDirectory(prefix="bitnet-onnx-") as tmp:
        report = os.path.join(tmp, "report.json")
        args = ["convert", path, "-o", os.fspath(output), "--report", report, *_flag_args(flags)]
        code, out, err = _run(args, quiet_stderr=quiet)
        if code == 1:
            # The model was written; the verification table went to standard output.
            raise VerificationFailed(
                f"{os.fspath(output)} did not pass verification:\n{out.strip()}", 1, err, args
            )
        if code != 0:
            raise _fail(code, err, args)
        with open(report, encoding="utf-8") as f:
            return _report(f.read())


def verify(
    original: ModelArg,
    converted: ModelArg,
    *,
    inputs: PathLike | None = None,
    dim: Mapping[str, int] | None = None,
    input_range: Mapping[str, tuple[int, int]] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    max_rel_error: float | None = None,
    min_cosine: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the original and the converted model in tract and compare their outputs.

    Runs ``bitnet-onnx verify ORIGINAL CONVERTED --json -`` and returns its report with one
    more key, ``passed`` (the report's ``pass``): a failed comparison is a result, not an
    exception. ``dim={"batch": 2}`` is ``--dim batch=2``; ``input_range={"ids": (0, 100)}`` is
    ``--input-range ids=0..100``.

    Raises BadInputError when the models could not be run (the command's exit code 2).
    """
    flags = dict(
        inputs=inputs, dim=dim, input_range=input_range, samples=samples, seed=seed,
        max_rel_error=max_rel_error, min_cosine=min_cosine, **options,
    )  # fmt: skip
    with _ModelFile(original) as a, _ModelFile(converted) as b:
        args = ["verify", a, b, "--json", "-", *_flag_args(flags)]
        code, out, err = _run(args, quiet_stderr=True)
    if code not in (0, 1) or not out.strip():
        raise _fail(code if code != 1 else 2, err, args)
    report = _report(out)
    report["passed"] = bool(report["pass"]) and code == 0
    return report


def check(model: PathLike, *, target: str) -> dict[str, Any]:
    """Lint a model against a runtime's quantization rules (``target="tensorrt"``, say).

    Runs ``bitnet-onnx check --target TARGET MODEL --json`` and returns
    ``{"pass": bool, "violations": [...]}``; violations are a result, not an exception.
    Raises BadInputError for a model that cannot be read.
    """
    args = ["check", "--target", target, os.fspath(model), "--json"]
    code, out, err = _run(args, quiet_stderr=True)
    if code not in (0, 1) or not out.strip():
        raise _fail(code if code != 1 else 2, err, args)
    return _report(out)


def build(
    checkpoint: PathLike,
    output: PathLike,
    *,
    target: str | None = None,
    embeddings: str | None = None,
    head: str | None = None,
    table_block_size: int | None = None,
    block_size: int | None = None,
    logits: str | None = None,
    for_: str | None = None,
    kernel: str | None = None,
    attention: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build an onnxruntime-genai model folder from a transformers checkpoint of a ternary
    model family (BitNet, Llama or Qwen3 with BitNet quantization, 1bitLLM, float-stored
    ternary Llama / Qwen3; docs/families.md).

    ``for_="web"`` is ``bitnet-onnx build --for web``: the folder Transformers.js and
    onnxruntime-web load (``onnx/model_q2.onnx``), which onnxruntime-genai loads too.
    ``kernel="bitnet"`` computes the ternary layers with this package's own ONNX Runtime
    kernel (a custom-op library installed beside the binary, copied into the folder and named
    in its ``genai_config.json``); the default ``"ort"`` keeps the folder stock ONNX Runtime.
    With ``kernel="bitnet"`` attention comes from the same library unless ``attention="ort"``.

    `checkpoint` is a local directory or, with the ``bitnet-onnx[hub]`` extra, a Hugging Face
    Hub id such as ``"microsoft/bitnet-b1.58-2B-4T"`` (resolved through the local Hub cache,
    downloading what is missing). Runs ``bitnet-onnx build CHECKPOINT -o OUTPUT --json`` and
    returns its report (the family recognised, layers, sizes, tensors, ``seconds``).

    Raises BadInputError for a bad checkpoint (nothing is written) and HubError for an id that
    cannot be resolved.
    """
    ckpt = os.fspath(checkpoint)
    if _hub.looks_like_hub_id(ckpt):
        try:
            ckpt = _hub.resolve(ckpt)
        except _hub.HubError as e:
            raise HubError(str(e), 2, f"error: {e}\n", ["build", ckpt]) from None
    flags = dict(
        target=target, embeddings=embeddings, head=head, table_block_size=table_block_size,
        block_size=block_size, logits=logits, for_=for_, kernel=kernel, attention=attention,
        **options,
    )  # fmt: skip
    args = ["build", ckpt, "-o", os.fspath(output), "--json", *_flag_args(flags)]
    code, out, err = _run(args)
    if code != 0:
        raise _fail(code, err, args)
    return _report(out)
