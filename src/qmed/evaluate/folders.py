"""Score a folder of predictions against a folder of ground-truth masks.

Predictions: PRED_DIR/NAME.{png,tif,tiff,jpg,jpeg,bmp}, one per ground-truth mask: binary masks
(0/1, 0/255, 0/65535), probability maps (8-bit /255, 16-bit /65535, float in [0, 1]) or instance
label maps (integers 1..N, 0 = background: `qmed predict --instances`, Cellpose, StarDist).
`pred_kind` says which (io.images.PREDICTION_KINDS): "auto" (the default) decides per file with
io.images.prediction_kind (one non-zero value: a mask; several, piecewise constant one piece per
value: labels; else a probability map) and the summary records what it decided ("pred_kinds").
Foreground: mask = non-zero, probability = value > threshold (default 0.5), labels = label > 0.

Objects: a label map's own labels; for masks and probability maps the 8-connected components.
With label maps among the predictions (or `instances`), the instance figures of
metrics.instance_scores (DSB2018 mean AP, PQ/DQ/SQ, count error) are reported too.

Ground truth: a dataset folder (TRUTH_DIR/images + TRUTH_DIR/masks, paired by find_pairs), a
folder with only a masks/ subfolder, or a folder that directly holds the masks.

The CLI calls evaluate_folders first and write_outputs only after it returned, so a failed
evaluation leaves no output files behind.

`qmed predict` leaves PRED_DIR/predict.json (PREDICTION_META: checkpoint, TTA views, threshold,
tile); when it is there the summary carries it as "predictions" and the table's caption names it,
so a figure always says which setting produced it (e.g. TTA vs the run report's no-TTA score).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from qmed.data.dataset import IMAGE_DIR_NAMES, MASK_DIR_NAMES, find_pairs, list_images, mask_stem
from qmed.errors import QmedInputError
from qmed.evaluate.metrics import BF1_TOL, CONVENTIONS, INSTANCE_KEYS, SMALL_MAX_SIZE, score_image, summarize
from qmed.io.files import json_safe, write_json, write_text
from qmed.io.images import PREDICTION_KINDS, is_image_file, prediction_kind, read_mask, read_prediction

log = logging.getLogger("qmed")

# Written by qmed.segment.predict.predict_folder beside the masks; not an image, so never a prediction.
PREDICTION_META = "predict.json"
# The files qmed predict writes beside the masks (scales.json with --rescale): never predictions.
PREDICT_RECORDS = (PREDICTION_META, "scales.json")
KIND_WORDS = {
    "labels": ("label map", "label maps"),
    "mask": ("binary mask", "binary masks"),
    "probability": ("probability map", "probability maps"),
}


def describe_kinds(kinds: dict, asked: str = "auto") -> str:
    """'3 label maps, 1 binary mask (--pred-kind auto)': how the prediction files were read."""
    parts = [f"{n} {KIND_WORDS[k][n != 1]}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]) if n]
    return f"{', '.join(parts) or 'no files'} (--pred-kind {asked})"


def read_prediction_meta(pred_dir: str | Path) -> dict | None:
    """PRED_DIR/predict.json as a dict, or None when absent or unreadable (a warning then)."""
    path = Path(pred_dir) / PREDICTION_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: ignored, not readable as JSON (%s)", path, type(exc).__name__)
        return None
    return meta if isinstance(meta, dict) else None


def describe_predictions(meta: dict) -> str:
    """One line naming the setting behind a score: 'TTA 7 views, threshold 0.5, tile 1024 px, from RUN/checkpoints/best.pt'."""
    tta = int(meta.get("tta") or 1)
    parts = [f"TTA {tta} views" if tta > 1 else "no TTA"]
    if meta.get("threshold") is not None:
        parts.append(f"threshold {meta['threshold']:g}")
    if meta.get("tile"):
        parts.append(f"tile {meta['tile']} px")
    if meta.get("rescale"):
        parts.append("rescaled")
    if meta.get("kind") == "labels":
        parts.append("watershed label maps")
    text = ", ".join(parts)
    return f"{text}, from {meta['checkpoint']}" if meta.get("checkpoint") else text


def _truth_masks(truth_dir: Path) -> list[tuple[str, Path]]:
    """(name, mask path) of every ground-truth mask, sorted by name."""
    if truth_dir.is_file() or any((truth_dir / d).is_dir() for d in IMAGE_DIR_NAMES):
        return [(p.name, p.mask) for p in find_pairs(truth_dir)]
    if not truth_dir.is_dir():
        raise QmedInputError(truth_dir, "ground-truth folder does not exist")
    mask_dir = next((truth_dir / d for d in MASK_DIR_NAMES if (truth_dir / d).is_dir()), truth_dir)
    masks = list_images(mask_dir)
    if not masks:
        raise QmedInputError(mask_dir, "folder holds no ground-truth masks")
    return sorted((m.stem, m) for m in masks)


def _prediction_files(pred_dir: Path) -> dict[str, Path]:
    if not pred_dir.exists():
        raise QmedInputError(pred_dir, "prediction folder does not exist")
    files = list_images(pred_dir, warn=False)
    # qmed predict's own records beside the masks are expected (and NAME.csv object tables beside
    # the label maps of qmed predict --instances); anything else is worth a word.
    stems = {f.stem for f in files}
    other = sorted(
        q.name
        for q in pred_dir.iterdir()
        if q.is_file()
        and not q.name.startswith(".")
        and not is_image_file(q)
        and q.name not in PREDICT_RECORDS
        and not (q.suffix.lower() == ".csv" and q.stem in stems)
    )
    if other:
        log.warning(
            "%s: ignoring %d non-image file(s): %s",
            pred_dir,
            len(other),
            ", ".join(other[:5]) + (" ..." if len(other) > 5 else ""),
        )
    if not files:
        raise QmedInputError(
            pred_dir, "prediction folder holds no images (expected NAME.png/.tif per ground-truth mask)"
        )
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem:  # NAME.png and NAME.tif: refuse to guess which one was meant
            raise QmedInputError(f, f"a second prediction named {f.stem!r} (also {by_stem[f.stem].name})")
        by_stem[f.stem] = f
    return by_stem


def evaluate_folders(
    pred_dir: str | Path,
    truth_dir: str | Path,
    threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    pred_kind: str = "auto",
    instances: bool = False,
) -> tuple[dict, list[dict]]:
    """Score every ground-truth mask against its prediction.

    Returns (summary, rows): summary as metrics.summarize plus "settings" (pred_kind and
    instances among them), "pred_kinds" ({kind: number of files read as it}) and "predictions"
    (what PRED_DIR/predict.json says made them, when qmed predict wrote them); one row per image
    ("name", "pred_kind" + metrics.score_image figures, the instance figures too when reported),
    sorted by name. Raises QmedInputError naming the file for: a missing or empty prediction
    folder, a truth mask without a prediction, a prediction whose size differs from its truth,
    NaN/inf or out-of-range values in a probability map. Predictions without a truth mask are
    ignored with a warning."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    if not 0.0 <= threshold < 1.0:
        raise QmedInputError(None, f"threshold must be in [0, 1), got {threshold}")
    if pred_kind not in PREDICTION_KINDS:
        raise QmedInputError(None, f"--pred-kind must be one of {', '.join(PREDICTION_KINDS)}, got {pred_kind!r}")
    truths = _truth_masks(truth_dir)
    preds = _prediction_files(pred_dir)

    # Pair everything before reading any pixels, so a missing file fails fast.
    pairs, used = [], set()
    missing = []
    for name, mask in truths:
        key = name if name in preds else mask_stem(name)  # masks may be NAME_mask.png
        if key not in preds:
            missing.append((name, mask))
            continue
        pairs.append((key, mask, preds[key]))
        used.add(key)
    if missing:
        name, mask = missing[0]
        more = f" ({len(missing)} masks lack a prediction)" if len(missing) > 1 else ""
        raise QmedInputError(mask, f"ground-truth mask has no prediction {name}.* in {pred_dir}{more}")
    extra = sorted(set(preds) - used)
    if extra:
        log.warning(
            "%s: ignoring %d prediction(s) without ground truth: %s",
            pred_dir,
            len(extra),
            ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""),
        )

    rows, kinds, not_labels = [], {}, []
    for name, mask, pred_path in pairs:
        truth_fg, truth_labels = read_mask(mask)
        kind, pred = read_prediction(pred_path, pred_kind)  # refuses NaN/inf and values outside [0, 1]
        kinds[kind] = kinds.get(kind, 0) + 1
        if pred_kind == "labels" and prediction_kind(pred) == "probability":  # told labels, but not their pattern
            not_labels.append((pred_path, int(np.unique(pred[pred > 0]).size)))
        if pred.shape != truth_fg.shape:
            raise QmedInputError(
                pred_path,
                f"prediction is {pred.shape[1]}x{pred.shape[0]} but its ground truth {mask.name} is {truth_fg.shape[1]}x{truth_fg.shape[0]}",
            )
        if kind == "labels":
            row = score_image(None, truth_fg, truth_labels, pred_labels=pred)
        else:
            fg = pred if kind == "mask" else pred > threshold
            if kind == "probability" and not fg.any() and pred.max() > 0 and np.unique(pred).size > 2:
                # An instance label map (1..N) read as a probability map scores as empty: say so.
                log.warning(
                    "%s: non-zero values but none above threshold %g (max %.3g); scored as an empty prediction. "
                    "If this is an instance label map, pass --pred-kind labels",
                    pred_path,
                    threshold,
                    pred.max(),
                )
            row = score_image(fg, truth_fg, truth_labels, instances=True)
        rows.append({"name": name, "pred_kind": kind, **row})
    if not_labels:
        path, n_values = not_labels[0]
        log.warning(
            "%s: %d of %d predictions read as label maps (--pred-kind labels) look like probability maps "
            "(e.g. %s: %d distinct values that do not form one region each); their scores mean nothing: "
            "use --pred-kind probability or auto",
            pred_dir,
            len(not_labels),
            len(pairs),
            path.name,
            n_values,
        )
    report_instances = bool(instances or kinds.get("labels"))
    if not report_instances:  # computed on the way (cheap), reported only when asked or label maps came
        rows = [{k: v for k, v in r.items() if k not in INSTANCE_KEYS} for r in rows]
    if kinds.get("probability") and kinds.get("labels"):  # (masks mix with either: empty or one-object files)
        log.warning(
            "%s: predictions read as %s; pass --pred-kind to read them all one way", pred_dir, describe_kinds(kinds)
        )
    summary = summarize(rows, n_boot=n_boot, seed=seed)
    if n_boot == 0:  # no intervals asked for: null, never a zero-width "interval"
        for v in summary.values():
            if isinstance(v, dict) and "ci_low" in v:
                v["ci_low"] = v["ci_high"] = None
    summary["settings"] = {
        "pred_dir": str(pred_dir),
        "truth_dir": str(truth_dir),
        "threshold": threshold,
        "n_boot": n_boot,
        "seed": seed,
        "pred_kind": pred_kind,
        "instances": report_instances,
    }
    summary["pred_kinds"] = kinds
    meta = read_prediction_meta(pred_dir)
    if meta is not None:
        summary["predictions"] = {**meta, "description": describe_predictions(meta)}
    return summary, rows


