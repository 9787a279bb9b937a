"""nnU-Net v2 as a peer row of `qmed benchmark quality`: export, plan, train on a budget, predict.

The data are exported with `qmed.data.nnunet.to_nnunet` (VAL as imagesTs), then nnU-Net's stock
commands run in this interpreter (so the same environment): nnUNetv2_plan_and_preprocess -d ID -c
2d --verify_dataset_integrity, nnUNetv2_train ID 2d all -tr TRAINER -device cpu|cuda, and
nnUNetv2_predict on imagesTs. TRAINER is `nnUNetTrainer_qmedBudget` (experiments/nnunet_trainers:
the stock trainer whose epoch count is fitted to the budget) unless a stock variant is named.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from qmed.experiments.common import MethodSkipped
from qmed.runtime import pick_device

NNUNET_MIN_VERSION = (2, 8)  # nnUNet_extTrainer: trainers outside the nnunetv2 package


NNUNET_BUDGET_TRAINER = "nnUNetTrainer_qmedBudget"


TRAINER_DIR = Path(__file__).parent / "nnunet_trainers"


_ENTRY_FALLBACK = {
    "nnUNetv2_plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
    "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}


_RUNNER = (
    "import importlib, sys; m, f = sys.argv[1].split(':'); name = sys.argv[2]; "
    "sys.argv = [name] + sys.argv[3:]; sys.exit(getattr(importlib.import_module(m), f)())"
)


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
        raise RuntimeError(
            f"{cmd[4]} failed with exit code {proc.returncode}: {tail[0][:200] if tail else ''} (log: {logfile})"
        )


def run_nnunet(
    train_dir: Path,
    val_dir: Path,
    out: Path,
    budget_s: float,
    device: str | None,
    trainer: str,
    dataset_id: int,
    say: Callable,
) -> dict:
    from qmed.data.nnunet import to_nnunet
    from qmed.io.images import read_array, write_mask_png

    ok, version = nnunet_status()
    if not ok:
        raise MethodSkipped(version)
    if trainer == NNUNET_BUDGET_TRAINER and _version_tuple(version) < NNUNET_MIN_VERSION:
        raise MethodSkipped(
            f"nnunetv2 {version} cannot load qmed's budget trainer (needs >= 2.8 for nnUNet_extTrainer); "
            "upgrade, or pass --nnunet-trainer nnUNetTrainer_1epoch (a stock variant)"
        )
    raw, pre, res = out / "nnUNet_raw", out / "nnUNet_preprocessed", out / "nnUNet_results"
    for d in (raw, pre, res):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    start = time.time()
    ds = to_nnunet(train_dir, raw, dataset_id, "QmedBench", val=val_dir)
    env = dict(os.environ)
    env.update(
        {
            "nnUNet_raw": str(raw.resolve()),
            "nnUNet_preprocessed": str(pre.resolve()),
            "nnUNet_results": str(res.resolve()),
            "nnUNet_extTrainer": str(TRAINER_DIR.resolve()),
            "nnUNet_compile": env.get("nnUNet_compile", "f"),
            "QMED_NNUNET_BUDGET_S": f"{budget_s:.1f}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    nproc = str(max(1, min(4, os.cpu_count() or 1)))
    # the same device as qmed's trainer picks; nnU-Net takes no GPU index (use CUDA_VISIBLE_DEVICES)
    dev = pick_device(device).type
    logs = out / "logs"
    say("  nnU-Net: plan and preprocess (2d)")
    _run_logged(
        _nnunet_cmd(
            "nnUNetv2_plan_and_preprocess",
            "-d",
            dataset_id,
            "-c",
            "2d",
            "--verify_dataset_integrity",
            "-np",
            nproc,
            "-npfp",
            nproc,
        ),
        env,
        logs / "plan_and_preprocess.log",
        timeout=3600,
    )
    prep_s = time.time() - start
    say(f"  nnU-Net: train {trainer} ({budget_s / 60:.1f} min budget)")
    t0 = time.time()
    timeout = None if trainer != NNUNET_BUDGET_TRAINER else budget_s * 1.5 + 600
    _run_logged(
        _nnunet_cmd("nnUNetv2_train", dataset_id, "2d", "all", "-tr", trainer, "-device", dev),
        env,
        logs / "train.log",
        timeout=timeout,
    )
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
    _run_logged(
        _nnunet_cmd(
            "nnUNetv2_predict",
            "-i",
            ds / "imagesTs",
            "-o",
            labels,
            "-d",
            dataset_id,
            "-c",
            "2d",
            "-f",
            "all",
            "-tr",
            trainer,
            "-device",
            dev,
            "-npp",
            "1",
            "-nps",
            "1",
            "--disable_progress_bar",
        ),
        env,
        logs / "predict.log",
        timeout=3600,
    )
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
    return {
        "train_seconds": round(train_loop_s, 1),
        "train_command_seconds": round(train_s, 1),
        "prep_seconds": round(prep_s, 1),
        "work": work,
        "trainer": trainer,
        "nnunet_version": version,
        "nnunet": info,
        "preds": {True: preds},
        "dataset": str(ds),
    }
