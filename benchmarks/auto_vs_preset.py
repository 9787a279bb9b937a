"""`--preset auto` against a named preset (default cpu) on one dataset, at one budget, side by side.

Each runs `qmed benchmark quality --methods qmed --preset P` in its own process, one torch thread,
pinned to its own core (qmed.experiments.suite.run_side_by_side); then the paired per-image Dice
difference auto - P with its bootstrap CI, with TTA (qmed) and without (qmed-notta).

    python benchmarks/auto_vs_preset.py DATASET_DIR OUT MINUTES [PRESET]
"""

import json
import sys
from pathlib import Path

from qmed.experiments.suite import paired_difference, run_side_by_side


def main() -> None:
    data, out, minutes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    other = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    cmds = {
        p: [
            sys.executable,
            "-m",
            "qmed.cli",
            "benchmark",
            "quality",
            "--data",
            str(data / "train"),
            "--val",
            str(data / "val"),
            "--out",
            str(out / p),
            "--minutes",
            minutes,
            "--methods",
            "qmed",
            "--preset",
            p,
            "--force",
        ]
        for p in ("auto", other)
    }
    print(run_side_by_side(cmds, out / "logs", print))
    docs = {p: json.loads((out / p / "quality.json").read_text()) for p in cmds}
    for p, q in docs.items():
        r = next(x for x in q["results"] if x["method"] == "qmed")
        print(
            p,
            r["work"],
            {k: round(r["figures"][k]["mean"], 4) for k in ("dice_empty1", "dice_pooled", "object_f1")},
            r["figures"]["dice_empty1"]["ci"],
        )
    for key in ("qmed", "qmed-notta"):
        d = paired_difference(docs["auto"]["per_image"][key], docs[other]["per_image"][key])
        print(
            f"{key}: auto - {other} per-image Dice {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
            f"n={d['n']} better {d['better']} worse {d['worse']}"
        )


if __name__ == "__main__":
    main()
