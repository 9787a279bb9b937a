"""`qmed benchmark quality`: qmed against what a user would pick instead, on one budget.

Each method trains on TRAIN for the same wall-clock budget (minutes per method, default 30) on the
same machine, predicts the whole VAL images, and is scored by `qmed.evaluate.folders.evaluate_folders`
against the same VAL masks:

* ``qmed``: the `cpu` preset (or --preset), the whole recipe; predictions with 7-fold TTA (the
  recipe) and, as an extra row ``qmed-notta``, without. Its OneCycle schedule is made to complete
  inside the budget: a few training micro-steps, one validation pass and one checkpoint write are
  timed first, then `train.epochs` (at most the preset's) and `data.samples_per_epoch` are set so
  that epochs x (steps + validation + checkpoint) fill the budget; `train.max_minutes` (budget
  + 5 %) is a safety net, checked after each epoch.
* ``smp``: what a user would write with segmentation_models_pytorch alone: the same encoder and
  weights, UNet++ with SCSE, 3-channel input, Dice + BCE, Adam at 1e-3 held constant (no weight
  decay, no accumulation, no clipping), batches of 4 random 256 px crops with flips and 90-degree
  rotations, uniform sampling, no edge channel, no elastic/brightness augmentation, no EMA of the
  validation score and no outlier rule (the checkpoint with the best raw validation Dice is kept,
  as a user with a validation set would), no TTA, float32. It runs on qmed's own trainer with config
  switches (listed in SMP_BASELINE), sized to the budget like qmed.
* ``nnunet``: nnU-Net v2 (`pip install nnunetv2`, >= 2.8), 2d configuration, fold ``all`` (all of
  TRAIN, as the other two): the data are exported with `qmed.data.nnunet.to_nnunet` (VAL as imagesTs),
  then the stock commands run in this interpreter: nnUNetv2_plan_and_preprocess -d ID -c 2d
  --verify_dataset_integrity, nnUNetv2_train ID 2d all -tr TRAINER -device cpu|cuda, and
  nnUNetv2_predict on imagesTs (checkpoint_final, nnU-Net's default mirroring TTA). TRAINER is
  `nnUNetTrainer_qmedBudget` (qmed/nnunet_trainers: the stock trainer whose epoch count is fitted
  to the budget) unless a stock variant is named (e.g. nnUNetTrainer_1epoch, whose 250 iterations
  may well take longer than the budget on a CPU).

The budget is wall-clock time of the training loop, per-epoch validation included: for qmed and
smp the sum of the epochs' times (metrics.csv), for nnU-Net from the start of its run_training
(data loader start-up included). Set-up, qmed's calibration, nnU-Net's planning/preprocessing and
every method's prediction of VAL are outside it and appear in the total time.

A method that cannot run (nnunetv2 missing, a crash) gets a row with the reason instead of
stopping the others. Results: OUT/quality.json (every figure, settings, timings) and
OUT/quality.md (the table), both written atomically; per-method folders under OUT/METHOD/.

Confidence intervals: per-image figures (Dice empty=1, Dice fg, IoU fg, HD95) use the bootstrap
of `qmed.evaluate.metrics`; the pooled Dice and the small-object recall are bootstrapped here the same way
(percentile, images resampled with replacement, seeded).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from qmed.errors import QmedInputError
from qmed.evaluate.stats import bootstrap_indices, percentile_interval
from qmed.io.files import prepare_output_dir, write_json, write_text
from qmed.segment.budget import fit_to_budget

log = logging.getLogger("qmed")

METHODS = ("qmed", "smp", "nnunet")
NNUNET_MIN_VERSION = (2, 8)  # nnUNet_extTrainer: trainers outside the nnunetv2 package
NNUNET_BUDGET_TRAINER = "nnUNetTrainer_qmedBudget"
TRAINER_DIR = Path(__file__).parent / "nnunet_trainers"

# The plain smp baseline as switches on qmed's config (see the module docstring).
SMP_BASELINE = {
    "name": "smp-baseline",
    "model": {"input_mode": "none"},
    "data": {"sampler": "uniform", "fg_crop_p": 0.0, "normalize": "none"},
    "augment": {"flip_p": 0.5, "rot90_p": 0.5, "elastic_p": 0.0, "brightness_contrast_p": 0.0},
    "train": {"loss": "dice_bce", "optimizer": "adam", "lr": 1.0e-3, "weight_decay": 0.0, "schedule": "constant",
              "accumulate": 1, "clip_grad": None, "batch_size": 4, "val_ema_alpha": 0.0, "outlier_min_drop": 1.0,
              "weight_ema": False, "val_tta": False, "cpu_bf16": False},
}


# -- the three methods --------------------------------------------------------------------------

def train_to_budget(cfg, train_dir: Path, val_dir: Path, out: Path, budget_s: float, device: str | None,
                    tta_views: list[bool], say: Callable) -> dict:
    """Train `cfg` on TRAIN (a folder or CSV list) for `budget_s` seconds of training loop (fitted as
    in the module docstring) into OUT/run, then predict VAL's images once per entry of `tta_views`
    (True: the preset's TTA) into OUT/preds-tta or OUT/preds. Also used by `qmed ablate` and `qmed curve`."""
    import csv

    from qmed.segment.predict import predict_folder
    from qmed.segment.train import train

    cfg, plan = fit_to_budget(cfg, train_dir, val_dir, budget_s, device, say)
    run = train(cfg, train_dir, val_dir, out / "run", force=True, device=device, quiet=True)
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        train_s = sum(float(r["epoch_seconds"] or 0) for r in csv.DictReader(fh))  # the training loop, validation included
    preds = {}
    for tta in tta_views:
        p = out / ("preds-tta" if tta else "preds")
        predict_folder(run, val_dir / "images", p, tta=tta, force=True, device=device)
        preds[tta] = p
    work = f"{summary['epochs']} ep x {cfg.data.samples_per_epoch} crops ({summary['opt_steps']} steps)"
    return {"train_seconds": round(train_s, 1), "work": work, "plan": plan, "train_summary": summary,
            "config": cfg.model_dump(), "preds": preds, "run": str(run)}


def smp_baseline_config(preset: str = "cpu", overrides: dict | None = None):
    """The plain smp baseline: SMP_BASELINE's switches on `preset` (after `overrides`, e.g. parsed --set)."""
    from qmed.config import deep_merge, resolve_config

    return resolve_config(preset, overrides=deep_merge(overrides or {}, json.loads(json.dumps(SMP_BASELINE))))


# -- nnU-Net ------------------------------------------------------------------------------------

_ENTRY_FALLBACK = {
    "nnUNetv2_plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
    "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}
_RUNNER = ("import importlib, sys; m, f = sys.argv[1].split(':'); name = sys.argv[2]; "
           "sys.argv = [name] + sys.argv[3:]; sys.exit(getattr(importlib.import_module(m), f)())")


def nnunet_status() -> tuple[bool, str]:
    """(usable, version or the reason it is not)."""
    if importlib.util.find_spec("nnunetv2") is None:
        return False, "nnunetv2 is not installed (pip install 'qmed[peers]' or pip install nnunetv2)"
    try:
        version = importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return True, version


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _entry(name: str) -> str:
    for ep in importlib.metadata.entry_points(group="console_scripts"):
        if ep.name == name:
            return ep.value
    return _ENTRY_FALLBACK[name]


def _nnunet_cmd(name: str, *args: str) -> list[str]:
    """The nnU-Net console command `name`, run by this Python (so the same environment), as a list."""
    return [sys.executable, "-c", _RUNNER, _entry(name), name, *map(str, args)]


def _run_logged(cmd: list[str], env: dict, logfile: Path, timeout: float | None) -> None:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd[3:]) + "\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{cmd[4]} ran past {timeout / 60:.0f} min and was stopped (log: {logfile})") from None
    if proc.returncode != 0:
        tail = [ln for ln in logfile.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"{cmd[4]} failed with exit code {proc.returncode}: {tail[0][:200] if tail else ''} (log: {logfile})")


