"""Run reports: the paper's Fig. 2 (training curves) and Fig. 3 (qualitative panels), the metrics
table of SPEC section 3 with confidence intervals, best and worst cases, rejected epochs.

`qmed report RUN_DIR` writes RUN_DIR/report.md (figures beside it in RUN_DIR/figures/) and a
self-contained RUN_DIR/report.html (figures embedded as base64), both atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import numpy as np

from qmed.errors import QmedInputError
from qmed.evaluate.folders import describe_predictions
from qmed.io.figures import pyplot, save_figure
from qmed.io.files import write_json, write_text

DICE_TARGETS = (0.94, 0.95)


def read_metrics_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise QmedInputError(path, "metrics.csv not found; is this a qmed run directory?")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    return [{k: (v if k == "restored" else num(v)) for k, v in r.items()} for r in rows]


def selection_label(train_cfg) -> str:
    """The rule that selected best.pt (train.selection), in words."""
    return {
        "ema": "EMA",
        "ema_debiased": "bias-corrected EMA",
        "window": f"mean of the last {train_cfg.selection_window} epochs",
    }[train_cfg.selection]


def plot_curves(rows: list[dict], path: Path, selection: str = "EMA") -> Path:
    """Loss, Dice (with 94 % and 95 % lines, the selection score, rejected epochs) and IoU per epoch."""
    plt = pyplot()
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.0))
    ax = axes[0]
    ax.plot(ep, [r["train_loss"] for r in rows], "o-", label="total")
    for key, lab in (("loss_dice", "Dice term"), ("loss_bce", "BCE term"), ("loss_tversky", "Tversky term")):
        if any(np.isfinite(r.get(key, np.nan)) for r in rows):
            ax.plot(ep, [r.get(key, np.nan) for r in rows], "--", alpha=0.7, label=lab)
    ax.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    ax = axes[1]
    ax.plot(ep, [r["val_dice_empty1"] for r in rows], "o-", label="per image, empty=1 (paper)")
    ax.plot(ep, [r["val_dice_fg"] for r in rows], "s-", label="per image, foreground images")
    ax.plot(ep, [r["val_dice_pooled"] for r in rows], "^-", label="pooled over pixels")
    ax.plot(ep, [r["val_ema"] for r in rows], "k-", lw=2, label=f"{selection} (selects best.pt)")
    # The targets are 1 point apart (a few px at this size): labels outside the right edge, the
    # highest above its line and the others below theirs, so they never overlap each other or a curve.
    for t in DICE_TARGETS:
        ax.axhline(t, color="gray", ls=":", lw=1)
        ax.annotate(
            f"{t:.0%}",
            xy=(1.0, t),
            xycoords=("axes fraction", "data"),
            xytext=(3, 1 if t == max(DICE_TARGETS) else -1),
            textcoords="offset points",
            ha="left",
            va="bottom" if t == max(DICE_TARGETS) else "top",
            fontsize=8,
            color="gray",
            annotation_clip=False,
        )
    outl = [r for r in rows if r.get("outlier") == 1]
    if outl:
        ax.scatter(
            [r["epoch"] for r in outl],
            [r["val_score"] for r in outl],
            marker="x",
            s=80,
            c="red",
            label="rejected (outlier)",
            zorder=5,
        )
    best = [r for r in rows if r.get("selected") == 1]
    if best:
        ax.axvline(best[-1]["epoch"], color="green", ls="--", lw=1, label=f"best.pt (epoch {int(best[-1]['epoch'])})")
    ax.set(title="validation Dice", xlabel="epoch", ylabel="Dice", ylim=(0, 1.02))
    # Below the axes, so it never hides a curve (the Dice curves fill the upper right late in a run).
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax = axes[2]
    ax.plot(ep, [r["val_iou_fg"] for r in rows], "o-", color="purple")
    ax.set(title="validation IoU (foreground images)", xlabel="epoch", ylabel="IoU", ylim=(0, 1.02))
    fig.tight_layout()
    return save_figure(fig, path)


def select_cases(rows: list[dict], k: int = 4) -> dict:
    """Best and worst k images by Dice over images with foreground, and the empty image with the most
    false-positive pixels (None when no image has empty ground truth). Ties break by name."""
    fg = [r for r in rows if not r.get("truth_empty") and r.get("dice") is not None and not math.isnan(r["dice"])]
    ordered = sorted(fg, key=lambda r: (r["dice"], r["name"]))
    worst = ordered[:k]
    best = sorted(ordered[-k:], key=lambda r: (-r["dice"], r["name"])) if ordered else []
    empties = [r for r in rows if r.get("truth_empty")]
    empty_fp = max(empties, key=lambda r: (r.get("fp", 0), r["name"])) if empties else None
    return {"best": best, "worst": worst, "empty_fp": empty_fp}


def _stretch(img: np.ndarray) -> np.ndarray:
    """Contrast-enhanced display (1st-99.5th percentile), as the paper's panels show the input."""
    lo, hi = np.percentile(img, (1, 99.5))
    return np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else img


