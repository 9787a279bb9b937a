"""One lever against qmed's default, side by side, on several datasets at one budget.

For each dataset (split as the suite splits it: qmed.experiments.suite.dataset_splits), two
`qmed benchmark quality --methods qmed --preset auto` processes run at once, one torch thread
each, each pinned to its own core: "base" (the default) and "lever" (the default with the --set
overrides). Prints per dataset the paired per-image Dice difference lever - base, with TTA (qmed)
and without (qmed-notta), with its bootstrap CI; writes OUT/screen.json. Arguments starting with
-- go to both arms' `qmed benchmark quality` (e.g. --qmed-no-val: both train without the val
split, which then only scores; with data.val_fraction=0 as the lever, that measures training on
every image against keeping a fifth back for validation).

    python benchmarks/lever_screen.py DATA_ROOT OUT MINUTES DATASET[,DATASET...] [--FLAG[=VALUE] ...] KEY=VALUE [KEY=VALUE ...]

A flag's value may also follow it as the next word (--train-seed 1): only KEY=VALUE words are levers.
"""

import json
import sys
from pathlib import Path

from qmed.experiments.suite import dataset_splits, paired_difference, run_side_by_side
from qmed.io.files import write_json


def main() -> None:
    root, out, minutes, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
    flags, sets = [], []
    for a in sys.argv[5:]:  # a word without "=" after a flag is that flag's value, not a lever
        (flags if a.startswith("--") or (flags and "=" not in a) else sets).append(a)
    doc = {"minutes": float(minutes), "lever": sets, "both_arms": flags, "datasets": {}}
    for name in names:
        train, val, _ = dataset_splits(root, name, out)
        base = [
            sys.executable,
            "-m",
            "qmed.cli",
            "benchmark",
            "quality",
            "--data",
            str(train),
            "--val",
            str(val),
            "--minutes",
            minutes,
            "--methods",
            "qmed",
            "--preset",
            "auto",
            "--force",
            *flags,
        ]
        cmds = {
            "base": base + ["--out", str(out / name / "base")],
            "lever": base + ["--out", str(out / name / "lever")] + [a for kv in sets for a in ("--set", kv)],
        }
        codes = run_side_by_side(cmds, out / name / "logs", print)
        print(name, codes, flush=True)
        failed = [arm for arm in cmds if codes.get(arm) != 0 or not (out / name / arm / "quality.json").is_file()]
        if failed:
            sys.exit(f"{name}: arm {', '.join(failed)} failed (exit codes {codes}); see {out / name / 'logs'}")
        q = {arm: json.loads((out / name / arm / "quality.json").read_text()) for arm in cmds}
        row = {}
        for arm, d in q.items():
            r = next(x for x in d["results"] if x["method"] == "qmed")
            row[arm] = {
                "work": r["work"],
                **{k: r["figures"][k]["mean"] for k in ("dice_empty1", "dice_pooled", "object_f1")},
            }
            print(f"  {arm}: {r['work']}", {k: round(v, 4) for k, v in row[arm].items() if k != "work"}, flush=True)
        for key in ("qmed", "qmed-notta"):
            d = paired_difference(q["lever"]["per_image"][key], q["base"]["per_image"][key])
            row[f"paired_{key}"] = d
            print(
                f"  {key}: lever - base per-image Dice {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                f"n={d['n']} better {d['better']} worse {d['worse']}",
                flush=True,
            )
        doc["datasets"][name] = row
        write_json(out / "screen.json", doc)


if __name__ == "__main__":
    main()