def _run_nnunet(train_dir: Path, val_dir: Path, out: Path, budget_s: float, device: str | None, trainer: str,
                dataset_id: int, say: Callable) -> dict:
    from qmed.data.nnunet import to_nnunet
    from qmed.io.images import read_array, write_mask_png

    ok, version = nnunet_status()
    if not ok:
        raise _Skip(version)
    if trainer == NNUNET_BUDGET_TRAINER and _version_tuple(version) < NNUNET_MIN_VERSION:
        raise _Skip(f"nnunetv2 {version} cannot load qmed's budget trainer (needs >= 2.8 for nnUNet_extTrainer); "
                    "upgrade, or pass --nnunet-trainer nnUNetTrainer_1epoch (a stock variant)")
    raw, pre, res = out / "nnUNet_raw", out / "nnUNet_preprocessed", out / "nnUNet_results"
    for d in (raw, pre, res):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    start = time.time()
    ds = to_nnunet(train_dir, raw, dataset_id, "QmedBench", val=val_dir)
    env = dict(os.environ)
    env.update({"nnUNet_raw": str(raw.resolve()), "nnUNet_preprocessed": str(pre.resolve()), "nnUNet_results": str(res.resolve()),
                "nnUNet_extTrainer": str(TRAINER_DIR.resolve()), "nnUNet_compile": env.get("nnUNet_compile", "f"),
                "QMED_NNUNET_BUDGET_S": f"{budget_s:.1f}", "PYTHONUNBUFFERED": "1"})
    nproc = str(max(1, min(4, os.cpu_count() or 1)))
    import torch

    # the same device as qmed's trainer picks (train.pick_device); nnU-Net takes no GPU index (use CUDA_VISIBLE_DEVICES)
    dev = "cuda" if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else "cpu"
    logs = out / "logs"
    say("  nnU-Net: plan and preprocess (2d)")
    _run_logged(_nnunet_cmd("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "2d", "--verify_dataset_integrity",
                            "-np", nproc, "-npfp", nproc), env, logs / "plan_and_preprocess.log", timeout=3600)
    prep_s = time.time() - start
    say(f"  nnU-Net: train {trainer} ({budget_s / 60:.1f} min budget)")
    t0 = time.time()
    timeout = None if trainer != NNUNET_BUDGET_TRAINER else budget_s * 1.5 + 600
    _run_logged(_nnunet_cmd("nnUNetv2_train", dataset_id, "2d", "all", "-tr", trainer, "-device", dev), env,
                logs / "train.log", timeout=timeout)
    train_s = time.time() - t0
    fold = res / ds.name / f"{trainer}__nnUNetPlans__2d" / "fold_all"
    info = {}
    if (fold / "qmed_budget.json").is_file():
        info = json.loads((fold / "qmed_budget.json").read_text())
    elif (fold / "debug.json").is_file():
        dbg = json.loads((fold / "debug.json").read_text())
        info = {k: dbg.get(k) for k in ("num_epochs", "num_iterations_per_epoch", "batch_size")}
        info["epochs"] = info.get("num_epochs")
        info["iterations_per_epoch"] = info.get("num_iterations_per_epoch")
    say("  nnU-Net: predict the validation images")
    labels = out / "pred-labels"
    if labels.exists():
        shutil.rmtree(labels)
    _run_logged(_nnunet_cmd("nnUNetv2_predict", "-i", ds / "imagesTs", "-o", labels, "-d", dataset_id, "-c", "2d", "-f", "all",
                            "-tr", trainer, "-device", dev, "-npp", "1", "-nps", "1", "--disable_progress_bar"), env,
                logs / "predict.log", timeout=3600)
    preds = out / "preds"
    if preds.exists():
        shutil.rmtree(preds)
    preds.mkdir(parents=True)
    for f in sorted(labels.glob("*.png")):
        write_mask_png(preds / f.name, read_array(f) > 0)
    it = info.get("iterations_per_epoch")
    work = f"{info.get('epochs')} ep x {it} it x bs {info.get('batch_size')}" if it else "?"
    # the budget trainer times its own training loop, as qmed's epochs are timed; a stock trainer: the whole command
    train_loop_s = float(info.get("train_seconds") or train_s)
    return {"train_seconds": round(train_loop_s, 1), "train_command_seconds": round(train_s, 1), "prep_seconds": round(prep_s, 1),
            "work": work, "trainer": trainer,
            "nnunet_version": version, "nnunet": info, "preds": {True: preds}, "dataset": str(ds)}


