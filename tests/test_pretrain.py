"""`qmed pretrain simclr`: NT-Xent by hand, augmentations, the saved encoder's loading paths, a tiny CLI run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qmed.classify.pretrain import nt_xent, save_encoder, simclr_view
from qmed.cli.app import app
from qmed.models.classifier import build_classifier

runner = CliRunner()


def test_nt_xent_hand_computed_pairs_aligned():
    # Views a1=(3,0), a2=(0,1) and b1=(1,0), b2=(0,2); normalised, each view's partner has cosine 1
    # and the two other views cosine 0. With tau = 0.5 every view's logits are {2 (partner), 0, 0}:
    # l = -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = log(1.2706706) = 0.2395448 for all four views.
    z1 = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(0.2395448, abs=1e-6)


def test_nt_xent_hand_computed_asymmetric():
    # a1=(1,0), a2=(0,1), b1=(0.6,0.8), b2=(0,1), tau = 1. Cosines: a1.b1 0.6, a1.a2 0, a1.b2 0,
    # a2.b1 0.8, a2.b2 1, b1.b2 0.8. Per view (partner first):
    #   a1: -0.6 + log(e^0.6 + 1 + 1)            = -0.6 + log(3.8221188) = 0.7408049
    #   a2: -1   + log(1 + e^0.8 + e^1)          = -1 + log(5.9438227)   = 0.7823525
    #   b1: -0.6 + log(e^0.6 + e^0.8 + e^0.8)    = -0.6 + log(6.2732006) = 1.2362867
    #   b2: -1   + log(1 + e^1 + e^0.8)          =                          0.7823525
    # mean = 3.5417966 / 4 = 0.8854492
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    assert float(nt_xent(z1, z2, 1.0)) == pytest.approx(0.8854492, abs=1e-6)


def test_views_are_seeded_in_range_and_differ():
    x = torch.rand(3, 1, 32, 32)
    a = simclr_view(x, torch.Generator().manual_seed(1))
    b = simclr_view(x, torch.Generator().manual_seed(1))
    c = simclr_view(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_saved_encoder_loads_into_classifier_and_segmentation_encoder(name, tmp_path):
    """encoder.pth goes through classify's --weights path and segmentation's load_encoder_file."""
    import segmentation_models_pytorch as smp

    from qmed.models.weights import load_encoder_file, resolve_weights

    torch.manual_seed(0)
    src = build_classifier(name, 2, None)
    save_encoder(tmp_path / "encoder.pth", src.backbone)
    dst = build_classifier(name, 2, str(tmp_path / "encoder.pth"))
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k]), k

    hub, local = resolve_weights(str(tmp_path / "encoder.pth"), name)  # what --set model.encoder_weights=... does
    assert hub is None and local == tmp_path / "encoder.pth"
    enc = smp.Unet(name, encoder_weights=None, classes=1).encoder
    load_encoder_file(enc, local)
    own = enc.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in src.backbone.state_dict().items() if k in own)
    assert sum(k in own for k in src.backbone.state_dict()) == len(own)


@pytest.fixture()
def busi_few(shared_data, tmp_path) -> Path:
    """Two BUSI training images from each of two classes (labels are ignored by SimCLR)."""
    root = tmp_path / "unlabelled"
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for f in sorted((shared_data / "busi" / "train" / cls).glob("*.png"))[:2]:
            shutil.copy(f, root / cls / f.name)
    return root


def test_cli_pretrain_on_busi(busi_few, tmp_path):
    out = tmp_path / "ssl"
    r = runner.invoke(
        app,
        [
            "pretrain",
            "simclr",
            "--data",
            str(busi_few),
            "--out",
            str(out),
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--weights",
            "none",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads((out / "pretrain.json").read_text())
    assert s["n_images"] == 4 and s["steps"] == 2 and len(s["loss_curve"]) == 2
    assert s["settings"]["temperature"] == 0.5 and s["augmentations"]["vflip"] is None
    m = build_classifier("mobilenet_v2", 2, str(out / "encoder.pth"))  # what --weights OUT/encoder.pth loads
    saved = torch.load(out / "encoder.pth", weights_only=True)
    assert torch.equal(m.backbone.features[0][0].weight, saved["features.0.0.weight"])
    r = runner.invoke(app, ["pretrain", "simclr", "--data", str(busi_few), "--out", str(out), "--epochs", "1"])
    assert r.exit_code == 2 and "--force" in r.output


def test_cli_pretrain_on_npz_split(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8),
        train_labels=np.array([[0], [1]] * 3),
        val_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
        val_labels=np.array([[0], [1]]),
    )
    r = runner.invoke(
        app,
        [
            "pretrain",
            "simclr",
            "--data",
            f"{tmp_path / 'd.npz'}:train",
            "--out",
            str(tmp_path / "o"),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--weights",
            "none",
            "--model",
            "resnet18",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "pretrain.json").read_text())
    assert s["n_images"] == 6 and s["channels"] == 1 and s["steps"] == 2


@pytest.mark.parametrize("case", ["missing", "empty", "one image", "temperature"])
def test_pretrain_bad_input(case, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    args = []
    if case != "missing":
        data.mkdir()
    if case == "one image":
        Image.new("L", (20, 20)).save(data / "a.png")
    if case == "temperature":
        args = ["--temperature", "0"]
    r = runner.invoke(
        app, ["pretrain", "simclr", "--data", str(data), "--out", str(tmp_path / "o"), "--weights", "none", *args]
    )
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
