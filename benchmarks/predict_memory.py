"""Peak memory and time of `qmed predict` on one large image (default 4000x4000), in a child process.

Usage: python benchmarks/predict_memory.py --model RUN_DIR [--size 4000] [--tta]
Prints the peak resident memory (ru_maxrss of the child) and wall time.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--tta", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        rng = np.random.default_rng(0)
        img = (rng.random((args.size // 8, args.size // 8)) * 40).astype(np.uint8)
        img = np.kron(img, np.ones((8, 8), np.uint8))  # blocky texture, cheap to make
        Image.fromarray(img).save(tmp / "in" / "large.png")
        cmd = [sys.executable, "-m", "qmed.cli", "predict", "--model", args.model, "--input", str(tmp / "in"),
               "--out", str(tmp / "out"), "--tta" if args.tta else "--no-tta"]
        t0 = time.time()
        subprocess.run(cmd, check=True)
        wall = time.time() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out = np.array(Image.open(tmp / "out" / "large.png"))
    print(f"image {args.size}x{args.size}, tta={args.tta}: peak RSS {peak_mb:.0f} MB, wall {wall:.1f} s, mask {out.shape}")


if __name__ == "__main__":
    main()
