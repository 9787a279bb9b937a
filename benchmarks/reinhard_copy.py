"""A copy of a split with each image's colour Reinhard-normalised to a training set's typical stain,
to probe whether test-time stain normalisation helps models trained on raw colour (docs 11j).

Reinhard et al. 2001: per channel in CIE LAB, (x - image mean) / image std * target std + target
mean; the target is the per-channel median over the training images' means and stds. A probe, so
written here with OpenCV's LAB conversion rather than adding a stain library (torchstain) to the
project; the masks are linked, not copied.

    python benchmarks/reinhard_copy.py TRAIN_DIR SPLIT_DIR OUT_DIR
"""

import os
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def lab(path: Path) -> np.ndarray:
    return cv2.cvtColor(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255, cv2.COLOR_RGB2LAB)


def main() -> None:
    train, split, out = (Path(a) for a in sys.argv[1:4])
    stats = np.array(
        [
            [x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)]
            for x in map(lab, sorted((train / "images").glob("*.png")))
        ]
    )
    target_mean, target_std = np.median(stats[:, 0], 0), np.median(stats[:, 1], 0)
    print("target LAB mean", target_mean.round(2), "std", target_std.round(2))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    for f in sorted((split / "images").glob("*.png")):
        x = lab(f)
        m, s = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)
        y = ((x - m) / np.maximum(s, 1e-3) * target_std + target_mean).astype(np.float32)
        rgb = np.clip(cv2.cvtColor(y, cv2.COLOR_LAB2RGB), 0, 1)
        Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(out / "images" / f.name)
        link = out / "masks" / f.name
        if not link.exists():
            os.symlink((split / "masks" / f.name).resolve(), link)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
