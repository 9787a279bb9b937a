"""Paired bootstrap of the per-image Dice difference between two methods of a quality/ablate run.

The methods were scored on the same images, so the difference per image is resampled (images with
replacement, seeded), which is far tighter than comparing two separate CIs.

Usage: python benchmarks/paired_difference.py OUT/quality.json qmed smp [--metric dice] [--n-boot 2000]
   or: python benchmarks/paired_difference.py A.per_image.csv B.per_image.csv   (two `qmed evaluate` outputs)
   A or B may also be DOC.json:METHOD, one method of a quality/ablate document.
   --exclude NAME[,NAME...] leaves those images out (e.g. the three DSB embryo images of docs 12c/12d).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from qmed.evaluate.stats import bootstrap_means, percentile_interval


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sources", nargs="+", help="DOC.json A B, or A.per_image.csv B.per_image.csv")
    ap.add_argument("--metric", default="dice")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude", default="", help="comma-separated image names to leave out")
    args = ap.parse_args()
    excluded = {n for n in args.exclude.split(",") if n}
    if len(args.sources) == 3:
        doc, args.a, args.b = args.sources
        per_image = json.load(open(doc, encoding="utf-8"))["per_image"]
        a = {r["name"]: r[args.metric] for r in per_image[args.a]}
        b = {r["name"]: r[args.metric] for r in per_image[args.b]}
    elif len(args.sources) == 2:
        args.a, args.b = args.sources
        a, b = (_column(f, args.metric) for f in args.sources)
    else:
        ap.error("give DOC.json A B, or two per_image.csv files")
    names = sorted(n for n in a.keys() & b.keys() - excluded if a[n] is not None and b[n] is not None)
    diff = np.array([a[n] - b[n] for n in names], dtype=float)
    boots = bootstrap_means(diff, args.n_boot, args.seed)
    lo, hi = percentile_interval(boots)
    print(
        f"{args.metric}({args.a}) - {args.metric}({args.b}) over {len(diff)} images: {diff.mean():+.4f} "
        f"[{lo:+.4f}, {hi:+.4f}] (paired bootstrap, {args.n_boot} resamples); {args.a} better on "
        f"{int((diff > 0).sum())}, worse on {int((diff < 0).sum())}; P(diff <= 0) = {(boots <= 0).mean():.2f}"
    )


def _column(source: str, metric: str) -> dict:
    """name -> metric from a per-image CSV, or from DOC.json:METHOD."""
    doc, _, method = source.rpartition(":")
    if doc.endswith(".json"):
        return {r["name"]: r[metric] for r in json.load(open(doc, encoding="utf-8"))["per_image"][method]}
    return _csv_column(Path(source), metric)


def _csv_column(path: Path, metric: str) -> dict:
    """name -> metric from a `qmed evaluate` per-image CSV; blank or NaN (undefined) -> None."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        v = r.get(metric, "")
        out[r["name"]] = float(v) if v not in ("", None) and not math.isnan(float(v)) else None
    return out


if __name__ == "__main__":
    main()
