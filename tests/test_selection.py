"""Model selection: the smoothing rules of the validation score that pick best.pt."""

import math

import pytest

from qmed.segment.train import selection_score


def test_selection_scores_hand_computed():
    """The three selection rules on scores 0.5, 0.8, 0.9 (alpha 0.5, window 2), worked by hand."""
    h = [0.5, 0.8, 0.9]
    # paper eq. 6: 0.5 -> 0.5*0.5 + 0.5*0.8 = 0.65 -> 0.5*0.65 + 0.5*0.9 = 0.775
    assert selection_score(h, "ema", 0.5) == pytest.approx(0.775)
    # zero-started: 0.25 -> 0.525 -> 0.7125; / (1 - 0.5^3) = 0.875 -> 0.8142857
    assert selection_score(h, "ema_debiased", 0.5) == pytest.approx(0.7125 / 0.875)
    assert selection_score(h[:1], "ema_debiased", 0.9) == pytest.approx(0.5)  # corrected: the first score itself
    assert selection_score(h, "window", window=2) == pytest.approx(0.85)
    assert selection_score(h, "window", window=5) == pytest.approx(2.2 / 3)
    assert selection_score(h, "ema", 0.0) == pytest.approx(0.9)  # alpha 0: the raw score (the smp baseline)
    assert math.isnan(selection_score([], "window"))
    with pytest.raises(ValueError):
        selection_score(h, "median")


def test_rising_scores_select_last_epoch_with_every_rule():
    """Scores that rise every epoch: every rule's score rises too, so each epoch is selected in turn."""
    h = [0.6, 0.7, 0.75, 0.8, 0.82]
    for rule in ("ema", "ema_debiased", "window"):
        s = [selection_score(h[: t + 1], rule, 0.9, 3) for t in range(len(h))]
        assert s == sorted(s), rule
    # The debiased EMA trails less than the paper's: closer to the last score.
    assert selection_score(h, "ema_debiased", 0.9) > selection_score(h, "ema", 0.9)


def test_window_rule_in_a_tiny_run(fluo_subset, tmp_path):
    """train.selection=window: metrics.csv's val_ema column is the window mean of val_score."""
    import csv

    from qmed.config import resolve_config
    from qmed.segment.train import train

    cfg = resolve_config("tiny", overrides={"train": {"epochs": 3, "selection": "window", "selection_window": 2}})
    run = train(cfg, fluo_subset["train"], fluo_subset["val"], tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    scores = [float(r["val_score"]) for r in rows]
    want = [scores[0], (scores[0] + scores[1]) / 2, (scores[1] + scores[2]) / 2]
    assert [float(r["val_ema"]) for r in rows] == pytest.approx(want, abs=1e-5)  # metrics.csv keeps 6 digits
    # val_per_image.csv: 3 epochs x 3 val images, whose mean per epoch is metrics.csv's val_score.
    per = list(csv.DictReader(open(run / "val_per_image.csv", newline="")))
    assert len(per) == 9 and {r["epoch"] for r in per} == {"1", "2", "3"}
    for e, s in enumerate(scores, 1):
        assert sum(float(r["dice_empty1"]) for r in per if r["epoch"] == str(e)) / 3 == pytest.approx(s, abs=1e-5)


def test_val_per_image_rewrites_redone_epochs(tmp_path):
    """A resumed run redoes epochs: their old lines go, earlier epochs' stay."""
    import csv

    from qmed.segment.train import record_val_per_image

    p = tmp_path / "v.csv"
    record_val_per_image(p, 1, [{"name": "a", "dice_empty1": 0.5}])
    record_val_per_image(p, 2, [{"name": "a", "dice_empty1": 0.6}])
    record_val_per_image(p, 2, [{"name": "a", "dice_empty1": 0.7}])  # epoch 2 again, after a resume
    rows = list(csv.DictReader(open(p, newline="")))
    assert [(r["epoch"], r["dice_empty1"]) for r in rows] == [("1", "0.5"), ("2", "0.7")]


def test_val_every_validates_every_nth_epoch_and_the_last(fluo_subset, tmp_path):
    """train.val_every=2 over 3 epochs: epochs 2 and 3 are validated, epoch 1 has no val figures."""
    import csv

    from qmed.config import resolve_config
    from qmed.segment.train import train

    cfg = resolve_config("tiny", overrides={"train": {"epochs": 3, "val_every": 2}})
    run = train(cfg, fluo_subset["train"], fluo_subset["val"], tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    assert [r["val_score"] != "" and r["val_score"] != "nan" for r in rows] == [False, True, True]
    per = list(csv.DictReader(open(run / "val_per_image.csv", newline="")))
    assert {r["epoch"] for r in per} == {"2", "3"}
    assert (run / "checkpoints" / "best.pt").is_file()
