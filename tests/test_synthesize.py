"""`qmed synthesize` (small DDPM) and `qmed classify train --synthetic` (training set only, never validation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("diffusers")

from qmed.classify.synthesize import build_unet, gray_if_equal, kid, nearest_rms, sample, train_step  # noqa: E402
from qmed.cli.app import app  # noqa: E402

runner = CliRunner()


def test_ddpm_trains_one_step_and_samples_16px():
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = build_unet(16, 1)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in unet.parameters()]
    loss = train_step(unet, sched, torch.rand(4, 1, 16, 16) * 2 - 1, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters()))
    x = sample(unet, sched, 3, steps=2, seed=5)
    assert x.shape == (3, 1, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, sample(unet, sched, 3, steps=2, seed=5))


def test_gray_detection():
    g = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    assert gray_if_equal(g.expand(-1, 3, -1, -1)).shape[1] == 1
    marked = g.expand(-1, 3, -1, -1).clone()
    marked[1, :, 0, 0] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # a red mark on 1 of 128 pixels: still gray
    assert gray_if_equal(marked).shape[1] == 1
    colour = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    assert gray_if_equal(colour).shape[1] == 3


def test_nearest_neighbour_sees_mirrors_and_leaves_one_out():
    a = torch.zeros(1, 2, 2)
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    ref = torch.stack([a, b])
    d, j = nearest_rms(b.flip(-1)[None], ref)  # a mirrored copy of b: distance 0 to b
    assert d[0] == 0 and j[0] == 1
    d, j = nearest_rms(ref, ref, leave_one_out=True)  # a and b differ in 2 of 4 pixels by 1: RMS sqrt(2/4)
    assert np.allclose(d, np.sqrt(0.5)) and list(j) == [1, 0]


def test_kid_separates_shifted_features():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    same, shifted = kid(x, y, n_subsets=20)["mean"], kid(x, y + 1.0, n_subsets=20)["mean"]
    assert abs(same) < 0.05 < shifted


@pytest.fixture()
def malignant_few(shared_data, tmp_path) -> Path:
    root = tmp_path / "malignant"
    root.mkdir()
    for f in sorted((shared_data / "busi" / "train" / "malignant").glob("*.png"))[:4]:
        shutil.copy(f, root / f.name)
    return root


def test_cli_synthesize_on_busi(malignant_few, tmp_path):
    out = tmp_path / "syn"
    r = runner.invoke(
        app,
        [
            "synthesize",
            "--data",
            str(malignant_few),
            "--n",
            "3",
            "--out",
            str(out),
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--sample-steps",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 3 and np.asarray(Image.open(pngs[0])).shape == (
        16,
        16,
    )  # BUSI is gray saved as RGB -> 1 channel
    assert (out / "ddpm" / "model_index.json").is_file() and (out / "samples.png").is_file()
    assert not [
        p for p in out.iterdir() if p.name.startswith(".") and p.name != ".qmed-output.json"
    ]  # no staging folder left behind
    s = json.loads((out / "synthesize.json").read_text())
    assert s["n_train"] == 4 and s["n_images"] == 3 and s["channels"] == 1 and s["sampling"]["steps"] == 2
    q = s["quality"]
    assert len(q["nearest_neighbour"]["per_image"]) == 3 and q["nearest_neighbour"]["synthetic_to_train"]["median"] > 0
    assert q["kid"] is None or np.isfinite(q["kid"]["mean"])
    from diffusers import DDPMPipeline

    assert DDPMPipeline.from_pretrained(out / "ddpm").unet.config.sample_size == 16


@pytest.mark.parametrize("case", ["missing", "empty", "n0", "file"])
def test_synthesize_bad_input(case, tmp_path):
    data = tmp_path / "data"
    n = "0" if case == "n0" else "2"
    if case in ("empty", "n0"):
        data.mkdir()
    if case == "file":
        Image.new("L", (20, 20)).save(tmp_path / "a.png")
        data = tmp_path / "a.png"
    r = runner.invoke(app, ["synthesize", "--data", str(data), "--n", n, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output


# --- classify train --synthetic --------------------------------------------------------------------


def _write(folder: Path, n: int, seed: int, size: int = 24) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
            folder / f"{folder.name}_{seed}_{i}.png"
        )


@pytest.fixture()
def tiny_classes(tmp_path) -> dict[str, Path]:
    for i, (split, k) in enumerate((("train", 6), ("val", 3))):
        for j, cls in enumerate(("benign", "malignant", "normal")):
            _write(tmp_path / split / cls, k if cls != "malignant" else k // 2, seed=10 * i + j)
    _write(tmp_path / "syn" / "images", 5, seed=7)  # the layout qmed synthesize writes
    return {"train": tmp_path / "train", "val": tmp_path / "val", "syn": tmp_path / "syn"}


@pytest.mark.parametrize("with_val", [True, False])
def test_synthetic_images_reach_training_only(tiny_classes, with_val):
    from qmed.classify.data import load_split
    from qmed.config import ClassifyConfig

    val = str(tiny_classes["val"]) if with_val else None
    base = ClassifyConfig(positive="malignant", image_size=32)
    tr0, va0 = load_split(str(tiny_classes["train"]), val, base)
    cfg = ClassifyConfig(positive="malignant", image_size=32, synthetic=str(tiny_classes["syn"]))
    tr, va = load_split(str(tiny_classes["train"]), val, cfg)
    assert len(tr) == len(tr0) + 5 and tr.counts() == [tr0.counts()[0], tr0.counts()[1] + 5]
    assert va.names == va0.names and torch.equal(va.images, va0.images) and torch.equal(va.labels, va0.labels)
    assert not any(n.startswith("synthetic:") for n in va.names)
    assert sum(n.startswith("synthetic:") for n in tr.names) == 5
    assert tr.images.shape[1:] == tr0.images.shape[1:]


def test_cli_classify_train_with_synthetic(tiny_classes, tmp_path):
    pytest.importorskip("pennylane")
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "classify",
            "train",
            "--data",
            str(tiny_classes["train"]),
            "--val",
            str(tiny_classes["val"]),
            "--positive",
            "malignant",
            "--synthetic",
            str(tiny_classes["syn"]),
            "--out",
            str(out),
            "--no-pqc",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--epochs",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["synthetic"]["n"] == 5 and s["synthetic"]["class"] == "malignant"
    assert s["train"]["n"] == 15 + 5 and s["train"]["counts"]["malignant"] == 3 + 5
    assert s["val"]["n"] == 7
    preds = (out / "eval" / "predictions.csv").read_text()
    assert "synthetic" not in preds and "syn_" not in preds


def test_synthetic_class_errors(tiny_classes, tmp_path):
    r = runner.invoke(
        app,
        [
            "classify",
            "train",
            "--data",
            str(tiny_classes["train"]),
            "--val",
            str(tiny_classes["val"]),
            "--synthetic",
            str(tiny_classes["syn"]),
            "--out",
            str(tmp_path / "r"),
            "--weights",
            "none",
        ],
    )
    assert r.exit_code == 2 and "--synthetic-class" in r.output, r.output
    r = runner.invoke(
        app,
        [
            "classify",
            "train",
            "--data",
            str(tiny_classes["train"]),
            "--positive",
            "malignant",
            "--synthetic",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "r"),
            "--weights",
            "none",
        ],
    )
    assert r.exit_code == 2 and "does not exist" in r.output, r.output
