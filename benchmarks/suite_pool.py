"""Several `qmed benchmark suite` runs on the same splits, pooled: qmed - smp with the run-to-run
noise averaged out.

One suite run cannot resolve a lead of the bar's size: the plain script against itself moved by
0.010 on histology between two runs (docs 12g), mostly on one image. Here each image's Dice is
averaged over the runs, per method, and the paired bootstrap (images resampled) is taken on those
means; each run's own qmed - smp and each method's spread across runs are printed beside it. The
runs should share the splits and budget; qmed's arm may differ between runs (a lever set with
--set), and the pooled row then describes that family of settings, not one of them.

    python benchmarks/suite_pool.py SUITE_DIR SUITE_DIR [SUITE_DIR ...] [--exclude NAME[,NAME...]]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from qmed.experiments.suite import paired_difference, pooled_per_image

METHODS = ("qmed", "smp")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("suites", nargs="+", type=Path)
    ap.add_argument("--exclude", default="", help="comma-separated image names to leave out")
    args = ap.parse_args()
    excluded = {n for n in args.exclude.split(",") if n}
    datasets = []
    for run in args.suites:
        doc = json.loads((run / "suite.json").read_text())
        overrides = doc["settings"].get("qmed_overrides") or "-"
        print(
            f"{run}: preset {doc['settings']['preset']}, qmed --set {overrides}, train seed {doc['settings'].get('train_seed', 0)}"
        )
        datasets += [row["dataset"] for row in doc["datasets"] if row["dataset"] not in datasets]
    for name in datasets:
        rows, means = {}, {}
        for method in METHODS:
            rows[method], means[method] = pooled_per_image(args.suites, name, method, excluded)
        if not rows["qmed"] or not rows["smp"]:
            print(f"{name:<14} not scored by both methods in these runs")
            continue
        for method in METHODS:
            m = means[method]
            print(
                f"{name:<14} {method:<5} per-run means {' '.join(f'{v:.4f}' for v in m)}; mean {np.mean(m):.4f}, "
                f"spread (max - min) {max(m) - min(m):.4f}"
            )
        each = []
        for run in args.suites:
            one = {m: pooled_per_image([run], name, m, excluded)[0] for m in METHODS}
            if one["qmed"] and one["smp"]:
                each.append(paired_difference(one["qmed"], one["smp"])["mean"])
        d = paired_difference(rows["qmed"], rows["smp"])
        print(f"{name:<14} qmed - smp, each run: {' '.join(f'{v:+.4f}' for v in each)}")
        print(
            f"{name:<14} qmed - smp, pooled over {len(means['qmed'])} and {len(means['smp'])} runs: {d['mean']:+.4f} "
            f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] n={d['n']} better {d['better']} worse {d['worse']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
