"""Re-planning the crops per epoch from the measured pace (train.budget_seconds): hand-computed plans,
the rebuilt one-cycle schedule, and a re-planned run that resumes where it stopped."""

import csv
import json
import math

import pytest
import torch

from qmed.config import resolve_config
from qmed.segment.train import RunState, Trainer, replan_samples, resume, train


def test_replan_samples_hand_computed():
    # 100 s left for epochs 3..4 of 4, validating every 2nd epoch and the last: epoch 4 only, 10 s.
    # Bookkeeping 1 s per epoch: (100 - 10 - 2) / 2 epochs = 44 s each, at 0.5 s per crop = 88 crops,
    # 22 micro-batches of 4.
    assert replan_samples(100.0, 2, 4, 2, 0.5, 10.0, 1.0, 4, 2) == 88
    # Twice the pace: half the crops, rounded down to whole micro-batches: 44 s / 1 s = 44 -> 11 x 4.
    assert replan_samples(100.0, 2, 4, 2, 1.0, 10.0, 1.0, 4, 2) == 44
    # With validation every epoch: epochs 3 and 4 both validate, (100 - 20 - 2) / 2 = 39 s -> 78 crops -> 19 x 4.
    assert replan_samples(100.0, 2, 4, 1, 0.5, 10.0, 1.0, 4, 1) == 76


def test_replan_samples_keeps_one_optimizer_step():
    # Nothing left (or overspent): one optimizer step per epoch, accumulate micro-batches of batch_size.
    assert replan_samples(0.0, 1, 3, 1, 0.5, 10.0, 1.0, 4, 2) == 8
    assert replan_samples(-50.0, 1, 3, 1, 0.5, 10.0, 1.0, 2, 1) == 2


def _trainer(fluo_subset, tmp_path, **train_over):
    cfg = resolve_config("tiny", overrides={"train": {"epochs": 4, **train_over}, "data": {"samples_per_epoch": 8}})
    t = Trainer(cfg, fluo_subset["train"], fluo_subset["val"], tmp_path / "run", quiet=True)
    t.load_data()
    t.build_model(pretrained=False)
    return t


def test_replan_rebuilds_the_schedule_at_the_same_step(fluo_subset, tmp_path):
    t = _trainer(fluo_subset, tmp_path, budget_seconds=100.0)
    assert t.micro_per_epoch == 4 and t.total_steps == 4 * 2  # 8 crops / batch 2 = 4 micro-batches, 2 steps per epoch
    st = RunState(opt_steps=2, loop_seconds=40.0, record_seconds=1.0)
    for _ in range(2):  # two optimizer steps of the old schedule
        t.optimizer.step()
        t.scheduler.step()
    # Epoch 1 took 8 s of training for 8 crops (1 s per crop) and 2 s of validation (tiny validates every epoch).
    # Left: 60 s for epochs 2..4: (60 - 3 x 2 - 3 x 1) / 3 = 17 s -> 17 crops -> 8 micro-batches of 2 = 16 crops.
    t._replan(st, {"epoch": 1, "epoch_seconds": 10.0, "val_seconds": 2.0, "crops": 8})
    assert t.micro_per_epoch == 8 and t.draws.num_samples == 16 and t.cfg.data.samples_per_epoch == 16
    assert t.total_steps == 2 + 3 * 4  # the steps done, then 4 per epoch for 3 epochs
    # The new schedule stands at step 2 of 14, past the warm-up (pct_start max(0.1, 1.5 / 14)), so the lr
    # is the cosine anneal from the peak at step 0.5 to the floor at step 13.
    sched = t.scheduler
    assert sched.last_epoch == 2
    cfg = t.cfg.train
    peak, floor = cfg.lr, cfg.lr / 25.0 / max(1.0, (cfg.lr / 25.0) / cfg.final_lr)
    warm_end = max(0.1, 1.5 / 14) * 14 - 1  # OneCycle's first phase ends at step pct_start x total - 1 = 0.5
    pct = (2 - warm_end) / (13 - warm_end)
    want = floor + (peak - floor) / 2 * (math.cos(math.pi * pct) + 1)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-6)


