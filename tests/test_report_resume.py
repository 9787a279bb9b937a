"""Run reports (figures, best/worst selection) and resuming an interrupted run."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qmed.cli.app import app
from qmed.config import resolve_config
from qmed.report.run import select_cases
from qmed.segment.train import resume, train

runner = CliRunner()


def _row(name, dice, truth_empty=False, fp=0):
    return {"name": name, "dice": dice, "truth_empty": truth_empty, "fp": fp}


def test_select_cases_hand_made():
    rows = [
        _row("a", 0.9),
        _row("b", 0.5),
        _row("c", 0.99),
        _row("d", 0.7),
        _row("e", 0.7),
        _row("f", math.nan, truth_empty=True, fp=0),
        _row("g", 0.0, truth_empty=True, fp=12),
        _row("h", 0.0, truth_empty=True, fp=3),
    ]
    sel = select_cases(rows, k=2)
    assert [r["name"] for r in sel["best"]] == ["c", "a"]
    assert [r["name"] for r in sel["worst"]] == ["b", "d"]  # tie 0.7: d before e by name
    assert sel["empty_fp"]["name"] == "g"


def test_select_cases_no_empty_images():
    sel = select_cases([_row("a", 0.5)], k=4)
    assert [r["name"] for r in sel["best"]] == ["a"] and [r["name"] for r in sel["worst"]] == ["a"]
    assert sel["empty_fp"] is None


def test_tiny_run_writes_report(fluo_subset, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(fluo_subset["train"]),
            "--val",
            str(fluo_subset["val"]),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "Dice, per image, empty=1 (paper)" in md and "pooled over pixels" in md
    assert "data:image/png;base64," in html and "<table>" in html
    # The metrics section names the setting behind its figures (qmed predict --tta + evaluate differ).
    metrics = md.split("## Metrics", 1)[1].split("##", 1)[0]
    assert "checkpoints/best.pt, no TTA, threshold 0.5" in metrics and "--tta" in metrics
    assert "selected by the EMA of validation Dice" in md  # the tiny preset's train.selection
    scoring = json.loads((out / "report_metrics.json").read_text())["scoring"]
    assert scoring["tta"] == 1 and scoring["threshold"] == 0.5 and scoring["checkpoint"] == "checkpoints/best.pt"
    curves = Image.open(out / "figures" / "curves.png")
    assert curves.size == (1500, 500)
    for name in ("dice_hist.png", "best_1.png", "worst_1.png"):
        im = Image.open(out / "figures" / name)
        assert im.size[0] > 300 and np.asarray(im).std() > 0  # non-empty picture
    # 3 val images: best and worst both hold all 3 (plus the objects panel of each first case)
    assert len(list((out / "figures").glob("best_[0-9].png"))) == 3
    # Objects: watershed instances scored against the truth's objects, with a coloured panel.
    objects = md.split("## Objects", 1)[1].split("\n## ", 1)[0]
    assert "mean AP, IoU 0.5:0.05:0.95" in objects and "panoptic quality" in objects and "count error" in objects
    inst = json.loads((out / "report_metrics.json").read_text())["instances"]
    assert 0.0 <= inst["summary"]["map_dsb"]["mean"] <= 1.0 and len(inst["per_image"]) == 3
    assert all(r["n_truth"] > 0 for r in inst["per_image"])
    for name in ("best_1_objects.png", "worst_1_objects.png"):
        assert np.asarray(Image.open(out / "figures" / name)).std() > 0


def test_selection_label_names_the_rule():
    from qmed.config import TrainConfig
    from qmed.report.run import selection_label

    assert selection_label(TrainConfig()) == "EMA"
    assert selection_label(TrainConfig(selection="ema_debiased")) == "bias-corrected EMA"
    assert selection_label(TrainConfig(selection="window", selection_window=4)) == "mean of the last 4 epochs"


def test_label_colours_background_black_objects_distinct():
    from qmed.report.run import label_colours

    lab = np.zeros((4, 6), int)
    lab[0:2, 0:2], lab[2:4, 4:6] = 1, 2
    rgb = label_colours(lab)
    assert rgb.shape == (4, 6, 3)
    assert (rgb[lab == 0] == 0).all()
    assert (rgb[lab == 1] > 0).any(axis=1).all() and not np.allclose(rgb[0, 0], rgb[3, 5])
    assert (label_colours(np.zeros((3, 3), int)) == 0).all()  # no objects: all black


def test_resume_matches_uninterrupted(fluo_subset, tmp_path):
    cfg = resolve_config("tiny", overrides={"train": {"epochs": 2}})
    straight = train(cfg, fluo_subset["train"], fluo_subset["val"], tmp_path / "straight", quiet=True)
    # Interrupted: the same 2-epoch run stopped after epoch 1, then resumed.
    partial = train(cfg, fluo_subset["train"], fluo_subset["val"], tmp_path / "resumed", quiet=True, stop_after=1)
    assert len((partial / "metrics.csv").read_text().strip().splitlines()) == 2
    assert not (partial / "summary.json").exists()
    resume(partial, quiet=True)
    a = (straight / "metrics.csv").read_text().splitlines()
    b = (partial / "metrics.csv").read_text().splitlines()
    assert len(a) == len(b) == 3
    drop = {"epoch_seconds", "val_seconds"}
    header = a[0].split(",")
    for la, lb in zip(a[1:], b[1:]):
        ra = {k: v for k, v in zip(header, la.split(",")) if k not in drop}
        rb = {k: v for k, v in zip(header, lb.split(",")) if k not in drop}
        for k in ra:
            try:
                assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-4, abs=1e-6, nan_ok=True), k
            except ValueError:
                assert ra[k] == rb[k], k
