"""Print the classification ablation's table from the run directories benchmarks/classification_ablation.sh wrote.

Usage: python benchmarks/classification_ablation_summary.py OUT
One row per method: validation AUC, F1, sensitivity, specificity with 95 % bootstrap CIs (1000
resamples, seeded; from each run's summary.json), the training images (synthetic ones counted
separately), and the paired bootstrap AUC difference to the plain MobileNetV2 row over the same
validation images. Also written to OUT/ablation.md, with the SimCLR and DDPM stages' figures.
"""

import json
import sys
from pathlib import Path

from classification_summary import paired_auc_difference

ROWS = (
    ("1-mobilenet_v2", "MobileNetV2"),
    ("2-mobilenet_v2-pqc", "+ PQC"),
    ("3-simclr", "+ SimCLR"),
    ("4-simclr-pqc", "+ SimCLR + PQC"),
    ("5-sda-qec", "+ diffusion aug. + PQC (SDA-QEC)"),
)
METRICS = ("auc", "f1", "sensitivity", "specificity")


def _ci(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def main(out: Path) -> None:
    lines = [
        "| method | AUC | F1 | sensitivity | specificity | train images (synthetic) | epochs | ΔAUC vs MobileNetV2 [95 % CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = out / ROWS[0][0] / "eval" / "predictions.csv"
    for run, name in ROWS:
        f = out / run / "summary.json"
        if not f.is_file():
            lines.append(f"| {name} | (missing: {run}) |" + " |" * 6)
            continue
        s = json.loads(f.read_text())
        m = s["val_metrics"]
        syn = s.get("synthetic") or {"n": 0}
        pred = out / run / "eval" / "predictions.csv"
        diff = paired_auc_difference(base, pred) if run != ROWS[0][0] and base.is_file() else ""
        lines.append(
            f"| {name} | "
            + " | ".join(_ci(m[k]) for k in METRICS)
            + f" | {s['train']['n']} ({syn['n']}) | {s['epochs_run']} | {diff} |"
        )
    notes = []
    p = out / "simclr-pretrain" / "pretrain.json"
    if p.is_file():
        s = json.loads(p.read_text())
        last = s["loss_curve"][-1]
        notes.append(
            f"SimCLR: {s['n_images']} images, {s['steps']} steps in {s['train_seconds']:.0f} s, NT-Xent {last['loss']:.3f} "
            f"(chance {s['chance_loss']:.3f}), pair accuracy {last['pair_accuracy']:.3f}; {s['stop_reason']}"
        )
    p = out / "ddpm" / "synthesize.json"
    if p.is_file():
        s = json.loads(p.read_text())
        q, nn = s["quality"], s["quality"]["nearest_neighbour"]
        kid = (
            f"KID {q['kid']['mean']:.4f} ± {q['kid']['std']:.4f} (real halves {q['kid_real_halves']['mean']:.4f})"
            if q["kid"]
            else q["kid_extractor"]
        )
        notes.append(
            f"DDPM: {s['n_train']} malignant images, {s['steps']} steps in {s['train_seconds']:.0f} s, {s['n_images']} samples; {kid}; "
            f"nearest-neighbour RMS median synthetic->train {nn['synthetic_to_train']['median']:.4f} vs train->train "
            f"{nn['train_to_train_leave_one_out']['median']:.4f}, {nn['n_closer_than_any_real_pair']} closer than any real pair"
        )
    text = "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    print(text, end="")
    (out / "ablation.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/classification-ablation"))