def test_replan_leaves_a_small_change_alone(fluo_subset, tmp_path):
    t = _trainer(fluo_subset, tmp_path, budget_seconds=100.0)
    before = t.scheduler
    # 2.5 s per crop and 30 s spent: (70 - 3 x 2 - 3 x 1) / 3 = 20.3 s per epoch -> 4 micro-batches of
    # 2 (5 s each) = 8 crops, the plan it has: nothing changes, the same scheduler object.
    t._replan(
        RunState(loop_seconds=30.0, record_seconds=1.0),
        {"epoch": 1, "epoch_seconds": 2 + 8 * 2.5, "val_seconds": 2.0, "crops": 8},
    )
    assert t.micro_per_epoch == 4 and t.scheduler is before


def test_replanned_run_resumes_with_its_plan(fluo_subset, tmp_path):
    # A budget above what 8 crops per epoch need: the first epoch re-plans (to more crops on most
    # machines); whatever the pace, the checkpoint holds the plan and its schedule, and the resumed run follows them.
    cfg = resolve_config("tiny", overrides={"train": {"epochs": 3, "budget_seconds": 8.0}})
    run = train(cfg, fluo_subset["train"], fluo_subset["val"], tmp_path / "run", quiet=True, stop_after=1)
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    n = saved["config"]["data"]["samples_per_epoch"]
    assert saved["scheduler"]["total_steps"] == 2 + 2 * math.ceil(n / 2 / 2)
    resume(run, quiet=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert int(rows[0]["crops"]) == 8 and all(int(r["crops"]) > 0 for r in rows)
    assert summary["crops"] == sum(int(r["crops"]) for r in rows)
    assert summary["opt_steps"] == sum(math.ceil(int(r["crops"]) / 2 / 2) for r in rows)


def test_replan_waits_for_a_measured_validation(fluo_subset, tmp_path):
    # val_every 2: after epoch 1 no pass has been timed, so the remaining ones cannot be costed yet.
    t = _trainer(fluo_subset, tmp_path, budget_seconds=100.0, val_every=2)
    t._replan(RunState(loop_seconds=10.0), {"epoch": 1, "epoch_seconds": 8.0, "crops": 8})
    assert t.micro_per_epoch == 4 and t.total_steps == 8
    # after epoch 2's pass (2 s): (100 - 20 - 2 x 1 - 1 x 2) / 2 epochs = 38 s at 1 s per crop -> 38 crops -> 19 x 2
    t._replan(
        RunState(loop_seconds=20.0, record_seconds=1.0),
        {"epoch": 2, "epoch_seconds": 10.0, "val_seconds": 2.0, "crops": 8},
    )
    assert t.micro_per_epoch == 19 and t.total_steps == 0 + 2 * 10


def test_replan_pace_is_the_median_of_the_last_three_epochs(fluo_subset, tmp_path):
    t = _trainer(fluo_subset, tmp_path, epochs=6, budget_seconds=1000.0)
    # Paces 1.0, 0.5 (a fast epoch), 4.0 (a slow one) and 1.0 s per crop: the last three's median is 1.0.
    rows = [
        {"epoch": e, "epoch_seconds": 8 * p + 2, "val_seconds": 2.0, "crops": 8}
        for e, p in ((1, 1.0), (2, 0.5), (3, 4.0))
    ]
    st = RunState(rows=rows, loop_seconds=100.0, record_seconds=1.0)
    t._replan(st, {"epoch": 4, "epoch_seconds": 10.0, "val_seconds": 2.0, "crops": 8})
    # left 900 s for epochs 5, 6 (both validate): (900 - 2 x 2 - 2 x 1) / 2 = 447 s at 1.0 s per crop (median of 0.5, 4, 1)
    # -> 223 micro-batches of 2 = 446 crops
    assert t.micro_per_epoch == 223


def test_replan_with_a_constant_schedule_keeps_the_lr(fluo_subset, tmp_path):
    # The plain smp baseline's schedule: the crops change as for one-cycle, the lr stays train.lr.
    t = _trainer(fluo_subset, tmp_path, budget_seconds=100.0, schedule="constant")
    t._replan(
        RunState(opt_steps=2, loop_seconds=40.0, record_seconds=1.0),
        {"epoch": 1, "epoch_seconds": 10.0, "val_seconds": 2.0, "crops": 8},
    )
    assert t.micro_per_epoch == 8 and t.total_steps == 2 + 3 * 4  # as in the one-cycle case above
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(t.cfg.train.lr)
