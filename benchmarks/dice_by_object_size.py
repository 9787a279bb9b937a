"""Per-image Dice grouped by the ground truth's median object diameter, and by image size (W x H,
on DSB2018 a proxy for the acquisition source), and, for a `--rescale` prediction, by the scale
factor each image got: where a method wins or loses.

Usage: python benchmarks/dice_by_object_size.py --truth VAL_DIR A.per_image.csv [B.per_image.csv ...]
           [--scales PRED_DIR/scales.json --against A.per_image.csv]
Each CSV is a `qmed evaluate` per-image output; diameters are `qmed.data.objects.object_diameter`
of the instance masks.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from qmed.data.dataset import find_pairs, load_pair
from qmed.data.objects import object_diameter

DIAMETER_BINS = [(0, 12), (12, 20), (20, 35), (35, 1e9)]
SCALE_BINS = [(0, 0.7), (0.7, 1.15), (1.15, 1.45), (1.45, 1.75), (1.75, 10)]


def dice_column(path: Path) -> dict:
    with path.open(newline="", encoding="utf-8") as f:
        return {r["name"]: float(r["dice"]) for r in csv.DictReader(f) if r["dice"] not in ("", "nan")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--truth", required=True, type=Path)
    ap.add_argument("csvs", nargs="+", type=Path)
    ap.add_argument("--scales", type=Path, help="scales.json of a --rescale prediction (its CSV is the first one)")
    ap.add_argument("--against", type=Path, help="per-image CSV of the same model without rescaling")
    args = ap.parse_args()
    diam, size = {}, {}
    for p in find_pairs(args.truth):
        labels = load_pair(p)[2]
        diam[p.name], size[p.name] = object_diameter(labels), f"{labels.shape[1]}x{labels.shape[0]}"
    cols = {str(c): dice_column(c) for c in args.csvs}
    for lo, hi in DIAMETER_BINS:
        names = [n for n, d in diam.items() if d is not None and lo <= d < hi]
        means = "  ".join(f"{c}: {np.mean([v[n] for n in names if n in v]):.4f}" for c, v in cols.items())
        print(f"median diameter {lo:g}-{hi if hi < 1e9 else 'inf'} px, {len(names)} images  {means}")
    for wh in sorted(set(size.values()), key=lambda k: -list(size.values()).count(k)):
        names = [n for n, v in size.items() if v == wh]
        means = "  ".join(f"{c}: {np.mean([v[n] for n in names if n in v]):.4f}" for c, v in cols.items())
        print(f"image size {wh}, {len(names)} images  {means}")
    if args.scales and args.against:
        scales = {Path(k).stem: f for k, f in json.loads(args.scales.read_text())["scales"].items()}
        new, old = dice_column(args.csvs[0]), dice_column(args.against)
        for lo, hi in SCALE_BINS:
            d = [new[n] - old[n] for n, f in scales.items() if lo <= f < hi and n in new and n in old]
            if d:
                print(
                    f"scale {lo:g}-{hi:g}x, {len(d)} images: mean change {np.mean(d):+.4f} (min {min(d):+.3f}, max {max(d):+.3f})"
                )


if __name__ == "__main__":
    main()