def default_csv_path(out_json: str | Path) -> Path:
    """results.json -> results.per_image.csv (same folder)."""
    out_json = Path(out_json)
    return out_json.with_name(out_json.stem + ".per_image.csv")


def write_outputs(
    summary: dict, rows: list[dict], out_json: str | Path, out_csv: str | Path | None = None
) -> tuple[Path, Path]:
    """Write OUT.json ({summary, conventions, per_image}; undefined figures as null) and the
    per-image CSV (default OUT.per_image.csv; undefined figures as empty cells), each atomically.
    Both texts are built before either file is written. Returns (json path, csv path)."""
    out_json = Path(out_json)
    out_csv = default_csv_path(out_json) if out_csv is None else Path(out_csv)
    doc = {"summary": summary, "conventions": CONVENTIONS, "per_image": rows}
    buf = io.StringIO()
    fields = ["name"] + [k for k in (rows[0] if rows else {}) if k != "name"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in json_safe(r).items()})
    write_json(out_json, doc)  # strict JSON, like every JSON qmed writes
    write_text(out_csv, buf.getvalue())
    return out_json, out_csv


def _fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def scored_caption(summary: dict) -> str:
    """What was scored: the predict.json setting when qmed predict made the predictions."""
    st = summary.get("settings") or {}
    pred = summary.get("predictions") or {}
    where = f"{summary.get('n_images', 0)} images of {st.get('pred_dir', '?')}"
    read = (
        f"; read as {describe_kinds(summary['pred_kinds'], st.get('pred_kind', 'auto'))}"
        if summary.get("pred_kinds")
        else ""
    )
    if pred.get("description"):
        return f"predictions: {pred['description']} ({where}){read}"
    return f"predictions: {where}, foreground = probability > {st.get('threshold', 0.5):g} (no {PREDICTION_META}: not made by qmed predict){read}"