class _Skip(Exception):
    """The method cannot run here (a missing package): a row with the reason, not a crash."""


# -- scoring and the table ----------------------------------------------------------------------

def _boot_ci(rows: list[dict], stat: Callable[[list[dict]], float], n_boot: int, seed: int) -> tuple[float, float]:
    if not rows or n_boot <= 0:
        return float("nan"), float("nan")
    vals = [stat([rows[i] for i in idx]) for block in bootstrap_indices(len(rows), n_boot, seed) for idx in block]
    return percentile_interval(vals)


def _pooled_dice(rows: list[dict]) -> float:
    tp = sum(r["tp"] for r in rows)
    fp = sum(r["fp"] for r in rows)
    fn = sum(r["fn"] for r in rows)
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")


def _small_recall(rows: list[dict]) -> float:
    n = sum(r.get("n_small") or 0 for r in rows)
    return sum(r.get("n_small_detected") or 0 for r in rows) / n if n else float("nan")


def score(pred_dir: Path, val_dir: Path, n_boot: int, seed: int) -> dict:
    from qmed.evaluate.folders import evaluate_folders

    summary, rows = evaluate_folders(pred_dir, val_dir, n_boot=n_boot, seed=seed)

    def per_image(key: str) -> dict:
        a = summary[key]
        return {"mean": a["mean"], "ci": [a["ci_low"], a["ci_high"]], "n": a["n"]}

    figures = {
        "dice_empty1": per_image("dice_mean_empty1"),
        "dice_fg": per_image("dice_mean_fg"),
        "dice_pooled": {"mean": summary["dice_pooled"], "ci": list(_boot_ci(rows, _pooled_dice, n_boot, seed)), "n": len(rows)},
        "iou_fg": per_image("iou_mean_fg"),
        "hd95": {**per_image("hd95"), "n_undefined": summary["hd95"].get("n_undefined", 0)},
        "boundary_f1": per_image("boundary_f1"),
        "small_object_recall": {"mean": summary["small_object_recall"], "ci": list(_boot_ci(rows, _small_recall, n_boot, seed)),
                                "n": summary["small_object_counts"]["n_small"]},
        "object_f1": {"mean": summary["object_f1"], "ci": [float("nan"), float("nan")], "n": len(rows)},
    }
    return {"figures": figures, "summary": summary, "per_image": rows}


