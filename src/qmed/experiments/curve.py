"""`qmed curve`: data efficiency, Dice against the number of training images, qmed vs plain smp.

For each fraction f the first ceil(f·N) images of one seeded permutation of TRAIN are used (so the
subsets are nested: every image of a smaller subset is in the larger ones), listed in a CSV (no
files are copied). On each subset two methods train for the same wall-clock budget with
`qmed.experiments.common.train_to_budget`: ``qmed`` (the preset, predicted with its TTA) and ``smp`` (the
plain smp baseline of `qmed benchmark quality`, no TTA); both are scored on the whole of VAL with
`qmed.experiments.common.score` (per-image Dice with empty = 1 and its bootstrap CI, foreground-only and
pooled Dice, IoU, HD95, small-object recall). Fractions that give the same number of images are
run once.

OUT/curve.json (rewritten after every run), OUT/curve.md (the table) and OUT/curve.png (Dice,
empty = 1, with 95 % CIs, and pooled Dice against the number of training images) are written
atomically; one folder per run under OUT (e.g. OUT/qmed-n12).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qmed.config import parse_overrides, resolve_config
from qmed.errors import QmedInputError
from qmed.experiments.common import (
    result_document,
    run_guarded,
    settings_sentence,
    smp_baseline_config,
    train_to_budget,
)
from qmed.io.files import json_safe, prepare_output_dir, write_atomic, write_json, write_text
from qmed.report.tables import MD_FIGURES, compact_table, md_figures, md_table, status_text
from qmed.runtime import pick_device

DEFAULT_FRACTIONS = "0.1,0.25,0.5,1.0"


def parse_fractions(spec: str) -> list[float]:
    """'0.1,0.25,1' -> sorted unique fractions, each in (0, 1]."""
    try:
        values = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise QmedInputError(None, f"--fractions must be comma-separated numbers in (0, 1], got {spec!r}") from None
    bad = [v for v in values if not (0 < v <= 1) or not math.isfinite(v)]
    if bad or not values:
        raise QmedInputError(None, f"--fractions must be comma-separated numbers in (0, 1], got {spec!r}")
    return sorted(set(values))


def subset_sizes(n: int, fractions: list[float]) -> list[tuple[float, int]]:
    """(fraction, ceil(fraction·n), at least 1) per fraction; a size reached by an earlier fraction is skipped."""
    out, seen = [], set()
    for f in fractions:
        k = max(1, math.ceil(f * n - 1e-9))
        if k not in seen:
            seen.add(k)
            out.append((f, k))
    return out


def run_curve(
    train_dir: str | Path,
    val_dir: str | Path,
    out: str | Path,
    fractions: list[float] | None = None,
    minutes: float = 10.0,
    preset: str = "cpu",
    overrides: list[str] | None = None,
    device: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    force: bool = False,
    say: Callable = print,
) -> dict:
    """Train and score qmed and smp on every subset; write OUT/curve.{json,md,png}. Returns the JSON document."""
    from qmed.data.dataset import find_pairs, write_pairs_csv

    train_dir, val_dir, out = Path(train_dir), Path(val_dir), Path(out)
    if minutes <= 0:
        raise QmedInputError(None, f"--budget must be a positive number of minutes, got {minutes}")
    fractions = fractions or parse_fractions(DEFAULT_FRACTIONS)
    over = parse_overrides(overrides or [])
    methods = {
        "qmed": (resolve_config(preset, overrides=over), True),
        "smp": (smp_baseline_config(preset, over), False),
    }
    pairs = find_pairs(train_dir)
    find_pairs(val_dir)
    prepare_output_dir(out, force, inputs=[train_dir, val_dir], verb="curve")
    order = np.random.default_rng(seed).permutation(len(pairs))
    settings = {
        "train": str(train_dir.resolve()),
        "val": str(val_dir.resolve()),
        "n_train": len(pairs),
        "fractions": fractions,
        "minutes_per_run": minutes,
        "preset": preset,
        "overrides": list(overrides or []),
        "device": str(pick_device(device)),
        "n_boot": n_boot,
        "seed": seed,
    }
    results: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for frac, n in subset_sizes(len(pairs), fractions):
        listing = write_pairs_csv(out / "subsets" / f"n{n}.csv", [pairs[i] for i in sorted(order[:n])])
        for series, (cfg, tta) in methods.items():
            name = f"{series}-n{n}"
            say(f"[{name}] {n} of {len(pairs)} training images, {minutes:g} min budget")

            def run(cfg=cfg, tta=tta, name=name, listing=listing) -> list[dict]:
                res = train_to_budget(cfg, listing, val_dir, out / name, minutes * 60.0, device, [tta], say)
                return [{"method": name, **res, "pred_dir": res["preds"][tta]}]

            for row in run_guarded(name, run, out / name, val_dir, n_boot, seed, say):
                row.update(
                    {
                        "series": series,
                        "fraction": frac,
                        "n_images": n,
                        "tta": cfg.predict.tta if tta else 1,
                        "budget_minutes": minutes,
                    }
                )
                results.append(row)
            write_json(out / "curve.json", json_safe(result_document("curve", results, settings, started, False)))
    doc = json_safe(result_document("curve", results, settings, started, True))
    write_json(out / "curve.json", doc)
    write_text(out / "curve.md", markdown(doc))
    write_atomic(out / "curve.png", lambda p: plot(doc, p))
    return doc


COLUMNS = ["images", "fraction", "method", *(c for c, _, _ in MD_FIGURES), "train min", "status"]


def table_rows(results: list[dict]) -> list[list[str]]:
    return [
        [
            str(r["n_images"]),
            f"{r['fraction']:g}",
            r["series"],
            *md_figures(r),
            f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") is not None else "-",
            status_text(r),
        ]
        for r in results
    ]


def markdown(doc: dict) -> str:
    s = doc["settings"]
    return (
        f"# qmed curve: Dice against training images\n\n{settings_sentence(doc, s['minutes_per_run'], 'run')} {s['n_train']} "
        f"training images, nested seeded subsets; preset {s['preset']} (qmed, with TTA) vs the plain smp baseline (no TTA).\n\n"
        + md_table(COLUMNS, table_rows(doc["results"]))
    )


def rich_table(doc: dict):
    """The terminal table (80 columns); every CI and the training times are in curve.md."""
    rows = [
        ([str(r["n_images"]), r["series"] + ("" if r["status"] == "ok" else f" ({r['status']})")], r.get("figures"))
        for r in doc["results"]
    ]
    return compact_table(
        f"Dice against training images, {doc['settings']['minutes_per_run']:g} min per run", ["images", "method"], rows
    )


def plot(doc: dict, path: Path) -> None:
    """Per-image Dice (empty = 1) with its 95 % CI as error bars, and pooled Dice dashed, per method."""
    from qmed.io.figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    # log x (fractions of the set); the two series nudged apart so their error bars do not overlap
    for series, color, nudge in (("qmed", "tab:blue", 0.985), ("smp", "tab:orange", 1.015)):
        rows = [r for r in doc["results"] if r.get("series") == series and r["status"] == "ok"]
        if not rows:
            continue
        n = [r["n_images"] * nudge for r in rows]
        d = [r["figures"]["dice_empty1"] for r in rows]
        mean = np.array([x["mean"] if x["mean"] is not None else np.nan for x in d], dtype=float)
        lo = np.array([x["ci"][0] if x["ci"][0] is not None else m for x, m in zip(d, mean)], dtype=float)
        hi = np.array([x["ci"][1] if x["ci"][1] is not None else m for x, m in zip(d, mean)], dtype=float)
        ax.errorbar(
            n,
            mean,
            yerr=[mean - lo, hi - mean],
            marker="o",
            capsize=3,
            color=color,
            label=f"{series}: Dice per image (empty=1)",
        )
        pooled = [r["figures"]["dice_pooled"]["mean"] for r in rows]
        ax.plot(
            n,
            [np.nan if v is None else v for v in pooled],
            ls="--",
            marker=".",
            color=color,
            alpha=0.7,
            label=f"{series}: Dice pooled",
        )
    sizes = sorted({r["n_images"] for r in doc["results"]})
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(k) for k in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("Dice on validation")
    ax.set_title(f"Data efficiency, {doc['settings']['minutes_per_run']:g} min per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=None)
