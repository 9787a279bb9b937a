"""Print the classification benchmark's figures from the run directories benchmarks/classification.sh wrote.

Usage: python benchmarks/classification_summary.py OUT
Prints one row per run (val metrics with 95 % bootstrap CIs, epochs, steps, seconds, step time, the
quantum layer's time per step and share, alpha) and a paired bootstrap of the BUSI AUC difference
(PQC minus no PQC) over the same validation images (1000 resamples, seed 0).
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np

from qmed.evaluate.classification import auc_rows

RUNS = ("busi-mobilenet_v2", "busi-mobilenet_v2-pqc", "pneumoniamnist-mobilenet_v2-pqc")


def main(out: Path) -> None:
    print(
        f"{'run':34s} {'AUC [95% CI]':26s} {'acc':>6s} {'bal':>6s} {'F1':>6s} {'sens':>6s} {'spec':>6s} {'best':>4s} {'ep':>3s} "
        f"{'steps':>5s} {'sec':>5s} {'step ms':>8s} {'PQC ms':>7s} {'PQC %':>6s} {'alpha':>7s}"
    )
    for run in RUNS:
        f = out / run / "summary.json"
        if not f.is_file():
            print(f"{run:34s} (missing)")
            continue
        s = json.loads(f.read_text())
        m, p = s["val_metrics"], s["profile"]
        auc = m["auc"]
        pq = f"{p['pqc_ms']:7.1f} {100 * p['pqc_share']:5.1f}%" if "pqc_ms" in p else f"{'-':>7s} {'-':>6s}"
        alpha = f"{s['alpha']:+7.3f}" if s["alpha"] is not None else f"{'-':>7s}"
        print(
            f"{run:34s} {auc['value']:.4f} [{auc['ci_low']:.4f}, {auc['ci_high']:.4f}] "
            f"{m['accuracy']['value']:6.3f} {m['balanced_accuracy']['value']:6.3f} {m['f1']['value']:6.3f} "
            f"{m['sensitivity']['value']:6.3f} {m['specificity']['value']:6.3f} {s['best_epoch']:4d} {s['epochs_run']:3d} "
            f"{s['steps']:5d} {s['train_seconds']:5.0f} {p['step_ms']:8.0f} {pq} {alpha}"
        )
        print(f"{'':34s} val n={s['val']['n']} {s['val']['counts']}; {s['stop_reason']}")
    a, b = (out / r / "eval" / "predictions.csv" for r in RUNS[:2])
    if a.is_file() and b.is_file():
        print(f"BUSI paired bootstrap AUC(pqc) - AUC(no pqc): {paired_auc_difference(a, b)}")


def paired_auc_difference(a: Path, b: Path, n_boot: int = 1000, seed: int = 0) -> str:
    """AUC(b) - AUC(a) over the same cases (two predictions.csv files), with a paired bootstrap CI."""
    pa, pb = _read(a), _read(b)
    files = sorted(pa)
    y = np.array([pa[f][1] for f in files])
    sa = np.array([pa[f][0] for f in files])
    sb = np.array([pb[f][0] for f in files])
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    d = auc_rows(y[idx], sb[idx]) - auc_rows(y[idx], sa[idx])
    d = d[np.isfinite(d)]
    point = auc_rows(y[None], sb[None])[0] - auc_rows(y[None], sa[None])[0]
    return (
        f"{point:+.4f} [{np.quantile(d, 0.025):+.4f}, {np.quantile(d, 0.975):+.4f}] "
        f"({len(d)} resamples; P(diff <= 0) = {np.mean(d <= 0):.2f})"
    )


def _read(path: Path) -> dict:
    rows = list(csv.DictReader(open(path)))
    pos = [k for k in rows[0] if k.startswith("prob_")][-1]
    return {r["file"]: (float(r[pos]), int(r["true"] == pos[5:])) for r in rows}


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/classification"))
