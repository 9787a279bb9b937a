"""The one training step (qmed.segment.trainstep): its non-finite guard, and that the budget
calibration and the speed benchmark run it rather than a copy of their own."""

import torch

from qmed.config import resolve_config
from qmed.data.synthetic import write_dataset
from qmed.segment import trainstep
from qmed.segment.trainstep import EpochTally, StepParts


def _spy(monkeypatch) -> list:
    calls = []
    real = trainstep.micro_step

    def spy(p, *args, **kwargs):
        calls.append(p.model)
        return real(p, *args, **kwargs)

    monkeypatch.setattr(trainstep, "micro_step", spy)
    return calls


def _parts(loss_fn) -> StepParts:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return StepParts(
        model,
        loss_fn,
        torch.optim.SGD(model.parameters(), lr=0.1),
        scaler,
        torch.device("cpu"),
        None,
        accumulate=2,
        clip_grad=None,
    )


def test_non_finite_loss_skips_its_micro_batch_and_finite_ones_still_step():
    nan_next = [True]

    def loss_fn(logits, y):
        loss = torch.nn.functional.mse_loss(logits, y)
        return loss * float("nan") if nan_next[0] else loss

    p, tally = _parts(loss_fn), EpochTally()
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    before = p.model.weight.detach().clone()
    assert not trainstep.micro_step(p, x, y, False, tally)
    assert (tally.bad, tally.streak, tally.pending, tally.n_ok) == (1, 1, 0, 0)
    assert not trainstep.micro_step(p, x, y, True, tally)  # a group with no finite micro-batch: no step
    assert torch.equal(p.model.weight, before)
    nan_next[0] = False
    trainstep.micro_step(p, x, y, False, tally)
    assert trainstep.micro_step(p, x, y, True, tally)
    assert (tally.n_ok, tally.pending, tally.streak) == (2, 0, 0)
    assert not torch.equal(p.model.weight, before)


def test_budget_calibration_runs_the_trainers_step(tmp_path, monkeypatch):
    from qmed.segment.budget import calibrate

    train_dir = write_dataset(tmp_path / "train", 4, (96, 96), seed=1)
    val_dir = write_dataset(tmp_path / "val", 2, (96, 96), seed=2)
    calls = _spy(monkeypatch)
    cal = calibrate(resolve_config("tiny"), train_dir, val_dir, "cpu", n_steps=2, warmup=1, max_val_images=1)
    assert len(calls) == 3
    assert cal["t_micro"] > 0


def test_speed_benchmark_runs_the_trainers_step(monkeypatch):
    from qmed.experiments.common import smp_baseline_config
    from qmed.experiments.speed import SpeedRun, synthetic_pairs

    cfg = resolve_config("tiny")
    base_cfg = smp_baseline_config("tiny")
    base_cfg = base_cfg.model_copy(update={"data": base_cfg.data.model_copy(update={"crop": cfg.data.crop})})
    run = SpeedRun(cfg, torch.device("cpu"), False, False, 1, lambda *a: None)
    recipe, bare = run.add_data(synthetic_pairs(cfg.data.crop, n=2), base_cfg, cfg.train.batch_size)
    calls = _spy(monkeypatch)
    # adding a step warms it up: one call for the bare step, one accumulation group for the recipe's
    run.add_train_steps(recipe, bare, cfg.train.batch_size)
    bare_model, recipe_model = run.setups["bare"].model, run.setups["recipe"].model
    assert [id(m) for m in calls] == [id(bare_model)] + [id(recipe_model)] * cfg.train.accumulate
