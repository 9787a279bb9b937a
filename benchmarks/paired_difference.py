"""Paired bootstrap of the per-image Dice difference between two methods of a quality/ablate run.

The methods were scored on the same images, so the difference per image is resampled (images with
replacement, seeded), which is far tighter than comparing two separate CIs.

Usage: python benchmarks/paired_difference.py OUT/quality.json qmed smp [--metric dice] [--n-boot 2000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("doc")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--metric", default="dice")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    per_image = json.load(open(args.doc, encoding="utf-8"))["per_image"]
    a = {r["name"]: r[args.metric] for r in per_image[args.a]}
    b = {r["name"]: r[args.metric] for r in per_image[args.b]}
    names = sorted(n for n in a.keys() & b.keys() if a[n] is not None and b[n] is not None)
    diff = np.array([a[n] - b[n] for n in names], dtype=float)
    rng = np.random.default_rng(args.seed)
    boots = diff[rng.integers(0, len(diff), size=(args.n_boot, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    print(f"{args.metric}({args.a}) - {args.metric}({args.b}) over {len(diff)} images: {diff.mean():+.4f} "
          f"[{lo:+.4f}, {hi:+.4f}] (paired bootstrap, {args.n_boot} resamples); {args.a} better on "
          f"{int((diff > 0).sum())}, worse on {int((diff < 0).sum())}; P(diff <= 0) = {(boots <= 0).mean():.2f}")


if __name__ == "__main__":
    main()
