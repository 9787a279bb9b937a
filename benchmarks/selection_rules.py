"""Which model-selection rule picks the better epoch, judged on images it did not select on.

For each RUN (a qmed run directory with val_per_image.csv, written by qmed train since 2026-12-01),
the val images are split at random into halves A and B, SPLITS times. Each rule smooths the mean
Dice on A over the accepted epochs (metrics.csv's outliers excluded, as in training) with
qmed.segment.train.selection_score and picks its epoch the way the trainer does (the first epoch
whose smoothed score beats every earlier one's, kept while none beats it); the rule is scored by the
mean Dice on B of that epoch. Printed per run and pooled: each rule's mean held-out Dice over the
splits, and its mean paired difference from the paper's rule ("ema") with the 2.5-97.5 %
percentiles of that difference over the splits (split-to-split spread, not a CI over new images).

    python benchmarks/selection_rules.py RUN [RUN ...] [--splits 200] [--alpha 0.9] [--window 3]
"""

import argparse
import csv
from pathlib import Path

import numpy as np

from qmed.segment.train import VAL_PER_IMAGE, selection_score

RULES = ("ema", "ema_debiased", "window", "last", "raw")


def load(run: Path) -> np.ndarray:
    """(accepted epochs x images) per-image Dice, epochs in order."""
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        outliers = {int(r["epoch"]) for r in csv.DictReader(fh) if r.get("outlier") in ("1", "1.0")}
    by_epoch: dict[int, dict[str, float]] = {}
    with open(run / VAL_PER_IMAGE, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            by_epoch.setdefault(int(r["epoch"]), {})[r["name"]] = float(r["dice_empty1"])
    epochs = [e for e in sorted(by_epoch) if e not in outliers]
    names = sorted(by_epoch[epochs[0]])
    return np.array([[by_epoch[e][n] for n in names] for e in epochs])


def pick(history: list[float], rule: str, alpha: float, window: int) -> int:
    if rule == "last":
        return len(history) - 1
    if rule == "raw":
        rule, alpha = "ema", 0.0
    best, chosen = -np.inf, 0
    for t in range(len(history)):
        s = selection_score(history[: t + 1], rule, alpha, window)
        if s > best:
            best, chosen = s, t
    return chosen


def held_out(d: np.ndarray, splits: int, alpha: float, window: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = d.shape[1]
    out = {r: np.empty(splits) for r in RULES}
    for s in range(splits):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2 :]
        hist = d[:, a].mean(axis=1).tolist()
        for r in RULES:
            out[r][s] = d[pick(hist, r, alpha, window), b].mean()
    return out


def report(title: str, res: dict[str, np.ndarray]) -> None:
    print(title)
    for r in RULES:
        diff = res[r] - res["ema"]
        lo, hi = np.percentile(diff, [2.5, 97.5])
        print(f"  {r:13s} held-out Dice {res[r].mean():.4f}   {r} - ema {diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--window", type=int, default=3)
    args = ap.parse_args()
    pooled: dict[str, list] = {r: [] for r in RULES}
    for run in args.runs:
        d = load(run)
        res = held_out(d, args.splits, args.alpha, args.window)
        report(f"{run} ({d.shape[0]} accepted epochs, {d.shape[1]} val images)", res)
        for r in RULES:
            pooled[r].append(res[r])
    if len(args.runs) > 1:
        report(
            f"pooled over {len(args.runs)} runs (mean of the runs' split means)",
            {r: np.mean(np.stack(v), axis=0) for r, v in pooled.items()},
        )


if __name__ == "__main__":
    main()
