"""Fit a training run to a wall-clock budget on this machine, so its OneCycle schedule completes.

A few training micro-steps, one validation pass and one checkpoint write of qmed's trainer are
timed first (calibrate); then `train.epochs` (at most the config's) and `data.samples_per_epoch`
are set so that epochs x (steps + checkpoint) plus the validation passes fill the budget (plan_budget), and
`train.max_minutes` (budget + 5 %) is set as a safety net, checked after each epoch. Used by
`qmed train --minutes`, `qmed demo`, `qmed benchmark quality` and `suite`, `qmed ablate` and `qmed curve`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def validations(epochs: int, val_every: int = 1) -> int:
    """Validation passes in `epochs` epochs: those after which the trainer validates."""
    from qmed.segment.train import validates  # the trainer's own rule (this module already depends on it)

    return sum(validates(e, epochs, val_every) for e in range(1, epochs + 1))


def plan_budget(
    budget_s: float,
    t_micro: float,
    t_val: float,
    batch_size: int,
    accumulate: int,
    max_epochs: int,
    epoch_overhead_s: float = 1.0,
    val_share: float = 0.25,
    val_every: int = 1,
) -> dict:
    """Epochs and crops per epoch so that epochs x (micro-steps x t_micro + overhead) plus the
    validation passes (every `val_every`-th epoch and the last) take at most budget_s.

    Validation may take at most `val_share` of the budget; at most `max_epochs` epochs (the
    preset's); every epoch has at least one optimizer step."""
    budget_s = max(0.0, budget_s)
    per_epoch_val = t_val / max(1, val_every)  # amortised: only for choosing the number of epochs
    epochs = max(1, min(max_epochs, int(val_share * budget_s / max(per_epoch_val + epoch_overhead_s, 1e-6))))
    while True:
        train_s = budget_s - validations(epochs, val_every) * t_val - epochs * epoch_overhead_s
        micro = int(train_s / epochs / max(t_micro, 1e-6))
        micro = micro // accumulate * accumulate
        if micro >= accumulate or epochs == 1:
            break
        epochs -= 1
    micro = max(accumulate, micro)
    est = epochs * (micro * t_micro + epoch_overhead_s) + validations(epochs, val_every) * t_val
    return {
        "epochs": epochs,
        "samples_per_epoch": micro * batch_size,
        "micro_steps_per_epoch": micro,
        "optimizer_steps": epochs * math.ceil(micro / accumulate),
        "estimated_seconds": round(est, 1),
    }


def calibrate(
    cfg, train_dir: Path, val_dir: Path, device: str | None, n_steps: int = 2, max_val_images: int = 4, warmup: int = 3
) -> dict:
    """Time `n_steps` training micro-steps (after `warmup` untimed ones: on CPU the first few steps
    run markedly slower than the steady state, and with a single warm-up the estimate came out too
    high and left part of the budget unused; docs/benchmarks.md section 5), one validation pass (on at most
    `max_val_images` images, scaled by pixel count) and one checkpoint write of qmed's trainer for
    this config (model, data pipeline, loss, optimizer) on this machine."""
    import tempfile

    import torch

    from qmed.data.batches import LoadedPairs
    from qmed.segment.train import Trainer
    from qmed.segment.trainstep import EpochTally
    from qmed.segment.validate import validate

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        t = Trainer(cfg, train_dir, val_dir, Path(tmp) / "cal", device=device, quiet=True)
        t.load_data()
        t.build_model(pretrained=False)  # only timed: the weights make no difference to the speed
        t_setup = time.perf_counter() - t0
        t.model.train()
        it = iter(t.loader)
        # the trainer's own step, hardness tracking included when the sampler is "hard"
        hard = np.full(len(t.train_data), np.nan) if cfg.data.sampler == "hard" else None
        tally = EpochTally()
        times = []
        j = 0  # micro-batch index within the loader's epoch
        for i in range(warmup + n_steps):
            try:
                x, y = next(it)
            except StopIteration:
                it, j = iter(t.loader), 0
                x, y = next(it)
            t0 = time.perf_counter()
            t.train_step(j, x, y, tally, hard)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            j += 1
        # data loading happens in the iterator: time it separately and add it
        t0 = time.perf_counter()
        for _ in range(2):
            next(iter(t.loader))
        t_data = (time.perf_counter() - t0) / 2
        n_val = len(t.val_data)
        sub = LoadedPairs(t.val_data.pairs[:max_val_images], cfg, cache=True)
        for i in range(len(sub)):
            sub._cache[i] = t.val_data[i]
        t0 = time.perf_counter()
        if n_val:  # data.val_fraction=0 without --val: no validation pass to time
            validate(t.model, sub, cfg, t.device, cpu_bf16=cfg.train.cpu_bf16)
        t_sub = time.perf_counter() - t0
        px_sub = sum(sub[i][1].size for i in range(len(sub)))
        px_all = sum(t.val_data[i][1].size for i in range(n_val))
        from qmed.io import checkpoints
        from qmed.segment.train import RunState

        t0 = time.perf_counter()
        checkpoints.save(Path(tmp) / "last.pt", t.checkpoint_state(RunState()))
        t_ckpt = time.perf_counter() - t0
    return {
        "t_micro": float(np.median(times)) + t_data,
        "t_val": t_sub * px_all / max(px_sub, 1),
        "t_data": t_data,
        "t_checkpoint": t_ckpt,
        "t_setup": t_setup,
    }


def apply_floor(
    plan: dict,
    min_steps: int,
    t_micro: float,
    t_val: float,
    batch_size: int,
    accumulate: int,
    epoch_overhead_s: float = 1.0,
    val_every: int = 1,
) -> dict:
    """Raise a plan below `min_steps` optimizer steps to that floor: the same epochs, more crops per
    epoch. The plan says so (`overran`, `budget_steps`) and re-estimates its time."""
    if min_steps <= 0 or plan["optimizer_steps"] >= min_steps:
        return {**plan, "overran": False}
    epochs = plan["epochs"]
    micro = math.ceil(min_steps / epochs) * accumulate
    est = epochs * (micro * t_micro + epoch_overhead_s) + validations(epochs, val_every) * t_val
    return {
        **plan,
        "overran": True,
        "budget_steps": plan["optimizer_steps"],
        "budget_seconds": plan["estimated_seconds"],
        "samples_per_epoch": micro * batch_size,
        "micro_steps_per_epoch": micro,
        "optimizer_steps": epochs * math.ceil(micro / accumulate),
        "estimated_seconds": round(est, 1),
    }


def fit_to_budget(
    cfg, train_dir: Path, val_dir: Path | None, budget_s: float, device: str | None, say: Callable, floor: bool = True
) -> tuple:
    """(cfg with epochs, samples_per_epoch and max_minutes fitted to `budget_s`, the plan dict).

    With `floor`, a budget that affords fewer than `train.min_steps` optimizer steps trains that
    many anyway (over the budget, said loudly); equal-budget benchmarks pass floor=False."""
    from qmed.config import config_from_dict

    t0 = time.time()
    # longer budgets afford a steadier estimate: 2 timed steps per 400 s of budget, 2 to 8
    n_steps = int(min(8, max(2, budget_s // 200)))
    cal = calibrate(cfg, train_dir, val_dir, device, n_steps=n_steps, max_val_images=4 if budget_s < 600 else 8)
    spent = time.time() - t0
    # The budget is the training loop's (epochs with their validation), as for nnU-Net; 2 % slack.
    # Per epoch besides the steps: validation, last.pt (+ best.pt when selected), metrics.csv.
    plan = plan_budget(
        0.98 * budget_s,
        cal["t_micro"],
        cal["t_val"],
        cfg.train.batch_size,
        cfg.train.accumulate,
        cfg.train.epochs,
        epoch_overhead_s=2 * cal["t_checkpoint"] + 0.5,
        val_every=cfg.train.val_every,
    )
    plan = apply_floor(
        plan,
        cfg.train.min_steps if floor else 0,
        cal["t_micro"],
        cal["t_val"],
        cfg.train.batch_size,
        cfg.train.accumulate,
        epoch_overhead_s=2 * cal["t_checkpoint"] + 0.5,
        val_every=cfg.train.val_every,
    )
    data = cfg.model_dump()
    data["train"]["epochs"] = plan["epochs"]
    data["data"]["samples_per_epoch"] = plan["samples_per_epoch"]
    # A safety net only (checked after each epoch; stopping there leaves the schedule unfinished):
    # 5 % slack so that ordinary timing noise does not cut the last epoch.
    data["train"]["max_minutes"] = 1.05 * max(budget_s, plan["estimated_seconds"]) / 60.0
    # Re-planned after each epoch from the measured pace (qmed.segment.train); not when the floor
    # of useful work already overruns the budget.
    data["train"]["budget_seconds"] = None if plan["overran"] else 0.98 * budget_s
    plan.update(
        {
            "calibration_seconds": round(spent, 1),
            "seconds_per_micro_step": round(cal["t_micro"], 4),
            "seconds_per_validation": round(cal["t_val"], 2),
            "seconds_per_checkpoint": round(cal["t_checkpoint"], 2),
        }
    )
    say(
        f"  calibrated in {spent:.0f}s: {cal['t_micro']:.2f}s per batch, {cal['t_val']:.1f}s per validation -> "
        f"{plan['epochs']} epochs x {plan['samples_per_epoch']} crops ({plan['optimizer_steps']} optimizer steps)"
    )
    if plan["overran"]:
        say(
            f"  WARNING: {budget_s / 60:g} min affords only {plan['budget_steps']} optimizer steps on this machine, too few "
            f"for a useful model; training {plan['optimizer_steps']} instead (the floor, train.min_steps, is {cfg.train.min_steps}), "
            f"about {plan['estimated_seconds'] / 60:.1f} min: OVER the budget (set train.min_steps=0 to keep to it)"
        )
    return config_from_dict(data), plan