def summary_table(summary: dict):
    """A rich Table: metric, value, 95% CI, n. The three Dice figures are separate, labelled rows."""
    from rich.table import Table

    with_ci = (summary.get("settings") or {}).get("n_boot") != 0  # --n-boot 0: no intervals, and no CI column
    caption = scored_caption(summary) + ("" if with_ci else "; no confidence intervals (--n-boot 0)")
    table = Table(title="Evaluation", caption=caption)
    for col, just in (("Metric", "left"), ("Value", "right"), ("95% CI", "right"), ("n", "right")):
        if with_ci or col != "95% CI":
            table.add_column(col, justify=just)

    def per_image(label: str, key: str, digits: int = 4, n_note: str = "") -> None:
        a = summary.get(key) or {}
        ci = "n/a" if a.get("n", 0) == 0 else f"[{_fmt(a.get('ci_low'), digits)}, {_fmt(a.get('ci_high'), digits)}]"
        table.add_row(label, _fmt(a.get("mean"), digits), *([ci] if with_ci else []), f"{a.get('n', 0)}{n_note}")

    def pooled(label: str, value, n) -> None:
        table.add_row(label, _fmt(value), *([""] if with_ci else []), str(n))

    n_img = summary.get("n_images", 0)
    per_image("Dice, per image, empty=1 (paper)", "dice_mean_empty1")
    per_image("Dice, per image, foreground images (nnU-Net/MONAI)", "dice_mean_fg")
    pooled("Dice, pooled over pixels", summary.get("dice_pooled"), n_img)
    fpe = summary.get("fp_empty_counts", {})
    pooled("FP rate on empty images (any foreground predicted)", summary.get("fp_rate_empty"), fpe.get("n_empty", 0))
    pooled("FP pixel fraction on empty images", fpe.get("mean_fp_fraction"), fpe.get("n_empty", 0))
    per_image("IoU, per image, foreground images", "iou_mean_fg")
    per_image("Precision (pixels, per image)", "precision")
    per_image("Recall (pixels, per image)", "recall")
    hd = summary.get("hd95") or {}
    per_image("HD95 (px)", "hd95", 2, f" (+{hd['n_undefined']} undefined)" if hd.get("n_undefined") else "")
    per_image(f"Boundary F1 @{BF1_TOL}px", "boundary_f1")
    oc = summary.get("object_counts", {})
    pooled("Object recall (IoU>=0.5)", summary.get("object_recall"), oc.get("tp", 0) + oc.get("fn", 0))
    pooled("Object precision (IoU>=0.5)", summary.get("object_precision"), oc.get("tp", 0) + oc.get("fp", 0))
    pooled("Object F1 (IoU>=0.5)", summary.get("object_f1"), n_img)
    sc = summary.get("small_object_counts", {})
    pooled(f"Small-object recall (<{SMALL_MAX_SIZE} px)", summary.get("small_object_recall"), sc.get("n_small", 0))
    per_image("AJI", "aji")
    if "map_dsb" in summary:
        per_image("Mean AP, IoU 0.5:0.95 (DSB2018), per image", "map_dsb")
        per_image("AP at IoU 0.5, per image", "ap50")
        per_image("AP at IoU 0.75, per image", "ap75")
        per_image("PQ = DQ x SQ (IoU>=0.5), per image", "pq")
        per_image("DQ (per-image object F1)", "dq")
        per_image("SQ (mean IoU of matches)", "sq")
        per_image("Count error, predicted - truth objects", "count_error", 2)
        per_image("Count error, absolute", "count_abs_error", 2)
    return table
