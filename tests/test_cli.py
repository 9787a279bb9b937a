"""Tiny end-to-end runs of every CLI verb on real data from ../shared/data (and synthetic data)."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qmed.cli.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(fluo_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fluo"
    res = run(
        "train",
        "--preset",
        "tiny",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    return out


def test_inspect_real(shared_data):
    res = run("inspect", shared_data / "dsb2018-fluo" / "val")
    assert res.exit_code == 0, res.output
    assert "66" in res.output and "fluorescence" in res.output and "auto data.crop" in res.output


def test_train_writes_run(tiny_run):
    for f in (
        "config.yaml",
        "metrics.csv",
        "train.log",
        "run.json",
        "fingerprint.json",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (tiny_run / f).is_file(), f
    lines = (tiny_run / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 3  # header + 2 epochs
    header = lines[0].split(",")
    row = dict(zip(header, lines[-1].split(",")))
    assert 0.0 <= float(row["val_dice_empty1"]) <= 1.0
    assert np.isfinite(float(row["train_loss"]))


def test_predict_then_evaluate(tiny_run, fluo_subset, tmp_path):
    preds = tmp_path / "preds"
    res = run("predict", "--model", tiny_run, "--input", fluo_subset["val"] / "images", "--out", preds, "--tta")
    assert res.exit_code == 0, res.output
    names = sorted(p.stem for p in (fluo_subset["val"] / "images").iterdir())
    assert sorted(p.stem for p in preds.glob("*.png")) == names
    for n in names:
        m = np.array(Image.open(preds / f"{n}.png"))
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        p = np.array(Image.open(preds / "probabilities" / f"{n}.png"))
        assert p.dtype == np.uint16 and p.shape == m.shape
    # predict.json says what made the masks: the run's checkpoint, 7 TTA views, the threshold and tile.
    meta = json.loads((preds / "predict.json").read_text())
    assert meta["tta"] == 7 and meta["threshold"] == 0.5 and meta["tile"] == 128 and meta["n_images"] == len(names)
    assert meta["checkpoint"] == str((tiny_run / "checkpoints" / "best.pt").resolve())
    assert not list(preds.parent.glob(f".{preds.name}.*"))  # written inside the staging folder, nothing left beside
    out = tmp_path / "eval.json"
    res = run("evaluate", "--pred", preds, "--truth", fluo_subset["val"], "--out", out, "--n-boot", 100)
    assert res.exit_code == 0, res.output
    assert "predictions: TTA 7 views, threshold 0.5" in res.output  # the table caption states what was scored
    assert "ignoring" not in res.output  # predict.json is not taken for a prediction
    doc = json.loads(out.read_text())
    summary = doc["summary"]
    for key in ("dice_mean_empty1", "dice_mean_fg", "dice_pooled", "hd95", "small_object_recall"):
        assert key in summary
    assert summary["predictions"]["tta"] == 7 and summary["predictions"]["checkpoint"] == meta["checkpoint"]
    assert summary["predictions"]["description"].startswith("TTA 7 views, threshold 0.5, tile 128 px, from ")
    assert summary["n_images"] == len(names) and len(doc["per_image"]) == len(names)


def test_predict_progress_bar_over_images(tiny_run, fluo_subset, tmp_path, monkeypatch):
    """predict_folder shows a tqdm bar over the images (auto-disabled off a terminal); --quiet turns it off."""
    import tqdm.auto

    from qmed.segment.predict import predict_folder

    bars = []
    real = tqdm.auto.tqdm

    def spy(iterable=None, **kw):
        bars.append({"items": list(iterable), **kw})
        return real(bars[-1]["items"], **kw)

    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    n = predict_folder(tiny_run, fluo_subset["val"] / "images", tmp_path / "p", tta=True)
    assert len(bars) == 1 and len(bars[0]["items"]) == n == 3
    assert bars[0]["disable"] is None and bars[0]["unit"] == "image" and "TTA 7 views" in bars[0]["desc"]
    predict_folder(tiny_run, fluo_subset["val"] / "images", tmp_path / "q", quiet=True)
    assert bars[1]["disable"] is True
    assert json.loads((tmp_path / "q" / "predict.json").read_text())["tta"] == 1
    res = run(
        "predict", "--model", tiny_run, "--input", fluo_subset["val"] / "images", "--out", tmp_path / "r", "--quiet"
    )
    assert res.exit_code == 0, res.output


def test_predict_refuses_existing_output(tiny_run, fluo_subset, tmp_path):
    out = tmp_path / "preds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = run("predict", "--model", tiny_run, "--input", fluo_subset["val"] / "images", "--out", out)
    assert res.exit_code == 2
    assert "--force" in res.output and (out / "keep.txt").exists()


def test_predict_large_image_sliding_window(tiny_run, tmp_path):
    img = (np.random.default_rng(0).random((300, 420)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "big.png")
    res = run("predict", "--model", tiny_run, "--input", tmp_path / "in", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert np.array(Image.open(tmp_path / "p" / "big.png")).shape == (300, 420)


def test_train_bad_data_folder(tmp_path):
    res = run("train", "--preset", "tiny", "--data", tmp_path / "nope", "--out", tmp_path / "r")
    assert res.exit_code == 2
    assert "nope" in res.output and "Traceback" not in res.output


def test_train_refuses_existing_out(fluo_subset, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "x").write_text("1")
    res = run("train", "--preset", "tiny", "--data", fluo_subset["train"], "--out", out)
    assert res.exit_code == 2 and "--force" in res.output


def test_config_unknown_key_and_wrong_type(fluo_subset, tmp_path):
    res = run(
        "train", "--preset", "tiny", "--data", fluo_subset["train"], "--out", tmp_path / "r", "--set", "train.epoch=3"
    )
    assert res.exit_code == 2 and "train.epoch" in res.output and "unknown key" in res.output
    res = run(
        "train",
        "--preset",
        "tiny",
        "--data",
        fluo_subset["train"],
        "--out",
        tmp_path / "r",
        "--set",
        "train.epochs=lots",
    )
    assert res.exit_code == 2 and "train.epochs" in res.output


def test_demo_tiny(tmp_path):
    res = run("demo", "--preset", "tiny", "--minutes", 0.2, "--n-train", 6, "--n-val", 3, "--out", tmp_path / "demo")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "demo" / "evaluation.json").is_file()
    assert (tmp_path / "demo" / "run" / "checkpoints" / "best.pt").is_file()
    # The demo writes the run report and says where it is and how to re-draw it.
    run_dir = tmp_path / "demo" / "run"
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()
    assert "best.pt, no TTA" in (run_dir / "report.md").read_text()
    flat = " ".join(res.output.split())
    assert "qmed report" in flat and "report.md" in flat
    evaluation = json.loads((tmp_path / "demo" / "evaluation.json").read_text())
    assert evaluation["summary"]["predictions"]["tta"] == 7
    # The object rows score qmed's own label maps (predict --instances), and the demo says so under the table.
    assert evaluation["summary"]["settings"]["pred_kind"] == "labels" and evaluation["summary"]["pred_kinds"] == {
        "labels": 3
    }
    assert "map_dsb" in evaluation["summary"] and evaluation["summary"]["predictions"]["instances"] is True
    assert "the label maps of qmed predict --instances" in flat


def test_inspect_classification_data(shared_data):
    res = run("inspect", shared_data / "busi" / "train", "--positive", "malignant")
    assert res.exit_code == 0, res.output
    assert "malignant" in res.output and "majority:minority" in res.output
    res = run("inspect", shared_data / "pneumoniamnist" / "pneumoniamnist.npz")
    assert res.exit_code == 0, res.output
    assert "train: 4707 images" in res.output


def test_train_minutes_fits_the_schedule_to_the_budget(fluo_subset, tmp_path):
    import yaml

    out = tmp_path / "r"
    res = run(
        "train",
        "--preset",
        "tiny",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--quiet",
        "--no-report",
        "--minutes",
        "0.2",
    )
    assert res.exit_code == 0, res.output
    assert "calibrated" in res.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # budget + 5 %, or more where a slow or busy machine needs longer for the preset's floor of steps
    assert cfg["train"]["max_minutes"] >= 1.05 * 0.2 - 1e-9
    assert 1 <= cfg["train"]["epochs"] <= 2  # at most the preset's
    assert cfg["data"]["samples_per_epoch"] % 2 == 0 and cfg["data"]["samples_per_epoch"] >= 2
    assert (out / "summary.json").is_file()
    res = run("train", "--resume", out, "--minutes", "1")
    assert res.exit_code == 2 and "--minutes" in res.output


def test_predict_rescale_records_scales(tiny_run, fluo_subset, tmp_path):
    import torch

    state = torch.load(tiny_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert state["config"]["predict"]["object_diameter"] > 1  # qmed train measured the training masks
    res = run(
        "predict", "--model", tiny_run, "--input", fluo_subset["val"] / "images", "--out", tmp_path / "p", "--rescale"
    )
    assert res.exit_code == 0, res.output
    scales = json.loads((tmp_path / "p" / "scales.json").read_text())
    assert sorted(scales["scales"]) == sorted(p.name for p in (fluo_subset["val"] / "images").iterdir())
    assert all(0.5 <= f <= 2.0 for f in scales["scales"].values())
    # A checkpoint without the training diameter (an older run) gets a one-line error, not a guess.
    state["config"]["predict"]["object_diameter"] = None
    torch.save(state, tmp_path / "old.pt")
    res = run(
        "predict",
        "--model",
        tmp_path / "old.pt",
        "--input",
        fluo_subset["val"] / "images",
        "--out",
        tmp_path / "q",
        "--rescale",
    )
    assert res.exit_code == 2 and "--object-diameter" in res.output
    assert not (tmp_path / "q").exists()


@pytest.mark.skipif(
    not __import__("qmed.runtime").runtime.cpu_has_native_bf16(),
    reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)",
)
def test_train_cpu_bf16_budgeted(fluo_subset, tmp_path):
    """bfloat16 training steps, calibration and validation on the CPU; the checkpoint stays float32."""
    import torch

    out = tmp_path / "bf16"
    res = run(
        "train",
        "--preset",
        "tiny",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--quiet",
        "--no-report",
        "--minutes",
        "0.2",
        "--set",
        "train.cpu_bf16=true",
    )
    assert res.exit_code == 0, res.output
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    row = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert np.isfinite(float(row["train_loss"])) and 0.0 <= float(row["val_dice_empty1"]) <= 1.0
    state = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    weights = state["model"] if "model" in state else state
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values() if torch.is_tensor(v))


def test_train_hard_sampler_tracks_per_image_loss(fluo_subset, tmp_path):
    """data.sampler=hard: the run state carries a running loss for every image drawn so far."""
    import torch

    out = tmp_path / "hard"
    res = run(
        "train",
        "--preset",
        "tiny",
        "--data",
        fluo_subset["train"],
        "--val",
        fluo_subset["val"],
        "--out",
        out,
        "--quiet",
        "--no-report",
        "--set",
        "data.sampler=hard",
    )
    assert res.exit_code == 0, res.output
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    hard = state["run"]["hardness"]
    seen = [h for h in hard if h is not None]
    assert seen and all(0.0 <= h <= 1.0 for h in seen)


def test_train_without_val_reports_on_the_split(fluo_subset, tmp_path):
    """No --val: the run validates on images split off --data, and the report scores those same images."""
    import json

    out = tmp_path / "noval"
    res = run(
        "train", "--preset", "tiny", "--data", fluo_subset["train"], "--out", out, "--quiet", "--set", "train.epochs=1"
    )
    assert res.exit_code == 0, res.output
    split = json.loads((out / "run.json").read_text())["val_split"]
    assert len(split) == 1  # 20 % of 6 images, rounded
    rep = json.loads((out / "report_metrics.json").read_text())
    assert [r["name"] for r in rep["per_image"]] == split
    assert "split off for validation" in (out / "report.md").read_text()


def test_run_with_val_records_no_split(tiny_run):
    import json

    assert json.loads((tiny_run / "run.json").read_text())["val_split"] is None


def test_train_on_every_image_without_validation(fluo_subset, tmp_path):
    """data.val_fraction=0 and no --val: all 6 images train, no epoch is validated, best.pt is the
    last epoch, the report is left for held-out data (qmed report --data), which then works."""
    import csv
    import json

    out = tmp_path / "all"
    res = run(
        "train",
        "--preset",
        "tiny",
        "--data",
        fluo_subset["train"],
        "--out",
        out,
        "--quiet",
        "--minutes",
        "0.1",
        "--set",
        "data.val_fraction=0",
    )
    assert res.exit_code == 0, res.output
    assert "no validation images" in " ".join(res.output.split()) and not (out / "report.md").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["val"] is None and meta["val_split"] == []
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert rows and all(r["val_score"] in ("", "nan") for r in rows)
    assert (out / "checkpoints" / "best.pt").read_bytes() == (out / "checkpoints" / "last.pt").read_bytes()
    res = run("report", out, "--data", fluo_subset["val"])
    assert res.exit_code == 0, res.output
    assert (out / "report.md").is_file()
    res = run(
        "train",
        "--preset",
        "tiny",
        "--data",
        fluo_subset["train"],
        "--out",
        tmp_path / "bad",
        "--set",
        "data.val_fraction=1",
    )
    assert res.exit_code == 2 and "val_fraction" in res.output
