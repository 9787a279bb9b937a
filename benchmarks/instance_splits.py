"""Ways to split one model's saved probability maps into instances, scored side by side (issue 20).

Reads the probability maps of a `qmed predict` folder (and its contact/ maps, when the model has
an instance head) and, for every image with a truth mask in TRUTH, splits them each way:
* cc: 8-connected components of the mask;
* distance: `qmed.segment.instances.split_instances` without the contact map (h-maxima of the
  distance transform);
* contact: markers = components of foreground minus contact (`seeds="components"`);
* contact+distance: markers = h-maxima of the distance to background or contact (`seeds="distance"`).
Prints mean AP (DSB2018, IoU 0.5:0.95), AJI, PQ and |count error| per way, then paired per-image
differences against the way named BASE (default cc). --h=F[,F...] adds the distance watershed (and,
with contact maps, the contact+distance split) with the marker height h = F x the image's object
diameter (the default is max(1 px, 0.05 d) for the distance watershed, 0.1 d for contact+distance).
--against=OTHER_PRED adds the way "against": another model's probability maps split as its own
`qmed predict --instances` does (the head-less default: the distance watershed), and BASE then
defaults to it, pixel Dice included (how the head is compared with no head);
--against-labels=DIR reads DIR's label maps as they are (e.g. Cellpose's). No training: seconds
per image on one core. Writes OUT.json when given.

    python benchmarks/instance_splits.py PRED_DIR TRUTH_DIR [BASE] [OUT.json] [--h=0.1,0.2] [--against=DIR | --against-labels=DIR]
"""

import sys
from pathlib import Path

import numpy as np
from instance_head import mean  # (this script's folder is on sys.path when it runs)

from qmed.data.objects import label_components, object_diameter
from qmed.evaluate.metrics import score_image
from qmed.experiments.suite import paired_difference
from qmed.io.files import write_json
from qmed.io.images import read_mask, read_prediction, read_probability
from qmed.segment.instances import H_MIN, split_instances
from qmed.segment.predict import CONTACT_DIR

KEYS = ("dice_empty1", "map_dsb", "aji", "pq", "count_error")


def ways(prob: np.ndarray, contact: np.ndarray | None, fractions: list[float]) -> dict[str, np.ndarray]:
    out = {"cc": label_components(prob > 0.5), "distance": split_instances(prob)}
    if contact is not None:
        out["contact"] = split_instances(prob, contact=contact, seeds="components")
        out["contact+distance"] = split_instances(prob, contact=contact, seeds="distance")
    d = object_diameter(out["cc"]) if fractions else 0.0
    for f in fractions:  # the marker height as other fractions of the image's object diameter
        h = max(H_MIN, f * d)
        out[f"distance h={f:g}d"] = split_instances(prob, diameter=d, h=h) if d else out["cc"]
        if contact is not None:  # the head's split (the default) at the same height
            out[f"contact+distance h={f:g}d"] = (
                split_instances(prob, diameter=d, h=h, contact=contact) if d else out["contact+distance"]
            )
    return out


def main() -> None:
    opts = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--")}
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    fractions = [float(x) for x in opts["--h"].split(",")] if "--h" in opts else []
    other = opts.get("--against") or opts.get("--against-labels")
    pred, truth = Path(args[0]), Path(args[1])
    base = args[2] if len(args) > 2 else ("against" if other else "cc")
    out = Path(args[3]) if len(args) > 3 else None
    rows: dict[str, list[dict]] = {}
    for mask in sorted((truth / "masks").iterdir()):
        p = pred / f"{mask.stem}.png"
        if not p.exists():
            continue
        c = pred / CONTACT_DIR / p.name
        truth_fg, truth_labels = read_mask(mask)
        split = ways(read_probability(p), read_probability(c) if c.exists() else None, fractions)
        if other:  # another model's maps, split as its own `qmed predict --instances` does, or its label maps
            q = Path(other) / p.name
            if "--against-labels" in opts:
                split["against"] = read_prediction(q, "labels")[1]
            else:
                qc = Path(other) / CONTACT_DIR / p.name
                split["against"] = split_instances(
                    read_probability(q), contact=read_probability(qc) if qc.exists() else None
                )
        for way, labels in split.items():
            rows.setdefault(way, []).append(
                {"name": mask.stem, **score_image(None, truth_fg, truth_labels, pred_labels=labels)}
            )
    doc = {"pred_dir": str(pred), "truth_dir": str(truth), "against": other, "ways": {}, "paired": {}}
    print(f"{'way':<18}" + "".join(f"{k:>12}" for k in KEYS) + f"   n={len(rows['cc'])}")
    for way, rs in rows.items():
        doc["ways"][way] = {k: mean(rs, k) for k in KEYS}
        print(f"{way:<18}" + "".join(f"{doc['ways'][way][k]:>12.4f}" for k in KEYS))
    for way in rows:
        if way == base:
            continue
        for key in ("map_dsb", "aji", "pq") + (("dice_empty1",) if base == "against" else ()):
            d = paired_difference(rows[way], rows[base], key=key)
            doc["paired"][f"{way} - {base}: {key}"] = d
            print(
                f"{way} - {base}, {key}: {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                f"better {d['better']} worse {d['worse']}"
            )
    if out:
        write_json(out, doc)


if __name__ == "__main__":
    main()
