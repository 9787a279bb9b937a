"""Is the remaining val loss variance (which ensembling removes) or bias (which it does not), and how
much of it would a perfect per-image threshold or outline shift recover?

Reads PRED_DIR/probabilities/NAME.png (written by `qmed predict`) of one or more runs and the ground
truth, and prints per-image Dice (foreground images) for:
* each run at threshold 0.5;
* ensembles: the mean probability map of every subset of k runs, averaged over the subsets;
* oracles, per run and for the ensemble of all runs: each image at its own best threshold (of a
  grid), and each image's 0.5-mask at its own best erosion / dilation (-1..+3 px). They use the
  truth, so they are upper bounds of what any per-image calibration could gain, not methods;
* one per-image rule that needs no truth: the area-matched threshold, which keeps as many pixels
  as the probabilities sum to (the expected foreground area if the model is calibrated), so a pale
  image whose nuclei sit at 0.3-0.5 gets a lower threshold.

Usage: python benchmarks/error_ceilings.py --truth VAL_DIR PRED_DIR [PRED_DIR ...]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy import ndimage

from qmed.data.dataset import find_pairs
from qmed.evaluate.metrics import confusion, dice_mean_fg
from qmed.io.images import read_mask, read_probability

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SHIFTS = (-1, 0, 1, 2, 3)  # px: negative erodes, positive dilates


def shifted(fg: np.ndarray, px: int) -> np.ndarray:
    if px == 0:
        return fg
    op = ndimage.binary_dilation if px > 0 else ndimage.binary_erosion
    return op(fg, iterations=abs(px))


def dice(fg: np.ndarray, truth: np.ndarray) -> float:
    return dice_mean_fg([confusion(fg, truth)])


def oracles(probs: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    """Mean over images of the best Dice over THRESHOLDS, and over SHIFTS of the 0.5-mask."""
    best_t = [max(dice(p > t, m) for t in THRESHOLDS) for p, m in zip(probs, truths)]
    best_s = [max(dice(shifted(p > 0.5, s), m) for s in SHIFTS) for p, m in zip(probs, truths)]
    return float(np.mean(best_t)), float(np.mean(best_s))


def area_matched(p: np.ndarray) -> np.ndarray:
    """The round(sum p) most probable pixels of p: its expected foreground area (ties cut by order)."""
    k = min(int(round(float(p.sum()))), p.size)
    fg = np.zeros(p.size, bool)
    if k:
        fg[np.argpartition(p.ravel(), p.size - k)[p.size - k :]] = True
    return fg.reshape(p.shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--truth", required=True, type=Path)
    ap.add_argument("preds", nargs="+", type=Path)
    args = ap.parse_args()
    pairs = find_pairs(args.truth)
    truths = [read_mask(p.mask)[0] > 0 for p in pairs]
    runs = {d: [read_probability(d / "probabilities" / f"{p.name}.png") for p in pairs] for d in args.preds}

    def score(probs):
        return dice_mean_fg([confusion(p > 0.5, m) for p, m in zip(probs, truths)])

    print(f"{len(pairs)} images, per-image Dice (foreground images)")
    print(f"{'':44s} {'at 0.5':>8s} {'area-matched':>13s} {'oracle threshold':>17s} {'oracle shift':>13s}")
    for d, probs in runs.items():
        t, s = oracles(probs, truths)
        area = dice_mean_fg([confusion(area_matched(p), m) for p, m in zip(probs, truths)])
        print(f"{str(d)[-44:]:44s} {score(probs):8.4f} {area:13.4f} {t:17.4f} {s:13.4f}")
    names = list(runs)
    for k in range(2, len(names) + 1):
        subsets = list(itertools.combinations(names, k))
        s = [score([np.mean([runs[d][i] for d in c], axis=0) for i in range(len(pairs))]) for c in subsets]
        print(
            f"ensemble of {k} runs (mean probability), mean over {len(subsets)} subsets: {np.mean(s):.4f} (min {min(s):.4f}, max {max(s):.4f})"
        )
    if len(names) > 1:
        ens = [np.mean([runs[d][i] for d in names], axis=0) for i in range(len(pairs))]
        t, s = oracles(ens, truths)
        print(f"ensemble of all {len(names)}: oracle threshold {t:.4f}, oracle shift {s:.4f}")


if __name__ == "__main__":
    main()