def fmt_figure(fig: dict | None, digits: int = 3) -> str:
    if not fig:
        return "-"
    m = fig.get("mean")
    if m is None or not math.isfinite(m):
        return "n/a"
    lo, hi = fig.get("ci", [float("nan")] * 2)
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{m:.{digits}f}{ci}"


TABLE_COLUMNS = ["method", "budget min", "train min", "total min", "work done", "Dice empty=1", "Dice fg", "Dice pooled",
                 "IoU fg", "HD95 px", "small-obj recall", "status"]


def table_rows(results: list[dict]) -> list[list[str]]:
    out = []
    for r in results:
        f = r.get("figures") or {}
        out.append([
            r["method"], f"{r['budget_minutes']:g}", f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") is not None else "-",
            f"{r['total_seconds'] / 60:.1f}" if r.get("total_seconds") is not None else "-", r.get("work") or "-",
            fmt_figure(f.get("dice_empty1")), fmt_figure(f.get("dice_fg")), fmt_figure(f.get("dice_pooled")), fmt_figure(f.get("iou_fg")),
            fmt_figure(f.get("hd95"), 1), fmt_figure(f.get("small_object_recall")),
            "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}",
        ])
    return out


FIGURE_ROWS = [("Dice, empty=1 (paper)", "dice_empty1", 3), ("Dice, fg images", "dice_fg", 3), ("Dice, pooled", "dice_pooled", 3),
               ("IoU, fg images", "iou_fg", 3), ("HD95 (px)", "hd95", 1), ("small-object recall", "small_object_recall", 3)]


def figure_cell(fig: dict | None, digits: int = 3, ci: bool = True) -> str:
    """A terminal table cell: the mean, and (with `ci`) its CI on a second line, 2 decimals."""
    if not fig or fig.get("mean") is None or not math.isfinite(fig["mean"]):
        return "-" if not fig else "n/a"
    lo, hi = fig.get("ci") or [None, None]
    has_ci = ci and lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    return f"{fig['mean']:.{digits}f}" + (f"\n[{lo:.{min(digits, 2)}f}, {hi:.{min(digits, 2)}f}]" if has_ci else "")


COMPACT_FIGURES = [("Dice\nempty=1", "dice_empty1", 3, True), ("Dice\npooled", "dice_pooled", 3, False), ("IoU\nfg", "iou_fg", 3, False),
                   ("HD95\npx", "hd95", 1, False), ("BF1", "boundary_f1", 3, False), ("small\nrecall", "small_object_recall", 3, False)]


