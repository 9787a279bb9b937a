"""How well `qmed.segment.instances.split_instances` splits objects, judged alone: each val image's
true foreground is the "prediction", split by the watershed or by connected components, and
scored against the truth's instances (DSB mean AP over IoU 0.5:0.95, AJI; means over images).
Reproduces the figures in the docstring of qmed.segment.instances and docs/design.md "Instances".

    python benchmarks/watershed_on_truth.py ../shared/data/dsb2018-fluo/val [--h-fraction 0.05]
"""

import argparse

import numpy as np

from qmed.data.dataset import find_pairs
from qmed.data.objects import label_components, object_diameter
from qmed.evaluate.metrics import aji, mean_average_precision
from qmed.io.images import read_mask
from qmed.segment.instances import split_instances


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("val")
    ap.add_argument("--h-fraction", type=float, default=0.05, help="h = max(1, FRACTION x the image's median diameter)")
    args = ap.parse_args()
    scores = {"components": [], "watershed": []}
    for pair in find_pairs(args.val):
        fg, truth = read_mask(pair.mask)
        d = object_diameter(fg)
        ws = split_instances(fg.astype(np.float32), h=max(1.0, args.h_fraction * d) if d else None)
        for name, labels in (("components", label_components(fg)), ("watershed", ws)):
            scores[name].append((mean_average_precision(labels, truth), aji(labels, truth)))
    for name, s in scores.items():
        a = np.array(s, dtype=float)
        print(f"{name}: mean AP {np.nanmean(a[:, 0]):.3f}, AJI {np.nanmean(a[:, 1]):.3f} over {len(a)} images")


if __name__ == "__main__":
    main()
