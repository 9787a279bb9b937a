"""`qmed benchmark suite` end to end at a tiny budget, `--preset auto` on real data, and the paired difference."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from qmed.cli.app import app
from qmed.data.planning import auto_config
from qmed.experiments.suite import bf16_note, method_per_image, paired_difference, pooled_per_image, work_done


def test_paired_difference_hand_computed():
    a = [{"name": "x", "d": 0.9}, {"name": "y", "d": 0.8}, {"name": "z", "d": None}, {"name": "only_a", "d": 1.0}]
    b = [{"name": "x", "d": 0.7}, {"name": "y", "d": 0.8}, {"name": "z", "d": 0.5}]
    d = paired_difference(a, b, key="d", n_boot=200)
    # shared and defined: x (+0.2) and y (0.0) -> mean +0.1; resamples of two values lie in [0, 0.2]
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.1) and (d["better"], d["worse"]) == (1, 0)
    assert 0.0 <= d["ci"][0] <= d["ci"][1] <= 0.2 + 1e-12
    assert paired_difference([], b, key="d")["n"] == 0


def _fake_suite(root, dataset, method, dice: dict):
    d = root / dataset / method
    d.mkdir(parents=True)
    rows = [{"name": n, "dice_empty1": v} for n, v in dice.items()]
    (d / "quality.json").write_text(json.dumps({"results": [], "per_image": {method: rows}}))
    return root


def test_pooled_per_image_hand_computed(tmp_path):
    a = _fake_suite(tmp_path / "a", "histo", "qmed", {"x": 0.9, "y": 0.6, "z": 0.5, "gone": 0.1})
    b = _fake_suite(tmp_path / "b", "histo", "qmed", {"x": 0.7, "y": 0.8, "z": None})
    assert method_per_image(a, "histo", "smp") == []  # a method the run never scored
    rows, means = pooled_per_image([a, b], "histo", "qmed")
    # z has no Dice in b and "gone" is only in a: pooled on x and y, x (0.9+0.7)/2 = 0.8, y (0.6+0.8)/2 = 0.7
    assert [r["name"] for r in rows] == ["x", "y"]
    assert [r["dice_empty1"] for r in rows] == pytest.approx([0.8, 0.7])
    assert means == pytest.approx([0.75, 0.75])  # a: (0.9+0.6)/2, b: (0.7+0.8)/2
    rows, means = pooled_per_image([a, b], "histo", "qmed", excluded={"y"})
    assert [r["dice_empty1"] for r in rows] == pytest.approx([0.8]) and means == pytest.approx([0.9, 0.7])
    # a run without the dataset drops out: a alone, (0.9+0.6+0.5+0.1)/4
    assert pooled_per_image([a, tmp_path / "missing"], "histo", "qmed")[1] == pytest.approx([0.525])
    assert pooled_per_image([tmp_path / "missing"], "histo", "qmed") == ([], [])
    # a lever screen keeps qmed's rows under base/ and lever/: folder picks the arm, method the rows
    (a / "histo" / "qmed").rename(a / "histo" / "lever")
    assert pooled_per_image([a], "histo", "qmed") == ([], [])
    rows, means = pooled_per_image([a], "histo", "qmed", folder="lever")
    assert [r["name"] for r in rows] == ["gone", "x", "y", "z"] and means == pytest.approx([0.525])


def test_work_done_and_bf16_note():
    # each method's schedule comes from its own calibration, so the row says how long training took
    assert (
        work_done({"work": "12 ep x 472 crops (1416 steps)", "train_seconds": 1867.2})
        == "12 ep x 472 crops (1416 steps), 31.1 min"
    )
    assert work_done({"work": "2 ep x 8 crops (4 steps)", "train_seconds": None}) == "2 ep x 8 crops (4 steps)"
    assert work_done({}) == "-"
    assert bf16_note({"cpu_native_bf16": True}) == ", native bfloat16: qmed per train.cpu_bf16, smp in float32"
    assert (
        bf16_note({"cpu_native_bf16": True}, smp_bf16=True)
        == ", native bfloat16: qmed per train.cpu_bf16, smp too (--smp-bf16)"
    )
    assert bf16_note({"cpu_native_bf16": False}) == ", no native bfloat16: both train in float32"
    assert bf16_note({}) == ""  # a document written before the field existed


def test_auto_config_on_fluorescence_is_the_cpu_recipe(fluo_subset, tmp_path):
    cfg = auto_config(fluo_subset["train"])
    assert cfg.name == "auto" and cfg.data.normalize == "percentile" and cfg.data.sampler == "uniform"  # 6 images
    assert cfg.reasons["modality"].startswith("fluorescence") and "data.crop" in cfg.reasons
    # a user's --set wins and drops the planner's reason for it
    cfg = auto_config(fluo_subset["train"], overrides=["data.crop=128"])
    assert cfg.data.crop == 128 and "data.crop" not in cfg.reasons
    # so does a --config file's
    (tmp_path / "mine.yaml").write_text("data:\n  crop: 64\n")
    cfg = auto_config(fluo_subset["train"], config_file=tmp_path / "mine.yaml")
    assert cfg.data.crop == 64 and "data.crop" not in cfg.reasons and "data.normalize" in cfg.reasons


def test_train_auto_writes_its_reasons(fluo_subset, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(fluo_subset["train"]),
            "--val",
            str(fluo_subset["val"]),
            "--out",
            str(out),
            "--quiet",
            "--no-report",
            "--set",
            "model.encoder_weights=null",
            "--set",
            "train.epochs=1",
            "--set",
            "data.samples_per_epoch=4",
            "--set",
            "data.crop=64",
            "--set",
            "model.decoder_channels=[32,32,16,16,16]",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "auto: modality: fluorescence" in res.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["name"] == "auto" and "data.normalize" in cfg["reasons"]


def test_suite_end_to_end_tiny(fluo_subset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fluo_subset["train"], root / "given" / "train")
    shutil.copytree(fluo_subset["val"], root / "given" / "val")
    shutil.copytree(fluo_subset["train"], root / "noval" / "train")  # 6 images, no val/: a seeded 5/1 split
    out = tmp_path / "suite"
    res = CliRunner().invoke(
        app,
        [
            "benchmark",
            "suite",
            "--data-root",
            str(root),
            "--datasets",
            "given,noval",
            "--minutes",
            "0.05",
            "--preset",
            "tiny",
            "--n-boot",
            "100",
            "--out",
            str(out),
            "--set",
            "train.val_every=2",
            "--train-seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "suite.json").read_text())
    assert doc["settings"]["qmed_overrides"] == ["train.val_every=2"] and doc["settings"]["train_seed"] == 3
    # the training seed reaches both methods (a second seed measures each one's own spread)
    for m in ("qmed", "smp"):
        assert yaml.safe_load((out / "given" / m / m / "run" / "config.yaml").read_text())["train"]["seed"] == 3
    # the lever reaches qmed's runs only; smp stays the plain script
    assert (
        yaml.safe_load((out / "given" / "qmed" / "qmed" / "run" / "config.yaml").read_text())["train"]["val_every"] == 2
    )
    assert (
        yaml.safe_load((out / "given" / "smp" / "smp" / "run" / "config.yaml").read_text())["train"]["val_every"] == 1
    )
    assert doc["finished"] and [r["dataset"] for r in doc["datasets"]] == ["given", "noval"]
    for r in doc["datasets"]:
        assert set(r["methods"]) == {"qmed", "smp"}
        assert all(m["status"] == "ok" for m in r["methods"].values()), r["methods"]
        assert r["paired_dice_empty1"]["n"] >= 1
    split = json.loads((out / "splits" / "noval.json").read_text())
    assert len(split["train"]) == 5 and len(split["val"]) == 1 and not set(split["train"]) & set(split["val"])
    assert isinstance(doc["machine"]["cpu_native_bf16"], bool) and " min |" in (out / "suite.md").read_text()
    assert (
        "qmed - smp" in (out / "suite.md").read_text()
        and "with --set train.val_every=2" in (out / "suite.md").read_text()
    )


def test_suite_refuses_a_missing_dataset(tmp_path):
    res = CliRunner().invoke(
        app, ["benchmark", "suite", "--data-root", str(tmp_path), "--datasets", "nope", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "nope" in res.output and not (tmp_path / "o").exists()


def test_train_auto_on_stained_tissue_picks_the_unet(histo_subset, tmp_path):
    """Real H&E (dsb2018-histo): auto plans the stained-tissue settings, the plain U-Net decoder on a
    CPU among them, trains it with the instance head, and `qmed predict --instances` runs on it."""
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(histo_subset["train"]),
            "--val",
            str(histo_subset["val"]),
            "--out",
            str(run),
            "--quiet",
            "--no-report",
            "--set",
            "model.encoder_weights=null",
            "--set",
            "train.epochs=1",
            "--set",
            "data.samples_per_epoch=4",
            "--set",
            "data.crop=64",
            "--set",
            "model.decoder_channels=[32,32,16,16,16]",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["reasons"]["modality"].startswith("brightfield-stain")
    assert (cfg["model"]["arch"], cfg["model"]["instance_head"], cfg["data"]["normalize"], cfg["train"]["lr"]) == (
        "unet",
        "contact",
        "none",
        2e-3,
    )
    assert "U-Net" in cfg["reasons"]["model.arch"]
    preds = tmp_path / "preds"
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(run),
            "--input",
            str(histo_subset["val"] / "images"),
            "--out",
            str(preds),
            "--instances",
        ],
    )
    assert res.exit_code == 0, res.output
    masks = sorted(p.name for p in preds.glob("*.png"))
    assert len(masks) == 2 and masks == sorted(p.name for p in (histo_subset["val"] / "images").iterdir())
    assert all((preds / "instances" / m).exists() for m in masks)
