"""Tests of an installed bitnet-onnx wheel: the `bitnet-onnx` command and `import bitnet_onnx`.

Run by scripts/test_wheel.sh with the Python of a fresh virtual environment holding the wheel
(with or without the `onnx` and `huggingface_hub` extras):

    python tests/python/wheel_test.py --source-bin target/release/bitnet-onnx

`--source-bin` is the CLI built from source with cargo: the wheel's command must print the
same --help and --version and write the same bytes. Prints one line per test and a closing
'N passed, N failed'; exits 1 when a test failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import bitnet_onnx

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
HAS_ONNX = importlib.util.find_spec("onnx") is not None
HAS_HUB = importlib.util.find_spec("huggingface_hub") is not None
HAS_GENAI = importlib.util.find_spec("onnxruntime_genai") is not None
WHEEL_CMD = shutil.which("bitnet-onnx")
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_digest(d: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(d.iterdir()) if p.is_file()}


@test
def command_is_the_wheels_and_versions_match(t: Path, src: str) -> None:
    assert WHEEL_CMD is not None and Path(WHEEL_CMD).parent == Path(sys.executable).parent, (
        WHEEL_CMD
    )
    w = run([WHEEL_CMD, "--version"])
    s = run([src, "--version"])
    assert w.returncode == 0 and w.stdout == s.stdout, (w, s)
    assert w.stdout.decode().startswith("bitnet-onnx "), w.stdout
    assert bitnet_onnx.__version__ in w.stdout.decode(), (bitnet_onnx.__version__, w.stdout)


@test
def help_is_the_source_builds(t: Path, src: str) -> None:
    for sub in [[], ["inspect"], ["convert"], ["verify"], ["check"], ["build"]]:
        w = run([WHEEL_CMD, *sub, "--help"])
        s = run([src, *sub, "--help"])
        assert w.returncode == s.returncode == 0, (sub, w.stderr)
        assert w.stdout == s.stdout, f"--help of {sub} differs"
        assert b"bitnet-onnx" in w.stdout


@test
def cli_writes_the_source_builds_bytes(t: Path, src: str) -> None:
    for name, rel in [("w", WHEEL_CMD), ("s", src)]:
        (t / name).mkdir()
        for target in ["ort", "qdq-int8"]:
            r = run([rel, "convert", SAMPLES / "mlp.onnx", "-o", f"{target}.onnx", "--target", target], cwd=t / name)
            assert r.returncode == 0, r.stderr
            (t / name / f"{target}.out").write_bytes(r.stdout)
    assert folder_digest(t / "w") == folder_digest(t / "s")
    w = run([WHEEL_CMD, "inspect", SAMPLES / "transformer.onnx"])
    s = run([src, "inspect", SAMPLES / "transformer.onnx"])
    assert w.returncode == 0 and (w.stdout, w.stderr) == (s.stdout, s.stderr)


@test
def cli_bad_input_exit_code_and_message(t: Path, src: str) -> None:
    bad = t / "bad.onnx"
    bad.write_bytes(b"\x00 not a model")
    w = run([WHEEL_CMD, "convert", bad, "-o", t / "o.onnx"])
    s = run([src, "convert", bad, "-o", t / "o.onnx"])
    assert w.returncode == s.returncode == 2, (w.returncode, s.returncode)
    assert w.stderr == s.stderr and b"bad.onnx" in w.stderr, w.stderr
    assert not (t / "o.onnx").exists()


@test
def api_convert_from_a_path(t: Path, src: str) -> None:
    out = t / "mlp.ort.onnx"
    r = bitnet_onnx.convert(SAMPLES / "mlp.onnx", out, target="ort")
    assert r["target"] == "ort", r["target"]
    tot = r["totals"]
    assert tot["converted"] > 0 and tot["converted"] == len([l for l in r["layers"] if l.get("converted", True)])
    assert tot["file_bytes_after"] == out.stat().st_size, (tot, out.stat().st_size)
    assert tot["file_bytes_before"] == (SAMPLES / "mlp.onnx").stat().st_size
    ref = t / "ref.onnx"
    assert run([src, "convert", SAMPLES / "mlp.onnx", "-o", ref, "--target", "ort", "-q"]).returncode == 0
    assert sha(out) == sha(ref)


@test
def api_options_become_flags(t: Path, src: str) -> None:
    out = t / "m.onnx"
    r = bitnet_onnx.convert(SAMPLES / "transformer.onnx", out, target="ort-int8", block_size=32, quiet=True)
    ref = t / "ref.onnx"
    c = run([src, "convert", SAMPLES / "transformer.onnx", "-o", ref, "--target", "ort-int8", "--block-size", "32", "-q"])
    assert c.returncode == 0, c.stderr
    assert r["target"] == "ort-int8" and sha(out) == sha(ref)
    try:
        bitnet_onnx.convert(SAMPLES / "mlp.onnx", t / "x.onnx", target="no-such-target")
    except bitnet_onnx.BadInputError as e:
        assert e.returncode == 2 and "no-such-target" in e.message, e.message
    else:
        raise AssertionError("an unknown target was accepted")


@test
def api_inspect_and_check(t: Path, src: str) -> None:
    r = bitnet_onnx.inspect(SAMPLES / "transformer.onnx")
    s = run([src, "inspect", SAMPLES / "transformer.onnx", "--json"])
    import json

    assert r == json.loads(s.stdout)
    out = t / "trt.onnx"
    bitnet_onnx.convert(SAMPLES / "mlp.onnx", out, target="tensorrt", quiet=True)
    c = bitnet_onnx.check(out, target="tensorrt")
    assert c["pass"] is True and c["violations"] == [], c
    c = bitnet_onnx.check(SAMPLES / "mlp.onnx", target="tensorrt")
    assert set(c) == {"pass", "violations"}


@test
def api_verify_returns_passed(t: Path, src: str) -> None:
    # The BitLinear export's weights are ternary already: the conversion is lossless.
    out = t / "bitlinear.onnx"
    bitnet_onnx.convert(SAMPLES / "bitlinear_ts.onnx", out, quiet=True)
    r = bitnet_onnx.verify(SAMPLES / "bitlinear_ts.onnx", out, samples=2, seed=3)
    assert r["passed"] is True and r["pass"] is True and r["samples"] == 2, r
    # The float MLP's weights are not: a result with passed False, not an exception.
    out = t / "mlp.onnx"
    bitnet_onnx.convert(SAMPLES / "mlp.onnx", out, quiet=True)
    r = bitnet_onnx.verify(SAMPLES / "mlp.onnx", out)
    assert r["passed"] is False and r["first_failing_layer"], r
    try:
        bitnet_onnx.convert(SAMPLES / "mlp.onnx", t / "v.onnx", verify=True, quiet=True)
    except bitnet_onnx.VerificationFailed as e:
        assert e.returncode == 1 and "v.onnx" in e.message, e.message
    else:
        raise AssertionError("convert(verify=True) of a lossy conversion did not raise")


@test
def api_bad_model_raises_naming_the_file(t: Path, src: str) -> None:
    bad = t / "broken_model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    for call in [
        lambda: bitnet_onnx.convert(bad, t / "o.onnx"),
        lambda: bitnet_onnx.inspect(bad),
        lambda: bitnet_onnx.verify(bad, SAMPLES / "mlp.onnx"),
        lambda: bitnet_onnx.check(bad, target="tensorrt"),
    ]:
        try:
            call()
        except bitnet_onnx.BadInputError as e:
            assert isinstance(e, bitnet_onnx.Error) and e.returncode == 2
            assert "broken_model.onnx" in e.message, e.message
        else:
            raise AssertionError("a broken model was accepted")
    assert not (t / "o.onnx").exists()


@test
def api_convert_and_verify_a_model_proto(t: Path, src: str) -> None:
    if not HAS_ONNX:
        try:
            bitnet_onnx.convert(object(), t / "o.onnx")  # type: ignore[arg-type]
        except TypeError as e:
            assert "onnx.ModelProto" in str(e)
        else:
            raise AssertionError("a non-model was accepted")
        return
    import onnx

    m = onnx.load(str(SAMPLES / "transformer.onnx"))
    out = t / "from_proto.onnx"
    r = bitnet_onnx.convert(m, out, target="ort", quiet=True)
    p = bitnet_onnx.convert(SAMPLES / "transformer.onnx", t / "from_path.onnx", target="ort", quiet=True)
    assert r["totals"]["converted"] == p["totals"]["converted"] > 0
    assert r["layers"] == p["layers"]
    b = onnx.load(str(SAMPLES / "bitlinear_ts.onnx"))
    bitnet_onnx.convert(b, t / "bitlinear.onnx", quiet=True)
    assert bitnet_onnx.verify(b, t / "bitlinear.onnx")["passed"] is True
    a, b = bitnet_onnx.inspect(m), bitnet_onnx.inspect(SAMPLES / "transformer.onnx")
    for key in ("linear_layers", "ops", "opsets", "inputs", "outputs"):
        assert a[key] == b[key], key


@test
def api_build_from_a_directory(t: Path, src: str) -> None:
    ckpt = SAMPLES / "checkpoints" / "packed"
    r = bitnet_onnx.build(ckpt, t / "api")
    assert r["layers"] >= 1 and (t / "api" / "genai_config.json").is_file(), r
    c = run([src, "build", ckpt, "-o", t / "src", "-q"])
    assert c.returncode == 0, c.stderr
    assert folder_digest(t / "api") == folder_digest(t / "src")


@test
def api_build_for_web(t: Path, src: str) -> None:
    ckpt = SAMPLES / "checkpoints" / "packed"
    r = bitnet_onnx.build(ckpt, t / "api", for_="web")
    assert (t / "api" / "onnx" / "model_q2.onnx").is_file(), r
    c = run([src, "build", ckpt, "-o", t / "src", "--for", "web", "-q"])
    assert c.returncode == 0, c.stderr
    digest = lambda d: {str(p.relative_to(d)): sha(p) for p in sorted(d.rglob("*")) if p.is_file()}  # noqa: E731
    assert digest(t / "api") == digest(t / "src")


@test
def api_build_with_the_bundled_kernel(t: Path, src: str) -> None:
    """`kernel="bitnet"` finds the custom-op library the wheel installs beside its binary; the
    folder is the source build's but for that library (another link of the same code), and
    generates the stock build's tokens in onnxruntime-genai."""
    ckpt = SAMPLES / "checkpoints" / "packed"
    r = bitnet_onnx.build(ckpt, t / "api", kernel="bitnet")
    lib = r["kernel_library"]
    assert r["kernel"] == "bitnet" and lib and (t / "api" / lib).is_file(), r
    c = run([src, "build", ckpt, "-o", t / "src", "--kernel", "bitnet", "-q"])
    assert c.returncode == 0, c.stderr
    a, b = folder_digest(t / "api"), folder_digest(t / "src")
    assert a.keys() == b.keys() and {k for k in a if a[k] != b[k]} <= {lib}, (a, b)
    if HAS_GENAI:
        from bitnet_onnx.generate import generate

        bitnet_onnx.build(ckpt, t / "stock")
        text = json.loads((SAMPLES / "checkpoints" / "expected" / "packed.json").read_text())["prompts"][0]["text"]
        k = generate(t / "api", text, max_new_tokens=40)
        s = generate(t / "stock", text, max_new_tokens=40)
        assert k["ids"] == s["ids"], (k["ids"], s["ids"])


