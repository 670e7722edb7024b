"""Benchmark: wall time of `bitnet-onnx verify` on a ~25-million-parameter transformer.

Builds the BitNet-shaped decoder of bench/convert_speed.py with vocab 2048, d 768, ffn 2048,
3 blocks (24.4 M parameters, linear weights already ternary so conversion is lossless), converts
it with `--target ort` and `--target qdq-int8`, and times

    bitnet-onnx verify ORIGINAL CONVERTED --dim batch=1 --dim seq=128

as a fresh process (best of N, peak RSS from GNU time). The exit status (0 pass) is reported.

usage: python bench/verify_speed.py target/release/bitnet-onnx [--reps 3]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_speed import measure, save_transformer, transformer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)
    work = tempfile.mkdtemp(prefix="bitnet-verify-bench-")
    try:
        m = transformer(vocab=2048, ternary=True)
        params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        orig = os.path.join(work, "orig.onnx")
        save_transformer(m, orig, external=False)
        del m
        rows = []
        for target in ("ort", "qdq-int8"):
            out = os.path.join(work, f"{target}.onnx")
            subprocess.run([binary, "convert", orig, "-o", out, "--target", target, "-q"], check=True)
            cmd = [binary, "verify", orig, out, "--dim", "batch=1", "--dim", "seq=128"]
            best = measure(cmd, [], a.reps, check=False)  # exit 1 = comparison failed: still timed
            if best.status:
                print(best.stdout[-3000:], file=sys.stderr)
            rows.append((target, os.path.getsize(out), best))
        print(f"model: {params / 1e6:.1f} M parameters, {os.path.getsize(orig):,} B, input tokens [1, 128]")
        print(f"command: bitnet-onnx verify ORIGINAL CONVERTED --dim batch=1 --dim seq=128 (best of {a.reps})\n")
        print("| target | converted bytes | verify wall s | CPU s | peak RSS MiB | result |")
        print("|---|---|---|---|---|---|")
        for target, size, r in rows:
            result = {0: "pass", 1: "**fail**"}.get(r.status, f"could not run (exit {r.status})")
            print(f"| {target} | {size:,} | {r.secs:.2f} | {r.cpu:.2f} | {r.rss / 2**20:,.0f} | {result} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
