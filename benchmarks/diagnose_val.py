"""Where does a trained model lose Dice on a validation set? Per image size group: Dice, precision,
recall; a threshold sweep; and the worst images with their object counts.

Usage: python benchmarks/diagnose_val.py --model RUN_DIR_OR_CKPT --data VAL_DIR [--tta]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from qmed.data.batches import LoadedPairs
from qmed.data.dataset import find_pairs
from qmed.evaluate.metrics import score_image
from qmed.segment.checkpoint import load_model
from qmed.segment.validate import validate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--tta", action="store_true")
    args = ap.parse_args()
    model, cfg, ckpt = load_model(args.model)
    data = LoadedPairs(find_pairs(args.data), cfg)
    summary, rows, probs = validate(
        model, data, cfg, torch.device("cpu"), tta=cfg.predict.tta if args.tta else 1, keep_probs=True
    )
    print(
        f"checkpoint {ckpt}; dice_fg {summary['dice_mean_fg']['mean']:.4f} precision {summary['precision']['mean']:.4f} "
        f"recall {summary['recall']['mean']:.4f} dice_pooled {summary['dice_pooled']:.4f}"
    )
    groups: dict[str, list] = {}
    for i, r in enumerate(rows):
        fg = data[i][1]
        groups.setdefault(f"{fg.shape[1]}x{fg.shape[0]}", []).append(
            (r["dice"], r["precision"], r["recall"], fg.mean())
        )
    print(f"{'size':>10s} {'n':>3s} {'dice':>6s} {'prec':>6s} {'recall':>6s} {'fg':>6s}")
    for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        a = np.nanmean(np.array(v, dtype=float), axis=0)
        print(f"{k:>10s} {len(v):3d} {a[0]:6.3f} {a[1]:6.3f} {a[2]:6.3f} {a[3]:6.3f}")
    for thr in (0.3, 0.4, 0.5, 0.6, 0.7):
        d = [score_image(p.astype(np.float32), data[i][1], data[i][2], thr)["dice"] for i, p in enumerate(probs)]
        print(f"threshold {thr:.1f}: dice_fg {np.nanmean(d):.4f}")
    print("worst images: name dice precision recall obj_tp obj_fn obj_fp")
    for r in sorted(rows, key=lambda r: r["dice"])[:8]:
        print(
            f"  {r['name']} {r['dice']:.3f} {r['precision']:.3f} {r['recall']:.3f} {r['obj_tp']} {r['obj_fn']} {r['obj_fp']}"
        )


if __name__ == "__main__":
    main()
