"""Which images a model under-segments (outlines drawn too tight), and what they cost in mean Dice.

An image counts as under-segmented when its recall is below --recall (0.85) while its precision is
above --precision (0.90): the model finds the nuclei but misses a rim round them. On DSB2018
fluorescence these are mostly one source whose annotators drew the outlines about 2 px wider than
the others (docs/benchmarks.md section 1g).

Usage:
  python benchmarks/under_segmented.py EVAL.per_image.csv [MORE.per_image.csv ...] [--truth DIR]
With --truth TRAIN_DIR (a training folder with masks/), a CSV of that folder's images also gets the
complexity sampler's mean weight (qmed.data.sampling, over the whole folder) for those images
against the rest, i.e. how much more often the sampler shows them to the model.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csvs", nargs="+", type=Path)
    ap.add_argument("--recall", type=float, default=0.85)
    ap.add_argument("--precision", type=float, default=0.90)
    ap.add_argument("--truth", type=Path, default=None)
    args = ap.parse_args()
    weights = _complexity_weights(args.truth) if args.truth is not None else {}
    for path in args.csvs:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["dice"] not in ("", "nan")]
        dice = np.array([float(r["dice"]) for r in rows])
        under = np.array([float(r["recall"]) < args.recall and float(r["precision"]) > args.precision for r in rows])
        fixed = dice.copy()
        fixed[under] = np.maximum(fixed[under], np.median(dice[~under])) if (~under).any() else fixed[under]
        print(
            f"{path}: {len(rows)} images, mean Dice {dice.mean():.4f}; under-segmented {under.sum()} "
            f"(mean Dice {dice[under].mean() if under.any() else float('nan'):.4f}), the rest {dice[~under].mean():.4f}; "
            f"with the under-segmented images at the rest's median ({np.median(dice[~under]):.4f}) the mean would be {fixed.mean():.4f}"
        )
        if weights and all(r["name"] in weights for r in rows):
            w = np.array([weights[r["name"]] for r in rows])
            print(
                f"  complexity sampler: mean weight {w[under].mean():.2f} for the under-segmented images, "
                f"{w[~under].mean():.2f} for the rest; their share of draws {w[under].sum() / w.sum():.3f} "
                f"(uniform {under.mean():.3f})"
            )


def _complexity_weights(truth: Path) -> dict:
    from qmed.data.dataset import find_pairs, load_pair
    from qmed.data.sampling import complexity_score, complexity_weights

    pairs = find_pairs(truth)
    w = complexity_weights([complexity_score(load_pair(p)[2]) for p in pairs])
    return {p.name: float(x) for p, x in zip(pairs, w)}


if __name__ == "__main__":
    main()
