"""Several `benchmarks/lever_screen.py` runs of one lever (other training seeds), pooled.

One 12-minute screen cannot resolve a lever of a few thousandths on 13 images: one image's swing
between runs is larger (docs 12g). Here each image's Dice (empty = 1) is averaged over the screens,
per arm, and the paired bootstrap (images resampled) is taken on those means; each screen's own
lever - default is printed beside it. The screens should share the lever, splits and budget.

    python benchmarks/screen_pool.py SCREEN_DIR SCREEN_DIR [...] [--key qmed|qmed-notta] [--exclude NAME[,NAME...]]
"""

import argparse
import json
from pathlib import Path

from qmed.experiments.suite import paired_difference, pooled_per_image

ARMS = ("base", "lever")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("screens", nargs="+", type=Path)
    ap.add_argument("--key", default="qmed", help="qmed (with TTA) or qmed-notta")
    ap.add_argument("--exclude", default="", help="comma-separated image names to leave out")
    args = ap.parse_args()
    excluded = {n for n in args.exclude.split(",") if n}
    datasets: list[str] = []
    for s in args.screens:
        doc = json.loads((s / "screen.json").read_text())
        print(
            f"{s}: lever {' '.join(doc['lever'])}, both arms {' '.join(doc['both_arms']) or '-'}, {doc['minutes']:g} min"
        )
        datasets += [d for d in doc["datasets"] if d not in datasets]
    for name in datasets:
        # only screens that finished both arms, so both arms pool the same runs
        runs = [s for s in args.screens if all((s / name / arm / "quality.json").is_file() for arm in ARMS)]
        pooled = {arm: pooled_per_image(runs, name, args.key, excluded, folder=arm)[0] for arm in ARMS}
        if not pooled["base"] or not pooled["lever"]:
            print(f"{name:<14} no screen scored both arms")
            continue
        each = [
            paired_difference(
                *(pooled_per_image([s], name, args.key, excluded, folder=arm)[0] for arm in ("lever", "base"))
            )["mean"]
            for s in runs
        ]
        d = paired_difference(pooled["lever"], pooled["base"])
        means = {arm: sum(r["dice_empty1"] for r in pooled[arm]) / len(pooled[arm]) for arm in ARMS}
        print(f"{name:<14} lever - default, each screen: {' '.join(f'{v:+.4f}' for v in each)}")
        print(
            f"{name:<14} pooled over {len(runs)} screens ({args.key}): default {means['base']:.4f}, lever {means['lever']:.4f}, "
            f"lever - default {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] n={d['n']} "
            f"better {d['better']} worse {d['worse']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
