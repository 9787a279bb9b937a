"""What the experiment runners share (`qmed benchmark quality`, `qmed ablate`, `qmed curve`, active
learning): training to a wall-clock budget, the plain smp baseline, scoring a prediction folder
with CIs, running a method so that its failure becomes a row, and the result document.

Confidence intervals: per-image figures (Dice empty=1, Dice fg, IoU fg, HD95) use the bootstrap
of `qmed.evaluate.metrics`; the pooled Dice and the small-object recall are bootstrapped here with
the same `qmed.evaluate.stats` resamples (percentile, images resampled with replacement, seeded).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from qmed.evaluate.stats import bootstrap_indices, percentile_interval
from qmed.io.files import write_text
from qmed.segment.budget import fit_to_budget

# The plain smp baseline as switches on qmed's config (see the module docstring).
SMP_BASELINE = {
    "name": "smp-baseline",
    "model": {"input_mode": "none", "instance_head": "none"},  # one output channel, as a plain script has
    "data": {"sampler": "uniform", "fg_crop_p": 0.0, "normalize": "none"},
    "augment": {"flip_p": 0.5, "rot90_p": 0.5, "elastic_p": 0.0, "brightness_contrast_p": 0.0},
    "train": {
        "loss": "dice_bce",
        "optimizer": "adam",
        "lr": 1.0e-3,
        "weight_decay": 0.0,
        "schedule": "constant",
        "accumulate": 1,
        "clip_grad": None,
        "batch_size": 4,
        "val_ema_alpha": 0.0,
        "outlier_min_drop": 1.0,
        "weight_ema": False,
        "val_tta": False,
        "cpu_bf16": False,
    },
}


def train_to_budget(
    cfg,
    train_dir: Path,
    val_dir: Path,
    out: Path,
    budget_s: float,
    device: str | None,
    tta_views: list[bool],
    say: Callable,
    instances: bool = False,
    train_val: bool = True,
) -> dict:
    """Train `cfg` on TRAIN (a folder or CSV list) for `budget_s` seconds of training loop (fitted as
    in the module docstring) into OUT/run, then predict VAL's images once per entry of `tta_views`
    (True: the preset's TTA) into OUT/preds-tta or OUT/preds; with `instances`, also the label maps
    of `qmed predict --instances` (PREDS/instances). `train_val=False`: VAL is not shown to the
    training (it validates on its own split of TRAIN, or not at all), only predicted and scored.
    Also used by `qmed ablate` and `qmed curve`."""
    import csv

    from qmed.segment.predict import predict_folder
    from qmed.segment.train import train

    seen = val_dir if train_val else None
    cfg, plan = fit_to_budget(cfg, train_dir, seen, budget_s, device, say, floor=False)  # equal budgets, no floor
    run = train(cfg, train_dir, seen, out / "run", force=True, device=device, quiet=True)
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        train_s = sum(
            float(r["epoch_seconds"] or 0) for r in csv.DictReader(fh)
        )  # the training loop, validation included
    preds = {}
    for tta in tta_views:
        p = out / ("preds-tta" if tta else "preds")
        predict_folder(run, val_dir / "images", p, tta=tta, force=True, device=device, instances=instances)
        preds[tta] = p
    # crops per epoch are re-planned from the measured pace (train.budget_seconds): the totals
    work = f"{summary['epochs']} ep, {summary['crops']} crops ({summary['opt_steps']} steps)"
    return {
        "train_seconds": round(train_s, 1),
        "work": work,
        "plan": plan,
        "train_summary": summary,
        "config": cfg.model_dump(),
        "preds": preds,
        "run": str(run),
    }


def smp_baseline_config(preset: str = "cpu", overrides: dict | None = None, bf16: bool = False):
    """The plain smp baseline: SMP_BASELINE's switches on `preset` (after `overrides`, e.g. parsed --set).
    `bf16`: the same script with bfloat16 autocast and channels-last where the CPU computes bfloat16
    natively (two lines a user could add): the control that tells qmed's recipe from its precision."""
    from qmed.config import deep_merge, resolve_config

    switches = deep_merge(json.loads(json.dumps(SMP_BASELINE)), {"train": {"cpu_bf16": bool(bf16)}})
    return resolve_config(preset, overrides=deep_merge(overrides or {}, switches))


class MethodSkipped(Exception):
    """The method cannot run here (a missing package): a row with the reason, not a crash."""


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


def score(pred_dir: Path, val_dir: Path, n_boot: int, seed: int, instance_dir: Path | None = None) -> dict:
    """The row's figures on VAL. The object figures (mean AP, PQ, AJI, count error) are those of
    INSTANCE_DIR's label maps when given (qmed predict --instances), else of the 8-connected
    components of the predicted mask (what a plain script that thresholds gets); "objects" says which."""
    from qmed.evaluate.folders import evaluate_folders

    summary, rows = evaluate_folders(pred_dir, val_dir, n_boot=n_boot, seed=seed, instances=True)
    inst = summary
    if instance_dir is not None:
        inst, _ = evaluate_folders(instance_dir, val_dir, n_boot=n_boot, seed=seed, pred_kind="labels")

    def per_image(key: str) -> dict:
        a = summary[key]
        return {"mean": a["mean"], "ci": [a["ci_low"], a["ci_high"]], "n": a["n"]}

    figures = {
        "dice_empty1": per_image("dice_mean_empty1"),
        "dice_fg": per_image("dice_mean_fg"),
        "dice_pooled": {
            "mean": summary["dice_pooled"],
            "ci": list(_boot_ci(rows, _pooled_dice, n_boot, seed)),
            "n": len(rows),
        },
        "iou_fg": per_image("iou_mean_fg"),
        "hd95": {**per_image("hd95"), "n_undefined": summary["hd95"].get("n_undefined", 0)},
        "boundary_f1": per_image("boundary_f1"),
        "small_object_recall": {
            "mean": summary["small_object_recall"],
            "ci": list(_boot_ci(rows, _small_recall, n_boot, seed)),
            "n": summary["small_object_counts"]["n_small"],
        },
        "object_f1": {"mean": summary["object_f1"], "ci": [float("nan"), float("nan")], "n": len(rows)},
    }
    for key in ("map_dsb", "pq", "aji", "count_abs_error"):
        a = inst[key]
        figures[key] = {"mean": a["mean"], "ci": [a["ci_low"], a["ci_high"]], "n": a["n"]}
    figures["objects"] = "watershed (qmed predict --instances)" if instance_dir is not None else "connected components"
    return {"figures": figures, "summary": summary, "per_image": rows}


def run_guarded(
    method: str, run: Callable[[], list[dict]], err_dir: Path, val_dir: Path, n_boot: int, seed: int, say: Callable
) -> list[dict]:
    """Run one method and score its rows (`run` returns rows, each with a `pred_dir`) with `score`.

    A method that cannot run (MethodSkipped) or crashes becomes one row with the reason and the traceback
    in ERR_DIR/error.txt, so one failure never stops the others. Every row gets `status` and
    `total_seconds` (training, prediction and scoring)."""
    t0 = time.time()
    try:
        rows = run()
        for row in rows:
            row.update(score(row["pred_dir"], val_dir, n_boot, seed, row.get("instance_dir")))
            row["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except MethodSkipped as exc:
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


def machine_info(dev=None) -> dict:
    """What a result was measured on: platform, Python, torch, CPU model and threads, whether the CPU
    computes bfloat16 natively (where `train.cpu_bf16` trains in it: qmed's `cpu`/`auto`, smp only
    with --smp-bf16); the GPU on CUDA."""
    import platform

    import torch

    from qmed.runtime import cpu_has_native_bf16

    m = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    m["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if dev is not None and dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        m.update(
            {
                "gpu": p.name,
                "gpu_memory_gb": round(p.total_memory / 2**30, 1),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        )
    return m


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


def settings_sentence(doc: dict, minutes: float, per: str) -> str:
    """What a result document was run on, for the head of its Markdown table."""
    s = doc["settings"]
    return (
        f"started {doc['started']}; train {s['train']}, val {s['val']}; {minutes:g} min training per {per} on {s['device']} "
        f"({doc['machine']['cpu_count']} CPUs); 95 % bootstrap CIs ({s['n_boot']} resamples, seed {s['seed']})."
    )