def plot_case(img: np.ndarray, truth: np.ndarray, prob: np.ndarray, threshold: float, title: str, path: Path) -> Path:
    """Input, ground truth, probability heat-map, overlay, error map (FP red, FN blue)."""
    plt = pyplot()
    pred = prob > threshold
    disp = _stretch(img if img.shape[2] == 3 else np.repeat(img, 3, axis=2))
    overlay = disp.copy()
    overlay[pred] = 0.55 * overlay[pred] + 0.45 * np.array([0.0, 1.0, 0.0])
    err = np.zeros(truth.shape + (3,))
    err[pred & truth] = (0.85, 0.85, 0.85)
    err[pred & ~truth] = (1.0, 0.0, 0.0)
    err[~pred & truth] = (0.0, 0.3, 1.0)
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    panels = [
        (disp, "input (contrast enhanced)", None),
        (truth, "ground truth", "gray"),
        (prob, "probability", "jet"),
        (overlay, "prediction overlay", None),
        (err, "errors: FP red, FN blue", None),
    ]
    for ax, (a, t, cmap) in zip(axes, panels):
        im = ax.imshow(a, cmap=cmap, vmin=0, vmax=1) if cmap else ax.imshow(a)
        if cmap == "jet":
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def label_colours(labels: np.ndarray) -> np.ndarray:
    """Instance label map -> RGB, one fixed random colour per label, background black."""
    from skimage.color import label2rgb

    return (
        label2rgb(labels, bg_label=0, bg_color=(0, 0, 0), colors=_PALETTE)
        if labels.any()
        else np.zeros(labels.shape + (3,))
    )


# A fixed palette (seeded), so a report draws the same colours every time it is built.
_PALETTE = [tuple(c) for c in np.random.default_rng(0).uniform(0.25, 1.0, size=(64, 3))]


