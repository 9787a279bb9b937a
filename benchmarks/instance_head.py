"""Issue 20's bar: the learned instance head against connected components of the same model.

Two `qmed benchmark quality --methods qmed --preset auto` processes at once on one dataset (split
as the suite splits it), one torch thread each, each pinned to its own core: "base" (the default
without the head: --set model.instance_head=none) and "head" (the default with --set
model.instance_head=contact, plus any further KEY=VALUE). Each arm's TTA predictions are scored two ways, per image:
* cc: the 8-connected components of its mask (what a plain script that thresholds gets);
* split: its `qmed predict --instances` label maps (base: the distance-transform watershed;
  head: the same on foreground minus contact);
and the script prints mean AP (DSB2018, IoU 0.5:0.95), AJI, PQ, |count error| and pixel Dice per
arm and way, then the paired differences that the bar reads: head split - head cc (mean AP, AJI;
bar +0.05), head - base pixel Dice (bar: within 0.003), and head split - base split. Writes
OUT/instance_head.json.

    python benchmarks/instance_head.py DATA_ROOT OUT MINUTES [DATASET] [KEY=VALUE ...]
"""

import json
import sys
from pathlib import Path

from qmed.evaluate.folders import evaluate_folders
from qmed.experiments.suite import dataset_splits, paired_difference, run_side_by_side
from qmed.io.files import write_json

KEYS = ("dice_empty1", "map_dsb", "aji", "pq", "count_error")


def mean(rows: list[dict], key: str) -> float:
    vals = [abs(r[key]) if key == "count_error" else r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def main() -> None:
    root, out, minutes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    rest = sys.argv[4:]
    name = rest.pop(0) if rest and "=" not in rest[0] else "dsb2018-fluo"
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
    ]
    sets = ["model.instance_head=contact", *rest]
    cmds = {
        "base": base + ["--out", str(out / name / "base"), "--set", "model.instance_head=none"],
        "head": base + ["--out", str(out / name / "head")] + [a for kv in sets for a in ("--set", kv)],
    }
    print(name, run_side_by_side(cmds, out / name / "logs", print), flush=True)
    rows: dict[str, list[dict]] = {}
    doc = {"dataset": name, "minutes": float(minutes), "head_settings": sets, "arms": {}}
    for arm in cmds:
        q = json.loads((out / name / arm / "quality.json").read_text())
        r = next(x for x in q["results"] if x["method"] == "qmed")
        preds = Path(r["pred_dir"])
        rows[f"{arm} cc"] = evaluate_folders(preds, val, n_boot=0, instances=True)[1]
        rows[f"{arm} split"] = evaluate_folders(preds / "instances", val, n_boot=0, pred_kind="labels")[1]
        doc["arms"][arm] = {"work": r["work"], "pred_dir": str(preds)}
        print(f"  {arm}: {r['work']}", flush=True)
    print(f"  {'way':<12}" + "".join(f"{k:>14}" for k in KEYS))
    for way, rs in rows.items():
        doc["arms"][way.split()[0]][way.split()[1]] = {k: mean(rs, k) for k in KEYS}
        print(f"  {way:<12}" + "".join(f"{mean(rs, k):>14.4f}" for k in KEYS), flush=True)
    doc["paired"] = {}
    for a, b, key in (
        ("head split", "head cc", "map_dsb"),
        ("head split", "head cc", "aji"),
        ("head cc", "base cc", "dice_empty1"),
        ("head split", "base split", "map_dsb"),
        ("head split", "base split", "aji"),
        ("base split", "base cc", "map_dsb"),
    ):
        d = paired_difference(rows[a], rows[b], key=key)
        doc["paired"][f"{a} - {b}: {key}"] = d
        print(
            f"  {a} - {b}, {key}: {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] n={d['n']} "
            f"better {d['better']} worse {d['worse']}",
            flush=True,
        )
    write_json(out / "instance_head.json", doc)


if __name__ == "__main__":
    main()
