"""Compare bitnet-onnx binaries on one model: runs `convert MODEL -o OUT --target ort
--quantize-head -q` with each binary in turn, REPS rounds (alternating, so host load falls on
every binary alike), and prints each one's best and median wall time and its peak RSS (GNU time
`%M`) as min / median / max.

With --evict, each binary's pages are dropped from the page cache (posix_fadvise DONTNEED)
before each run: a binary just built or copied maps its code in larger pieces, which moves
peak RSS by about 1 MiB, so compare RSS with --evict. Times are best compared without it.

usage: python bench/ab.py MODEL BINARY [BINARY ...] [--reps 11] [--evict]
A binary may be given as NAME=VALUE,...:PATH to run it with environment variables set.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--evict", action="store_true", help="drop each binary's pages from the page cache first")
    a = ap.parse_args()
    out_dir = tempfile.mkdtemp(prefix="bitnet-ab-")
    out = os.path.join(out_dir, "out.onnx")
    runs = {b: [] for b in a.binaries}
    try:
        for _ in range(a.reps):
            for spec in a.binaries:
                env = dict(os.environ)
                path = spec
                if ":" in spec and "=" in spec.split(":", 1)[0]:
                    pairs, path = spec.split(":", 1)
                    env.update(kv.split("=", 1) for kv in pairs.split(","))
                if a.evict:
                    fd = os.open(path, os.O_RDONLY)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)
                cmd = ["/usr/bin/time", "-f", "%M", path, "convert", a.model, "-o", out,
                       "--target", "ort", "--quantize-head", "-q"]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                secs = time.perf_counter() - t0
                if p.returncode != 0:
                    raise SystemExit(f"{spec} failed ({p.returncode}):\n{p.stderr}")
                runs[spec].append((secs, int(p.stderr.strip().split()[-1])))
                for f in (out, out + ".data"):
                    if os.path.exists(f):
                        os.remove(f)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    for spec, v in runs.items():
        ts = sorted(t for t, _ in v)
        rss = sorted(r for _, r in v)
        mid = len(v) // 2
        print(f"{spec}: time best {ts[0]:.3f} s, median {ts[mid]:.3f} s; "
              f"peak RSS {rss[0] / 1024:.1f} / {rss[mid] / 1024:.1f} / {rss[-1] / 1024:.1f} MiB (min / median / max)")


if __name__ == "__main__":
    main()
