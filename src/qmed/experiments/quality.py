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
  `nnUNetTrainer_qmedBudget` (experiments/nnunet_trainers: the stock trainer whose epoch count is fitted
  to the budget) unless a stock variant is named (e.g. nnUNetTrainer_1epoch, whose 250 iterations
  may well take longer than the budget on a CPU).

The budget is wall-clock time of the training loop, per-epoch validation included: for qmed and
smp the sum of the epochs' times (metrics.csv), for nnU-Net from the start of its run_training
(data loader start-up included). Set-up, qmed's calibration, nnU-Net's planning/preprocessing and
every method's prediction of VAL are outside it and appear in the total time.

A method that cannot run (nnunetv2 missing, a crash) gets a row with the reason instead of
stopping the others. Results: OUT/quality.json (every figure, settings, timings) and
OUT/quality.md (the table), both written atomically; per-method folders under OUT/METHOD/.

Scoring, confidence intervals and the failure rows: `qmed.experiments.common`; the nnU-Net row:
`qmed.experiments.nnunet_peer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from qmed.errors import QmedInputError
from qmed.experiments.common import (
    result_document,
    run_guarded,
    settings_sentence,
    smp_baseline_config,
    train_to_budget,
)
from qmed.experiments.nnunet_peer import NNUNET_BUDGET_TRAINER, run_nnunet
from qmed.io.files import json_safe, prepare_output_dir, write_json, write_text
from qmed.report.tables import figure_cell, fmt_figure, md_table
from qmed.runtime import pick_device
from qmed.segment.instances import INSTANCES_DIR

log = logging.getLogger("qmed")

METHODS = ("qmed", "smp", "nnunet")


# -- the table ----------------------------------------------------------------------------------

TABLE_COLUMNS = [
    "method",
    "budget min",
    "train min",
    "total min",
    "work done",
    "Dice empty=1",
    "Dice fg",
    "Dice pooled",
    "IoU fg",
    "HD95 px",
    "small-obj recall",
    "mean AP",
    "PQ",
    "objects",
    "status",
]


def table_rows(results: list[dict]) -> list[list[str]]:
    out = []
    for r in results:
        f = r.get("figures") or {}
        out.append(
            [
                r["method"],
                f"{r['budget_minutes']:g}",
                f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") is not None else "-",
                f"{r['total_seconds'] / 60:.1f}" if r.get("total_seconds") is not None else "-",
                r.get("work") or "-",
                fmt_figure(f.get("dice_empty1")),
                fmt_figure(f.get("dice_fg")),
                fmt_figure(f.get("dice_pooled")),
                fmt_figure(f.get("iou_fg")),
                fmt_figure(f.get("hd95"), 1),
                fmt_figure(f.get("small_object_recall")),
                fmt_figure(f.get("map_dsb")),
                fmt_figure(f.get("pq")),
                f.get("objects") or "-",
                "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}",
            ]
        )
    return out


FIGURE_ROWS = [
    ("Dice, empty=1 (paper)", "dice_empty1", 3),
    ("Dice, fg images", "dice_fg", 3),
    ("Dice, pooled", "dice_pooled", 3),
    ("IoU, fg images", "iou_fg", 3),
    ("HD95 (px)", "hd95", 1),
    ("small-object recall", "small_object_recall", 3),
    ("mean AP (DSB), objects", "map_dsb", 3),
    ("PQ, objects", "pq", 3),
    ("AJI, objects", "aji", 3),
]


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
    t.add_row("objects from", *[(r.get("figures") or {}).get("objects") or "-" for r in results])
    t.add_row("status", *["ok" if r["status"] == "ok" else f"{r['status']} (below)" for r in results])
    return t


def failure_notes(results: list[dict]) -> list[str]:
    return [f"{r['method']}: {r['status']}: {r.get('reason', '')}" for r in results if r["status"] != "ok"]


def markdown_table(results: list[dict]) -> str:
    return md_table(TABLE_COLUMNS, table_rows(results))


# -- the benchmark ------------------------------------------------------------------------------


def parse_methods(spec: str) -> list[str]:
    methods = [m.strip().lower() for m in spec.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise QmedInputError(None, f"--methods: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def qmed_default(preset: str, train_dir: Path, overrides: list[str] | None = None, gpu: bool = False):
    """qmed's settings for the row: the named preset, or with "auto" the fingerprint's choices for
    this hardware (qmed.data.planning; `gpu` as `qmed train` decides it); then `overrides`
    (--set KEY=VALUE, qmed's row only: how a lever is measured)."""
    from qmed.config import parse_overrides, resolve_config
    from qmed.data.planning import auto_config

    if preset == "auto":
        return auto_config(train_dir, overrides=overrides or None, gpu=gpu)
    return resolve_config(preset, overrides=parse_overrides(overrides) if overrides else None)


def run_quality(
    train_dir: str | Path,
    val_dir: str | Path,
    out: str | Path,
    minutes: float = 30.0,
    methods: list[str] | tuple[str, ...] = METHODS,
    preset: str = "cpu",
    device: str | None = None,
    nnunet_trainer: str = NNUNET_BUDGET_TRAINER,
    dataset_id: int = 501,
    n_boot: int = 2000,
    seed: int = 0,
    force: bool = False,
    say: Callable = print,
    overrides: list[str] | None = None,
    qmed_val: bool = True,
    train_seed: int = 0,
    smp_bf16: bool = False,
) -> dict:
    """Train, predict and score every method; write OUT/quality.json and OUT/quality.md. Returns the JSON document.
    `train_seed`: train.seed of qmed and smp (initialisation, crops, augmentation), so repeated
    runs with other seeds show each method's own spread; `seed` is the bootstrap's.
    `overrides` (KEY=VALUE) change qmed's settings only; the smp baseline stays the plain script.
    `qmed_val=False`: qmed trains without VAL, as a user without a val folder does (it splits its
    own off TRAIN, or with data.val_fraction=0 trains on all of it); VAL then only scores.
    `smp_bf16`: the smp baseline also trains in bfloat16 where the CPU has it (the precision control)."""
    from qmed.data.dataset import find_pairs

    train_dir, val_dir, out = Path(train_dir), Path(val_dir), Path(out)
    if minutes <= 0:
        raise QmedInputError(None, f"--minutes must be positive, got {minutes}")
    find_pairs(train_dir)  # bad data or a bad preset fails here, before any method runs
    find_pairs(val_dir)
    qmed_config = qmed_default(
        preset, train_dir, [f"train.seed={train_seed}", *(overrides or [])], gpu=pick_device(device).type == "cuda"
    )
    base = "cpu" if preset == "auto" else preset  # the smp baseline's encoder, crop and batch
    prepare_output_dir(out, force, inputs=[train_dir, val_dir], verb="benchmark quality")
    budget_s = minutes * 60.0
    results: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for method in methods:
        say(f"[{method}] {minutes:g} min budget")

        def run_method(method: str = method) -> list[dict]:
            if method == "qmed":
                r = train_to_budget(
                    qmed_config,
                    train_dir,
                    val_dir,
                    out / "qmed",
                    budget_s,
                    device,
                    [True, False],
                    say,
                    instances=True,
                    train_val=qmed_val,
                )
                return [
                    {
                        "method": "qmed",
                        "tta": 7,
                        **r,
                        "pred_dir": r["preds"][True],
                        "instance_dir": r["preds"][True] / INSTANCES_DIR,
                    },
                    {
                        "method": "qmed-notta",
                        "tta": 1,
                        **r,
                        "pred_dir": r["preds"][False],
                        "instance_dir": r["preds"][False] / INSTANCES_DIR,
                    },
                ]
            if method == "smp":
                r = train_to_budget(
                    smp_baseline_config(base, {"train": {"seed": train_seed}}, bf16=smp_bf16),
                    train_dir,
                    val_dir,
                    out / "smp",
                    budget_s,
                    device,
                    [False],
                    say,
                )
                return [{"method": "smp", "tta": 1, **r, "pred_dir": r["preds"][False]}]
            r = run_nnunet(train_dir, val_dir, out / "nnunet", budget_s, device, nnunet_trainer, dataset_id, say)
            return [{"method": "nnunet", "tta": 4, **r, "pred_dir": r["preds"][True]}]

        for row in run_guarded(method, run_method, out / method, val_dir, n_boot, seed, say):
            row["budget_minutes"] = minutes
            results.append(row)
        write_json(
            out / "quality.json",
            json_safe(
                _document(
                    results,
                    train_dir,
                    val_dir,
                    minutes,
                    preset,
                    device,
                    nnunet_trainer,
                    n_boot,
                    seed,
                    started,
                    qmed_val=qmed_val,
                    train_seed=train_seed,
                    smp_bf16=smp_bf16,
                )
            ),
        )
    doc = json_safe(
        _document(
            results,
            train_dir,
            val_dir,
            minutes,
            preset,
            device,
            nnunet_trainer,
            n_boot,
            seed,
            started,
            finished=True,
            qmed_val=qmed_val,
            train_seed=train_seed,
            smp_bf16=smp_bf16,
        )
    )
    write_json(out / "quality.json", doc)
    write_text(out / "quality.md", _markdown(doc, results))
    return doc


def _document(
    results,
    train_dir,
    val_dir,
    minutes,
    preset,
    device,
    nnunet_trainer,
    n_boot,
    seed,
    started,
    finished: bool = False,
    qmed_val: bool = True,
    train_seed: int = 0,
    smp_bf16: bool = False,
) -> dict:
    settings = {
        "train": str(Path(train_dir).resolve()),
        "val": str(Path(val_dir).resolve()),
        "minutes_per_method": minutes,
        "preset": preset,
        "device": str(pick_device(device)),
        "nnunet_trainer": nnunet_trainer,
        "n_boot": n_boot,
        "seed": seed,
        "qmed_trained_with_val": qmed_val,
        "train_seed": train_seed,
        "smp_bf16": smp_bf16,
    }
    return result_document("quality", results, settings, started, finished)


def _markdown(doc: dict, results: list[dict]) -> str:
    return (
        f"# qmed benchmark quality\n\n{settings_sentence(doc, doc['settings']['minutes_per_method'], 'method')}\n\n"
        + markdown_table(results)
    )