def plot_instances(img: np.ndarray, truth_labels: np.ndarray, pred_labels: np.ndarray, title: str, path: Path) -> Path:
    """Input, ground-truth objects and predicted objects (each object its own colour), and the
    predicted objects' outlines on the input."""
    from skimage.segmentation import find_boundaries

    plt = pyplot()
    disp = _stretch(img if img.shape[2] == 3 else np.repeat(img, 3, axis=2))
    outline = disp.copy()
    outline[find_boundaries(pred_labels, mode="inner")] = (1.0, 1.0, 0.0)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.9))
    n_t, n_p = len(np.unique(truth_labels[truth_labels > 0])), len(np.unique(pred_labels[pred_labels > 0]))
    panels = [
        (disp, "input (contrast enhanced)"),
        (label_colours(truth_labels), f"ground-truth objects ({n_t})"),
        (label_colours(pred_labels), f"predicted objects ({n_p})"),
        (outline, "predicted outlines"),
    ]
    for ax, (a, t) in zip(axes, panels):
        ax.imshow(a)
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_histogram(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    d = [r["dice"] for r in rows if r.get("dice") is not None and not math.isnan(r["dice"])]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.hist(d, bins=np.linspace(0, 1, 41), color="steelblue", edgecolor="white")
    ax.set(title=f"per-image Dice, images with foreground (n={len(d)})", xlabel="Dice", ylabel="images")
    fig.tight_layout()
    return save_figure(fig, path)


def _ci(d: dict | float | None) -> tuple[str, str, str]:
    if isinstance(d, dict):
        f = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
        return (
            f(d.get("mean"))
            + (f" ± {d['std']:.4f}" if isinstance(d.get("std"), float) and not math.isnan(d["std"]) else ""),
            f"[{f(d.get('ci_low'))}, {f(d.get('ci_high'))}]",
            str(d.get("n", "")),
        )
    return ("-" if d is None or (isinstance(d, float) and math.isnan(d)) else f"{d:.4f}"), "", ""


METRIC_ROWS = [
    ("dice_mean_empty1", "Dice, per image, empty=1 (paper)"),
    ("dice_mean_fg", "Dice, per image, foreground images (nnU-Net/MONAI)"),
    ("dice_pooled", "Dice, pooled over pixels"),
    ("iou_mean_fg", "IoU, per image, foreground images"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("hd95", "HD95 (px)"),
    ("boundary_f1", "boundary F1 @3 px"),
    ("object_recall", "object recall (IoU >= 0.5)"),
    ("object_precision", "object precision (IoU >= 0.5)"),
    ("small_object_recall", "small-object recall (< 50 px)"),
    ("aji", "AJI"),
    ("fp_rate_empty", "FP rate on empty images"),
]

# The objects table: instances split from the probability map (qmed.segment.instances), as
# `qmed predict --instances` writes them, scored against the ground truth's objects.
INSTANCE_ROWS = [
    ("map_dsb", "mean AP, IoU 0.5:0.05:0.95 (DSB 2018)"),
    ("ap50", "AP at IoU 0.5"),
    ("ap75", "AP at IoU 0.75"),
    ("pq", "panoptic quality PQ"),
    ("aji", "AJI"),
    ("count_error", "count error per image (predicted - true)"),
    ("count_abs_error", "absolute count error per image"),
]


def metrics_markdown(summary: dict, rows: list[tuple[str, str]] = METRIC_ROWS) -> str:
    lines = ["| metric | mean ± std | 95 % CI (bootstrap) | n |", "|---|---|---|---|"]
    for key, label in rows:
        if key in summary:
            v, ci, n = _ci(summary[key])
            lines.append(f"| {label} | {v} | {ci} | {n} |")
    return "\n".join(lines)


def build_report(
    run_dir: str | Path, data: str | Path | None = None, tta: bool = False, device: str | None = None, k: int = 4
) -> Path:
    """Predict the validation (or given) images with the run's best model, score them, draw, write."""
    from qmed.config import dump_yaml
    from qmed.data.batches import LoadedPairs
    from qmed.data.dataset import find_pairs
    from qmed.evaluate.metrics import score_image, summarize
    from qmed.runtime import pick_device
    from qmed.segment.checkpoint import load_model
    from qmed.segment.instances import split_instances
    from qmed.segment.validate import validate

    run = Path(run_dir)
    if not (run / "run.json").is_file():
        raise QmedInputError(run, "is not a qmed run directory (no run.json)")
    meta = json.loads((run / "run.json").read_text())
    data = Path(data) if data else (Path(meta["val"]) if meta.get("val") else None)
    split = meta.get("val_split") if data is None else None
    if data is None and not split:
        raise QmedInputError(run, "the run had no --val folder; pass --data VAL_OR_TEST_DIR")
    curves = read_metrics_csv(run / "metrics.csv")
    dev = pick_device(device)
    model, cfg, ckpt = load_model(run, dev)
    if split:  # the images split off --data for validation (run.json), as the run validated on them
        names = set(split)
        pairs = LoadedPairs([p for p in find_pairs(meta["train"]) if p.name in names], cfg)
        data = f"{meta['train']} (the {len(pairs)} images split off for validation)"
    else:
        pairs = LoadedPairs(find_pairs(data), cfg)
    n_views = cfg.predict.tta if tta else 1
    summary, rows, probs = validate(model, pairs, cfg, dev, tta=n_views, n_boot=2000, keep_probs=True)
    figs = run / "figures"
    figs.mkdir(exist_ok=True)
    written = [
        plot_curves(curves, figs / "curves.png", selection_label(cfg.train)),
        plot_histogram(rows, figs / "dice_hist.png"),
    ]
    # No diameter: each image's own, as `qmed predict --instances` splits (the one training diameter did worse; design.md "Instances").
    # With an instance head (probs[i] has a contact channel), split as predict does with it.
    labels = [
        split_instances(
            probs[i][0].astype(np.float32),
            cfg.predict.threshold,
            contact=probs[i][1].astype(np.float32) if len(probs[i]) > 1 else None,
        )
        for i in range(len(rows))
    ]
    inst_rows = [score_image(None, pairs[i][1], pairs[i][2], pred_labels=labels[i]) for i in range(len(rows))]
    inst_summary = summarize(inst_rows, n_boot=2000)
    cases = select_cases(rows, k)
    index = {r["name"]: i for i, r in enumerate(rows)}
    case_figs = []
    for kind in ("best", "worst"):
        for rank, r in enumerate(cases[kind], 1):
            i = index[r["name"]]
            img, fg, _ = pairs[i]
            p = plot_case(
                img,
                fg,
                probs[i][0].astype(np.float32),
                cfg.predict.threshold,
                f"{kind} {rank}: {r['name']}  Dice {r['dice']:.4f}",
                figs / f"{kind}_{rank}.png",
            )
            case_figs.append((f"{kind} {rank}: {r['name']} (Dice {r['dice']:.4f})", p))
            if rank == 1 and (labels[i].any() or pairs[i][2].any()):
                ir = inst_rows[i]
                p = plot_instances(
                    img,
                    pairs[i][2],
                    labels[i],
                    f"{kind} 1: {r['name']}  mean AP {ir['map_dsb']:.3f}, "
                    f"{ir['n_pred']} objects found, {ir['n_truth']} true",
                    figs / f"{kind}_1_objects.png",
                )
                case_figs.append(
                    (
                        f"{kind} 1, objects: {r['name']} (mean AP {ir['map_dsb']:.3f}, {ir['n_pred']} found / {ir['n_truth']} true)",
                        p,
                    )
                )
    if cases["empty_fp"] is not None:
        r = cases["empty_fp"]
        i = index[r["name"]]
        img, fg, _ = pairs[i]
        p = plot_case(
            img,
            fg,
            probs[i][0].astype(np.float32),
            cfg.predict.threshold,
            f"empty image with most false positives: {r['name']} ({r.get('fp', 0)} px)",
            figs / "empty_fp.png",
        )
        case_figs.append((f"empty image with most false positives: {r['name']} ({r.get('fp', 0)} FP px)", p))
    scoring = {
        "checkpoint": rel_or_abs(ckpt, run),
        "tta": n_views,
        "threshold": cfg.predict.threshold,
        "tile": cfg.predict.tile,
    }
    # "checkpoints/best.pt, no TTA, threshold 0.5, tile 1024 px": the same words as qmed evaluate's caption.
    scoring["description"] = f"{scoring['checkpoint']}, " + describe_predictions({**scoring, "checkpoint": None})
    if not summary.get("fp_empty_counts", {}).get("n_empty"):  # null in the JSON: say why beside it
        summary["fp_rate_empty_note"] = "undefined: no scored image has an empty ground truth"
    write_json(
        run / "report_metrics.json",
        {
            "data": str(data),
            "tta": n_views,
            "checkpoint": str(ckpt),
            "threshold": cfg.predict.threshold,
            "scoring": scoring,
            "summary": summary,
            "per_image": rows,
            "instances": {
                "method": "watershed split of the probability map (qmed.segment.instances)",
                "summary": {k: inst_summary[k] for k, _ in INSTANCE_ROWS if k in inst_summary},
                "per_image": [
                    {
                        "name": r["name"],
                        **{
                            k: ir.get(k)
                            for k in ("map_dsb", "ap50", "ap75", "pq", "aji", "n_pred", "n_truth", "count_error")
                        },
                    }
                    for r, ir in zip(rows, inst_rows)
                ],
            },
        },
    )
    outliers = [r for r in curves if r.get("outlier") == 1]
    restored = [r for r in curves if r.get("restored")]
    fp_path = run / "fingerprint.json"
    fingerprint = json.loads(fp_path.read_text()) if fp_path.is_file() else {}
    md = _markdown(
        run,
        cfg,
        dump_yaml(cfg),
        fingerprint,
        summary,
        curves,
        outliers,
        restored,
        written,
        case_figs,
        data,
        n_views,
        ckpt,
        scoring["description"],
        inst_summary,
    )
    write_text(run / "report.md", md)
    write_text(run / "report.html", _html(md, run))
    return run / "report.md"


def rel_or_abs(path: str | Path, run: Path) -> str:
    """`path` relative to the run directory (checkpoints/best.pt) when inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(Path(run).resolve()).as_posix()
    except ValueError:
        return str(path)


def _markdown(
    run,
    cfg,
    cfg_yaml,
    fp,
    summary,
    curves,
    outliers,
    restored,
    figs,
    case_figs,
    data,
    n_views,
    ckpt,
    scoring,
    inst_summary: dict,
) -> str:
    rel = lambda p: Path(p).relative_to(run).as_posix()  # noqa: E731
    best = [r for r in curves if r.get("selected") == 1]
    if best:
        chosen = f"epoch {int(best[-1]['epoch'])} selected by the {selection_label(cfg.train)} of validation Dice"
    else:  # data.val_fraction=0 and no --val: nothing was scored during training, so nothing was selected
        last = (
            f", epoch {int(curves[-1]['epoch'])}" if curves and math.isfinite(curves[-1].get("epoch", math.nan)) else ""
        )
        chosen = f"no validation ran during training, so no epoch was selected: the last epoch's weights{last}"
    out = [
        f"# qmed run report: {run.name}",
        "",
        f"Model `{cfg.model.encoder}` {cfg.model.arch} (input: {cfg.model.input_mode}), preset `{cfg.name}`; "
        f"checkpoint `{rel(ckpt)}` ({chosen}); "
        f"scored on `{data}` ({summary['n_images']} images, {summary['n_empty_truth']} with empty ground truth), "
        f"{f'TTA {n_views} views' if n_views > 1 else 'no TTA'}, threshold {cfg.predict.threshold:g}.",
        "",
        "## Metrics",
        "",
        f"Scored on {summary['n_images']} images of `{data}`: {scoring}. "
        + (
            f"`qmed predict --tta` + `qmed evaluate` score with TTA ({cfg.predict.tta} views) and give a different figure; "
            f"`qmed report {run} --tta` scores that way."
            if n_views <= 1
            else "`qmed predict --tta` + `qmed evaluate` with the run's threshold and tile score the same setting."
        ),
        "",
        metrics_markdown(summary),
        "",
        "Dice on an image whose ground truth and prediction are both empty is undefined; the three Dice rows "
        "show the conventions side by side.",
        "",
        "## Objects",
        "",
        "Each predicted object is split from the probability map by a marker-controlled watershed on the distance "
        "transform (what `qmed predict --instances` writes) and matched to the ground truth's objects "
        "(8-connected components of the mask, or its labels).",
        "",
        metrics_markdown(inst_summary, INSTANCE_ROWS),
        "",
        "## Training curves",
        "",
        f"![training curves]({rel(figs[0])})",
        "",
        "## Per-image Dice",
        "",
        f"![Dice histogram]({rel(figs[1])})",
        "",
        "## Rejected epochs",
        "",
    ]
    if outliers:
        out += [
            f"- epoch {int(r['epoch'])}: validation Dice {r['val_score']:.4f} rejected as an outlier" for r in outliers
        ]
    else:
        out.append("No validation epoch was rejected by the outlier rule.")
    out += [f"- {r['restored']}" for r in restored if r.get("restored")]
    out += ["", "## Best and worst cases", ""]
    for title, p in case_figs:
        out += [f"**{title}**", "", f"![{title}]({rel(p)})", ""]
    if fp:
        out += ["## Training data fingerprint", "", "```json", json.dumps(fp, indent=1), "```", ""]
    out += ["## Resolved configuration", "", "```yaml", cfg_yaml.rstrip(), "```", ""]
    return "\n".join(out)


def _html(md: str, run: Path) -> str:
    """Self-contained HTML: a small Markdown subset (headings, tables, images, code) with images inlined."""
    body, in_code, in_table = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            data = base64.b64encode((run / src.rstrip(")")).read_bytes()).decode()
            body.append(
                f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%"></p>'
            )
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.startswith("**") and line.endswith("**"):
            body.append(f"<h4>{html.escape(line.strip('*'))}</h4>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}pre{background:#f5f5f5;padding:8px;overflow:auto}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>qmed report</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
