"""Does simple morphological post-processing of predicted probability maps raise Dice?

Reads PRED_DIR/probabilities/NAME.png (written by `qmed predict`) and the ground truth, and prints
per-image Dice (foreground images) and pooled Dice for each combination of threshold, removal of
connected components smaller than N px, and hole filling. Tune on val only.

Usage: python benchmarks/postprocess_sweep.py --pred PRED_DIR --truth VAL_DIR [--thresholds 0.4,0.5,0.6] [--min-px 0,5,10,20,40]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy import ndimage

from qmed.data.dataset import find_pairs
from qmed.evaluate.metrics import confusion, dice_mean_fg, dice_pooled
from qmed.io.images import read_mask, read_probability


def postprocess(fg: np.ndarray, min_px: int, fill: bool) -> np.ndarray:
    if fill:
        fg = ndimage.binary_fill_holes(fg)
    if min_px > 0:
        lab, n = ndimage.label(fg)
        if n:
            sizes = np.bincount(lab.ravel())
            keep = sizes >= min_px
            keep[0] = False
            fg = keep[lab]
    return fg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pred", required=True, type=Path)
    ap.add_argument("--truth", required=True, type=Path)
    ap.add_argument("--thresholds", default="0.4,0.5,0.6")
    ap.add_argument("--min-px", default="0,5,10,20,40")
    args = ap.parse_args()
    pairs = find_pairs(args.truth)
    probs = [read_probability(args.pred / "probabilities" / f"{p.name}.png") for p in pairs]
    truths = [read_mask(p.mask)[0] for p in pairs]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    min_pxs = [int(m) for m in args.min_px.split(",")]
    print(f"{len(pairs)} images; {'threshold':>9s} {'min_px':>6s} {'fill':>5s} {'dice_fg':>8s} {'pooled':>8s}")
    for thr, min_px, fill in itertools.product(thresholds, min_pxs, (False, True)):
        counts = [confusion(postprocess(p > thr, min_px, fill), t) for p, t in zip(probs, truths)]
        print(
            f"{'':>{len(str(len(pairs))) + 9}s}{thr:9.2f} {min_px:6d} {str(fill):>5s} {dice_mean_fg(counts):8.4f} {dice_pooled(counts):8.4f}"
        )


if __name__ == "__main__":
    main()