def hub_cache(t: Path, repo: str) -> Path:
    """An HF_HOME whose hub cache holds samples/checkpoints/packed as `repo`, as the Hub
    client lays it out: blobs named by hash, a snapshot of symlinks, refs/main."""
    home = t / "hf"
    repo_dir = home / "hub" / ("models--" + repo.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo_dir / "snapshots" / rev
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(rev)
    for f in sorted((SAMPLES / "checkpoints" / "packed").iterdir()):
        h = sha(f)
        shutil.copyfile(f, repo_dir / "blobs" / h)
        (snap / f.name).symlink_to(Path("../../blobs") / h)
    return home


@test
def hub_ids_from_an_offline_cache(t: Path, src: str) -> None:
    repo = "bitnet-test/tiny-packed"
    home = hub_cache(t, repo)
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    c = run([src, "build", SAMPLES / "checkpoints" / "packed", "-o", t / "ref", "-q"])
    assert c.returncode == 0, c.stderr
    w = run([WHEEL_CMD, "build", "--head", "int8", repo, "-o", t / "cli", "-q"], env=env, cwd=t)
    missing = run([WHEEL_CMD, "build", "bitnet-test/not-cached", "-o", t / "none"], env=env, cwd=t)
    assert missing.returncode == 2 and not (t / "none").exists(), missing
    err = missing.stderr.decode()
    assert err.startswith("error: ") and "bitnet-test/not-cached" in err, err
    if not HAS_HUB:
        assert w.returncode == 2 and b"bitnet-onnx[hub]" in w.stderr, w
        assert "bitnet-onnx[hub]" in err
        return
    assert w.returncode == 0, w.stderr
    assert folder_digest(t / "cli") == folder_digest(t / "ref")
    assert "HF_HUB_OFFLINE" in err, err
    old = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE")}
    # huggingface_hub reads its settings when first imported: this process has not imported it.
    assert "huggingface_hub" not in sys.modules
    os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    try:
        r = bitnet_onnx.build(repo, t / "api")
        assert folder_digest(t / "api") == folder_digest(t / "ref")
        assert r["layers"] >= 1
        try:
            bitnet_onnx.build("bitnet-test/not-cached", t / "none")
        except bitnet_onnx.HubError as e:
            assert e.returncode == 2 and "bitnet-test/not-cached" in e.message
        else:
            raise AssertionError("an id not in the cache resolved offline")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@test
def build_value_options_match_the_cli(t: Path, src: str) -> None:
    from bitnet_onnx import _cli

    h = run([src, "build", "--help"]).stdout.decode()
    opts = set()
    for m in re.finditer(r"^\s+(?:(-\w), )?(--[\w-]+) <", h, re.M):
        opts.update(o for o in m.groups() if o)
    assert opts == set(_cli.BUILD_VALUE_OPTIONS), opts ^ set(_cli.BUILD_VALUE_OPTIONS)
    assert _cli.checkpoint_index(["-o", "x", "--head=int4", "-q", "a/b"]) == 4
    assert _cli.checkpoint_index(["-qo", "x", "a/b"]) == 2
    assert _cli.checkpoint_index(["-qox", "a/b"]) == 1
    assert _cli.checkpoint_index(["--", "-weird"]) == 1


def readme_blocks(section: str) -> list[str]:
    """The ```sh blocks of one `## ` section of README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```sh\n(.*?)```", body, re.S)


@test
def readme_quick_start_runs_as_written(t: Path, src: str) -> None:
    """Every command of the README's quick start, run as written from the repository root with
    the wheel's `bitnet-onnx` and `python` first on PATH. The Hub id resolves from a Hub cache
    holding the packed sample under that id (offline, as these machines are); paths the
    commands write (`/tmp/...` and the 2B folder name) are moved into a temporary directory."""
    if not (HAS_HUB and HAS_GENAI):
        return
    blocks = readme_blocks("Quick start")
    assert len(blocks) == 3, blocks
    env = dict(os.environ, HF_HOME=str(hub_cache(t, "microsoft/bitnet-b1.58-2B-4T")), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    work = t / "out"
    work.mkdir()
    for block in blocks:
        for line in block.strip().splitlines():
            cmd = line.replace("/tmp/", f"{work}/").replace("bitnet-2b-genai", f"{work}/bitnet-2b-genai")
            r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True)
            assert r.returncode == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
            if "bitnet_onnx.generate" in line:
                assert len(r.stdout.strip()) > 0 and "tokens/s" in r.stderr, (line, r.stdout, r.stderr)


def greedy_prefix(case: dict) -> int:
    """How many of transformers' greedy tokens must match: up to the first step whose top-two
    margin is under 0.1 (a tie there may go either way in another runtime's float order)."""
    for i, m in enumerate(case["step_margins"]):
        if m < 0.1:
            return i
    return len(case["new_tokens"])


@test
def generate_streams_transformers_greedy_tokens(t: Path, src: str) -> None:
    """`python -m bitnet_onnx.generate` and `bitnet_onnx.generate.generate` on a built folder
    give transformers' greedy continuation of the trained sample; without the `genai` extra the
    command says how to install it and exits 2."""
    out = t / "genai"
    bitnet_onnx.build(SAMPLES / "checkpoints" / "packed", out)
    expected = json.loads((SAMPLES / "checkpoints" / "expected" / "packed.json").read_text())
    cmd = [sys.executable, "-m", "bitnet_onnx.generate", out, "x", "--max-new-tokens", "4"]
    if not HAS_GENAI:
        r = run(cmd, text=True)
        assert r.returncode == 2 and "pip install 'bitnet-onnx[genai]'" in r.stderr, (r.returncode, r.stderr)
        return
    from bitnet_onnx.generate import generate

    checked = 0
    for case in expected["prompts"]:
        n = greedy_prefix(case)
        streamed: list[str] = []
        g = generate(out, case["text"], max_new_tokens=len(case["new_tokens"]), on_text=streamed.append)
        assert g["prompt_ids"] == case["input_ids"], (g["prompt_ids"], case["input_ids"])
        assert g["ids"][:n] == case["new_tokens"][:n], (case["text"], g["ids"], case["new_tokens"])
        assert "".join(streamed) == g["text"] and g["decode_tokens_per_s"] > 0
        checked += n
        # The command streams the same text to standard output.
        r = run([*cmd[:4], case["text"], "--max-new-tokens", str(len(case["new_tokens"]))], text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == g["text"] + "\n" and "tokens/s" in r.stderr, (r.stdout, r.stderr)
    assert checked >= 100, checked
    r = run([*cmd[:3], t / "missing", "x"], text=True)
    assert r.returncode == 2 and "missing" in r.stderr and "genai_config.json" in r.stderr, r.stderr


@test
def typed_and_documented(t: Path, src: str) -> None:
    pkg = Path(bitnet_onnx.__file__).parent
    assert (pkg / "py.typed").is_file()
    for f in (bitnet_onnx.inspect, bitnet_onnx.convert, bitnet_onnx.verify, bitnet_onnx.check, bitnet_onnx.build):
        assert f.__doc__ and "bitnet-onnx" in f.__doc__ and f.__annotations__, f
    from bitnet_onnx.generate import generate  # importable without onnxruntime-genai

    assert generate.__doc__ and "onnxruntime-genai" in generate.__doc__ and generate.__annotations__


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source-bin", required=True)
    a = ap.parse_args()
    src = str(Path(a.source_bin).resolve())
    passed = failed = 0
    have = {"onnx": HAS_ONNX, "huggingface_hub": HAS_HUB, "onnxruntime-genai": HAS_GENAI}
    print("wheel tests: " + ", ".join(f"{k} {'installed' if v else 'absent'}" for k, v in have.items()))
    for fn in TESTS:
        with tempfile.TemporaryDirectory() as d:
            try:
                fn(Path(d), src)
            except Exception:
                failed += 1
                print(f"FAIL {fn.__name__}")
                traceback.print_exc()
            else:
                passed += 1
                print(f"ok   {fn.__name__}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
