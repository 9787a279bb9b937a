"""Peak memory and time of `qmed predict` on one large image (default 4000x4000), in a child process.

Usage: python benchmarks/predict_memory.py --model RUN_DIR [--size 4000] [--tta] [--instances] [--mosaic IMAGES_DIR]
Prints the peak resident memory (ru_maxrss of the child) and wall time. `--mosaic` tiles the
images of a folder (e.g. dsb2018-fluo/val/images, gray) into the large image, so it holds real
nuclei by the ten thousand; without it the image is a blocky random texture. `--instances` adds
the label map and the object table (and prints the number of objects).
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
    ap.add_argument("--instances", action="store_true")
    ap.add_argument("--mosaic", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        rng = np.random.default_rng(0)
        if args.mosaic is None:
            img = (rng.random((args.size // 8, args.size // 8)) * 40).astype(np.uint8)
            img = np.kron(img, np.ones((8, 8), np.uint8))  # blocky texture, cheap to make
        else:
            img = mosaic(
                sorted(p for p in args.mosaic.iterdir() if p.suffix.lower() in (".png", ".tif", ".jpg")), args.size
            )
        Image.fromarray(img).save(tmp / "in" / "large.png")
        cmd = [
            sys.executable,
            "-m",
            "qmed.cli",
            "predict",
            "--model",
            args.model,
            "--input",
            str(tmp / "in"),
            "--out",
            str(tmp / "out"),
            "--tta" if args.tta else "--no-tta",
        ] + (["--instances"] if args.instances else [])
        t0 = time.time()
        subprocess.run(cmd, check=True)
        wall = time.time() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out = np.array(Image.open(tmp / "out" / "large.png"))
        objects = ""
        if args.instances:
            lab = np.array(Image.open(tmp / "out" / "instances" / "large.png"))
            objects = (
                f", {int(lab.max())} objects, label map foreground == mask: {bool(np.array_equal(lab > 0, out > 0))}"
            )
    print(
        f"image {args.size}x{args.size}, tta={args.tta}, instances={args.instances}, mosaic={args.mosaic}: "
        f"peak RSS {peak_mb:.0f} MB, wall {wall:.1f} s, mask {out.shape}{objects}"
    )


def mosaic(files: list, size: int) -> np.ndarray:
    """Gray uint8 size x size from the files' images, row by row, each cropped to the tallest
    that fits; repeats the list as needed."""
    canvas = np.zeros((size, size), np.uint8)
    y = x = row_h = 0
    k = 0
    while y < size:
        im = np.asarray(Image.open(files[k % len(files)]).convert("L"))
        k += 1
        h, w = min(im.shape[0], size - y), min(im.shape[1], size - x)
        canvas[y : y + h, x : x + w] = im[:h, :w]
        row_h = max(row_h, h)
        x += w
        if x >= size:
            x, y, row_h = 0, y + row_h, 0
    return canvas


if __name__ == "__main__":
    main()