def compact_table(title: str, lead: list[str], rows: list[tuple[list[str], dict]]):
    """A terminal table that fits 80 columns: the `lead` columns (the first never wraps), then the main
    figures, the CI under the per-image Dice only. `rows`: (lead cells, figures) per row."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for i, name in enumerate(lead):
        t.add_column(name, no_wrap=i == 0)
    for label, *_ in COMPACT_FIGURES:
        t.add_column(label, justify="right", no_wrap=True)
    for cells, figures in rows:
        t.add_row(*cells, *[figure_cell((figures or {}).get(key), digits, ci) for _, key, digits, ci in COMPACT_FIGURES])
    return t


def rich_table(results: list[dict], title: str):
    """The terminal table, one column per method (fits 80 columns for four methods); CIs on a second line."""
    from rich.table import Table

    t = Table(title=title, show_lines=True)
    t.add_column("", justify="left")
    for r in results:
        t.add_column(r["method"], justify="right")

    def mins(r: dict, key: str) -> str:
        return "-" if r.get(key) is None else f"{r[key] / 60:.1f}"

    t.add_row("budget (min)", *[f"{r['budget_minutes']:g}" for r in results])
    t.add_row("train loop (min)", *[mins(r, "train_seconds") for r in results])
    t.add_row("total (min)", *[mins(r, "total_seconds") for r in results])
    t.add_row("work done", *[r.get("work") or "-" for r in results])
    for label, key, digits in FIGURE_ROWS:
        t.add_row(label, *[figure_cell((r.get("figures") or {}).get(key), digits) for r in results])
    t.add_row("status", *["ok" if r["status"] == "ok" else f"{r['status']} (below)" for r in results])
    return t


def failure_notes(results: list[dict]) -> list[str]:
    return [f"{r['method']}: {r['status']}: {r.get('reason', '')}" for r in results if r["status"] != "ok"]


def markdown_table(results: list[dict]) -> str:
    return md_table(TABLE_COLUMNS, table_rows(results))


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; '|' inside a cell becomes '/'."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# The figures of the `qmed ablate` / `qmed curve` Markdown tables: (column, figures key, digits).
MD_FIGURES = [("Dice empty=1 [95% CI]", "dice_empty1", 3), ("Dice fg", "dice_fg", 3), ("Dice pooled [95% CI]", "dice_pooled", 3),
              ("IoU fg", "iou_fg", 3), ("HD95 px", "hd95", 1), ("boundary F1", "boundary_f1", 3),
              ("small-obj recall", "small_object_recall", 3)]


def md_figures(row: dict) -> list[str]:
    f = row.get("figures") or {}
    return [fmt_figure(f.get(key), digits) for _, key, digits in MD_FIGURES]


def status_text(row: dict) -> str:
    return "ok" if row["status"] == "ok" else f"{row['status']}: {row.get('reason', '')}"


# -- the benchmark ------------------------------------------------------------------------------

def json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_methods(spec: str) -> list[str]:
    methods = [m.strip().lower() for m in spec.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise QmedInputError(None, f"--methods: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def run_quality(train_dir: str | Path, val_dir: str | Path, out: str | Path, minutes: float = 30.0,
                methods: list[str] | tuple[str, ...] = METHODS, preset: str = "cpu", device: str | None = None,
                nnunet_trainer: str = NNUNET_BUDGET_TRAINER, dataset_id: int = 501, n_boot: int = 2000, seed: int = 0,
                force: bool = False, say: Callable = print) -> dict:
    """Train, predict and score every method; write OUT/quality.json and OUT/quality.md. Returns the JSON document."""
    from qmed.config import resolve_config
    from qmed.data.dataset import find_pairs

    train_dir, val_dir, out = Path(train_dir), Path(val_dir), Path(out)
    if minutes <= 0:
        raise QmedInputError(None, f"--minutes must be positive, got {minutes}")
    find_pairs(train_dir)  # bad data or a bad preset fails here, before any method runs
    find_pairs(val_dir)
    resolve_config(preset)
    prepare_output_dir(out, force)
    budget_s = minutes * 60.0
    results: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for method in methods:
        say(f"[{method}] {minutes:g} min budget")

        def run_method(method: str = method) -> list[dict]:
            if method == "qmed":
                r = train_to_budget(resolve_config(preset), train_dir, val_dir, out / "qmed", budget_s, device, [True, False], say)
                return [{"method": "qmed", "tta": 7, **r, "pred_dir": r["preds"][True]},
                        {"method": "qmed-notta", "tta": 1, **r, "pred_dir": r["preds"][False]}]
            if method == "smp":
                r = train_to_budget(smp_baseline_config(preset), train_dir, val_dir, out / "smp", budget_s, device, [False], say)
                return [{"method": "smp", "tta": 1, **r, "pred_dir": r["preds"][False]}]
            r = _run_nnunet(train_dir, val_dir, out / "nnunet", budget_s, device, nnunet_trainer, dataset_id, say)
            return [{"method": "nnunet", "tta": 4, **r, "pred_dir": r["preds"][True]}]

        for row in run_guarded(method, run_method, out / method, val_dir, n_boot, seed, say):
            row["budget_minutes"] = minutes
            results.append(row)
        write_json(out / "quality.json", json_safe(_document(results, train_dir, val_dir, minutes, preset, device, nnunet_trainer,
                                                              n_boot, seed, started)))
    doc = json_safe(_document(results, train_dir, val_dir, minutes, preset, device, nnunet_trainer, n_boot, seed, started,
                               finished=True))
    write_json(out / "quality.json", doc)
    write_text(out / "quality.md", _markdown(doc, results))
    return doc


def run_guarded(method: str, run: Callable[[], list[dict]], err_dir: Path, val_dir: Path, n_boot: int, seed: int,
                say: Callable) -> list[dict]:
    """Run one method and score its rows (`run` returns rows, each with a `pred_dir`) with `score`.

    A method that cannot run (_Skip) or crashes becomes one row with the reason and the traceback
    in ERR_DIR/error.txt, so one failure never stops the others. Every row gets `status` and
    `total_seconds` (training, prediction and scoring)."""
    t0 = time.time()
    try:
        rows = run()
        for row in rows:
            row.update(score(row["pred_dir"], val_dir, n_boot, seed))
            row["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except _Skip as exc:
        rows = [{"method": method, "status": "skipped", "reason": str(exc)}]
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        rows = [{"method": method, "status": "failed", "reason": f"{type(exc).__name__}: {msg}"[:300]}]
        err_dir.mkdir(parents=True, exist_ok=True)
        write_text(err_dir / "error.txt", traceback.format_exc())
    for row in rows:
        row.pop("preds", None)
        row["total_seconds"] = round(time.time() - t0, 1)
        if row["status"] != "ok":
            say(f"  {row['method']}: {row['status']}: {row['reason']}")
    return rows


def machine_info() -> dict:
    import platform

    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _document(results, train_dir, val_dir, minutes, preset, device, nnunet_trainer, n_boot, seed, started,
              finished: bool = False) -> dict:
    settings = {"train": str(Path(train_dir).resolve()), "val": str(Path(val_dir).resolve()), "minutes_per_method": minutes,
                "preset": preset, "device": device or default_device(), "nnunet_trainer": nnunet_trainer, "n_boot": n_boot, "seed": seed}
    return result_document("quality", results, settings, started, finished)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def result_document(benchmark: str, results: list[dict], settings: dict, started: str, finished: bool) -> dict:
    """The JSON document of a run of methods: settings, machine, one entry per row, per-image figures apart."""
    return {
        "benchmark": benchmark,
        "finished": finished,
        "started": started,
        "settings": settings,
        "machine": machine_info(),
        "results": [{k: v for k, v in r.items() if k != "per_image"} for r in results],
        "per_image": {r["method"]: r.get("per_image") for r in results if r.get("per_image")},
    }


def _markdown(doc: dict, results: list[dict]) -> str:
    return f"# qmed benchmark quality\n\n{settings_sentence(doc, doc['settings']['minutes_per_method'], 'method')}\n\n" + markdown_table(results)


def settings_sentence(doc: dict, minutes: float, per: str) -> str:
    """What a result document was run on, for the head of its Markdown table."""
    s = doc["settings"]
    return (f"started {doc['started']}; train {s['train']}, val {s['val']}; {minutes:g} min training per {per} on {s['device']} "
            f"({doc['machine']['cpu_count']} CPUs); 95 % bootstrap CIs ({s['n_boot']} resamples, seed {s['seed']}).")
