"""The floor of useful work: a budget too small for a useful model trains the floor and says so."""

from qmed.config import resolve_config
from qmed.segment.budget import apply_floor, plan_budget


def test_plan_above_the_floor_is_unchanged():
    p = plan_budget(1800, t_micro=1.0, t_val=10.0, batch_size=4, accumulate=2, max_epochs=12)
    assert p["optimizer_steps"] >= 100
    assert apply_floor(p, 100, 1.0, 10.0, 4, 2) == {**p, "overran": False}


def test_no_floor_keeps_any_plan():
    p = plan_budget(30, t_micro=4.6, t_val=5.0, batch_size=4, accumulate=2, max_epochs=12)
    assert apply_floor(p, 0, 4.6, 5.0, 4, 2)["overran"] is False


def test_small_budget_is_raised_to_the_floor():
    # 60 s at 4.6 s per micro-batch: plan_budget gives 1 epoch ((0.25*60)/(5+1) = 2.5 -> 2 epochs,
    # then (60/2 - 5 - 1)/4.6 = 5.2 -> 4 micro (accumulate 2) -> 2 epochs x 2 steps = 4 steps).
    p = plan_budget(60, t_micro=4.6, t_val=5.0, batch_size=4, accumulate=2, max_epochs=12)
    assert (p["epochs"], p["micro_steps_per_epoch"], p["optimizer_steps"]) == (2, 4, 4)
    f = apply_floor(p, 100, 4.6, 5.0, 4, 2)
    # 100 steps over 2 epochs: 50 steps = 100 micro-batches = 400 crops per epoch;
    # time 2 x (100 x 4.6 + 5 + 1) = 932 s.
    assert f["overran"] and f["budget_steps"] == 4 and f["epochs"] == 2
    assert (f["micro_steps_per_epoch"], f["samples_per_epoch"], f["optimizer_steps"]) == (100, 400, 100)
    assert f["estimated_seconds"] == 932.0


def test_presets_floor():
    assert resolve_config("cpu").train.min_steps == 200
    assert resolve_config("tiny").train.min_steps == 0


def test_validations_count_every_nth_epoch_and_the_last():
    from qmed.segment.budget import validations

    assert [validations(e, 3) for e in (1, 2, 3, 4, 12, 13)] == [1, 1, 1, 2, 4, 5]
    assert validations(12, 1) == 12 and validations(5, 0) == 5  # 0 is treated as every epoch


def test_validating_less_buys_steps():
    # 1800 s, 1 s per micro-batch, 30 s per validation, 1 s overhead, 12 epochs, accumulate 1.
    # Every epoch: (1800 - 12 x 30 - 12) / 12 = 119 micro per epoch -> 1428 steps, 1800 s.
    p1 = plan_budget(1800, t_micro=1.0, t_val=30.0, batch_size=4, accumulate=1, max_epochs=12)
    assert (p1["epochs"], p1["micro_steps_per_epoch"], p1["estimated_seconds"]) == (12, 119, 1800.0)
    # Every 3rd epoch: 4 passes, (1800 - 4 x 30 - 12) / 12 = 139 -> 1668 steps; 12 x 140 + 120 = 1800 s.
    p3 = plan_budget(1800, t_micro=1.0, t_val=30.0, batch_size=4, accumulate=1, max_epochs=12, val_every=3)
    assert (p3["epochs"], p3["micro_steps_per_epoch"], p3["optimizer_steps"]) == (12, 139, 1668)
    assert p3["estimated_seconds"] == 1800.0
    f = apply_floor(p3, 2000, 1.0, 30.0, 4, 1, val_every=3)  # 2000 / 12 -> 167 micro; 12 x 168 + 120 = 2136 s
    assert (f["micro_steps_per_epoch"], f["estimated_seconds"]) == (167, 2136.0)
