"""Where do a dataset's masks put the object outline? A check for annotation conventions.

For each image of one size (default 256x256; the DSB2018 source whose masks are drawn wider than
the visible nuclei is at that size), this measures the *ring level*: the mean intensity of the
mask's outermost pixel ring, scaled so 0 is the background's level and 1 the objects' interior
(intensities percentile-scaled per image as `data.normalize: percentile` does). A mask drawn out
into the dark has a low ring level; one drawn at the visible edge a high one. It then prints:

* the ring level's spread and its Spearman correlation with per-image Dice (from `qmed evaluate`'s
  per-image CSV on the same images) and with image-wide features;
* how well those image-only features predict the ring level (5-fold cross-validated R² of a
  random forest): how much of the convention a model could read off the image.

    python benchmarks/outline_convention.py --truth ../shared/data/dsb2018-fluo/train EVAL.per_image.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from scipy import ndimage, stats
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import cross_val_score

from qmed.data.batches import normalize_intensity
from qmed.data.dataset import find_pairs
from qmed.io.images import read_image, read_mask

FEATURES = ("raw_background", "raw_p99.8", "foreground_fraction_0.3", "sharpness", "blobs")


def ring_level(img: np.ndarray, mask: np.ndarray) -> float | None:
    """Outer-ring intensity between background (0) and interior (1); None without both."""
    ring = mask & ~ndimage.binary_erosion(mask)
    inner = ndimage.binary_erosion(mask, iterations=3)
    bg = ~ndimage.binary_dilation(mask, iterations=3)
    if inner.sum() < 10 or bg.sum() < 10:
        return None
    b, i = img[bg].mean(), img[inner].mean()
    return float((img[ring].mean() - b) / (i - b)) if i - b > 1e-6 else None


def image_features(raw: np.ndarray, img: np.ndarray) -> list[float]:
    """Image-only features (no mask): raw 1st / 99.8th percentiles, bright fraction, sharpness, blob count."""
    lap = ndimage.laplace(img)
    return [
        float(np.percentile(raw, 1)),
        float(np.percentile(raw, 99.8)),
        float((img > 0.3).mean()),
        float(lap.var()),
        float(ndimage.label(img > 0.3)[1]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("per_image_csv", help="qmed evaluate's per-image CSV on the --truth images")
    ap.add_argument("--truth", required=True, help="dataset folder (images/ + masks/)")
    ap.add_argument("--size", default="256x256", help="only images of this HxW (or 'all')")
    a = ap.parse_args()
    dice = {r["name"]: float(r["dice"]) for r in csv.DictReader(open(a.per_image_csv))}
    rows = []
    for pair in find_pairs(Path(a.truth)):
        name = pair.name
        raw = read_image(pair.image).astype(np.float64).mean(-1) * 255  # 8-bit scale for the raw features
        if name not in dice or (a.size != "all" and "x".join(map(str, raw.shape[:2])) != a.size):
            continue
        img = normalize_intensity(raw, "percentile")
        level = ring_level(img, read_mask(pair.mask)[0])
        if level is not None:
            rows.append((level, dice[name], image_features(raw, img)))
    if len(rows) < 10:
        raise SystemExit(f"{a.truth}: only {len(rows)} usable images of size {a.size}")
    level = np.array([r[0] for r in rows])
    d = np.array([r[1] for r in rows])
    feats = np.array([r[2] for r in rows])
    q = np.percentile(level, [0, 10, 50, 90, 100])
    print(
        f"{len(rows)} images of size {a.size}: ring level min / p10 / median / p90 / max = "
        + " / ".join(f"{v:.2f}" for v in q)
    )
    print(f"  Spearman with per-image Dice: {stats.spearmanr(level, d)[0]:+.2f}")
    for k, name in enumerate(FEATURES):
        print(f"  Spearman with {name}: {stats.spearmanr(level, feats[:, k])[0]:+.2f}")
    rf = RandomForestRegressor(200, min_samples_leaf=3, random_state=0, n_jobs=1)
    r2 = cross_val_score(rf, feats, level, cv=5, scoring="r2")
    print(
        f"  predicted from the image-only features: cross-validated R² {r2.mean():.2f} (folds {', '.join(f'{v:.2f}' for v in r2)})"
    )


if __name__ == "__main__":
    main()
