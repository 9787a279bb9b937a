"""Issue 20's learned instance head (model.instance_head=contact): the contact target, the loss,
the two-channel model, the crops, the contact-seeded split, and a tiny run through train,
predict --instances, the report and ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from qmed.config import resolve_config
from qmed.data.objects import contact_map
from qmed.errors import QmedInputError
from qmed.segment.instances import split_instances
from qmed.segment.losses import ContactLoss, DeepSupervisionLoss, DiceBCELoss, loss_from_config


def two_squares() -> np.ndarray:
    lab = np.zeros((3, 6), dtype=np.int32)
    lab[:, :3], lab[:, 3:] = 1, 2
    return lab


def test_contact_map_hand_computed():
    lab = two_squares()
    want1 = np.zeros((3, 6), bool)
    want1[:, 2:4] = True  # width 1: the column each side of the meeting line
    assert np.array_equal(contact_map(lab, 1), want1)
    want2 = np.zeros((3, 6), bool)
    want2[:, 1:5] = True  # width 2: two columns each side
    assert np.array_equal(contact_map(lab, 2), want2)
    # the reach is a disc: squares meeting at a corner touch only at (1, 1) and (2, 2), sqrt(2) apart;
    # (0, 1) is sqrt(5) > 2 px from (2, 2), out of reach of width 2
    diag = np.zeros((5, 5), np.int32)
    diag[:2, :2], diag[2:, 2:] = 1, 2
    c = contact_map(diag, 2)
    assert c.sum() == 2 and c[1, 1] and c[2, 2]


@pytest.mark.parametrize(
    "lab",
    [
        np.zeros((5, 5), np.int32),  # empty
        np.pad(np.ones((3, 3), np.int32), 1),  # one object against background
        np.array([[1, 1, 0, 2, 2]] * 3, np.int32),
    ],  # two objects with a 1 px gap
    ids=["empty", "one-object", "gap"],
)
def test_contact_map_without_touching(lab):
    assert not contact_map(lab, 1).any()
    # "gap": columns 1 and 3 are 2 px apart, so within width 2: nearly touching counts as contact
    assert contact_map(lab, 2).sum() == (6 if lab.max() == 2 else 0)


def test_binary_masks_components_never_touch():
    from qmed.data.objects import label_components

    fg = np.zeros((20, 20), bool)
    fg[2:8, 2:8] = fg[8:14, 5:12] = True  # two squares sharing an edge: one 8-connected component
    assert not contact_map(label_components(fg), 2).any()


def test_contact_loss_hand_computed_and_composed():
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    # each channel: p = 0.5 everywhere, no positives: Dice loss 1 - 1 / (2 + 1) = 2/3, BCE ln 2
    per = 0.5 * (2 / 3) + 0.5 * np.log(2)
    assert float(ContactLoss(DiceBCELoss(), weight=1.0)(logits, target)) == pytest.approx(2 * per, rel=1e-6)
    assert float(ContactLoss(DiceBCELoss(), weight=0.0)(logits, target)) == pytest.approx(per, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 2, 16, 16, generator=g), (torch.rand(2, 2, 16, 16, generator=g) > 0.7).float()
    loss = ContactLoss(DiceBCELoss(), weight=0.5)
    want = DiceBCELoss()(x[:, :1], y[:, :1]) + 0.5 * DiceBCELoss()(x[:, 1:], y[:, 1:])
    assert float(loss(x, y)) == pytest.approx(float(want), rel=1e-6) and loss.last["contact"] > 0
    # deep supervision: the auxiliary outputs (one channel each) are foreground only
    aux = torch.randn(2, 1, 16, 16, generator=g)
    ds = ContactLoss(DeepSupervisionLoss(DiceBCELoss(), [0.5, 0.25, 0.125]), weight=1.0)
    want = DeepSupervisionLoss(DiceBCELoss(), [0.5, 0.25, 0.125])((x[:, :1], aux, aux, aux), y[:, :1]) + DiceBCELoss()(
        x[:, 1:], y[:, 1:]
    )
    assert float(ds((x, aux, aux, aux), y)) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="B, 2, H, W"):
        loss(x[:, :1], y[:, :1])


def test_loss_from_config_wraps_for_the_head():
    cfg = resolve_config("tiny", overrides={"model": {"instance_head": "contact"}, "train": {"contact_weight": 2.0}})
    loss = loss_from_config(cfg.train, instance_head=cfg.model.instance_head)
    assert isinstance(loss, ContactLoss) and loss.weight == 2.0
    assert not isinstance(loss_from_config(cfg.train), ContactLoss)


def test_model_with_head_has_two_channels():
    from qmed.models.segmenter import build

    cfg = resolve_config("tiny", overrides={"model": {"instance_head": "contact", "deep_supervision": True}})
    m = build(cfg.model, pretrained=False)
    x = torch.rand(2, 3, 64, 64)
    m.eval()
    assert m(x).shape == (2, 2, 64, 64)
    m.train()
    out = m(x)
    assert out[0].shape == (2, 2, 64, 64) and all(a.shape == (2, 1, 64, 64) for a in out[1:])
    with pytest.raises(Exception, match="instance_head needs arch"):
        resolve_config("tiny", overrides={"model": {"instance_head": "contact", "arch": "attention_unet"}})


def test_crops_carry_the_contact_target(fluo_subset):
    from qmed.data.batches import LoadedPairs, TrainCrops
    from qmed.data.dataset import find_pairs

    pairs = find_pairs(fluo_subset["train"])
    plain = resolve_config("tiny")
    head = resolve_config("tiny", overrides={"model": {"instance_head": "contact"}})
    a, b = TrainCrops(LoadedPairs(pairs, plain), plain), TrainCrops(LoadedPairs(pairs, head), head)
    seen = 0
    for i, pos in [(i, pos) for i in range(len(pairs)) for pos in range(12)]:
        xa, ya = a[(i, pos)]
        xb, yb = b[(i, pos)]
        assert ya.shape == (1, 64, 64) and yb.shape == (2, 64, 64)
        # the same crop and augmentation: the head only adds a target channel
        assert torch.equal(xa, xb) and torch.equal(ya[0], yb[0])
        assert set(torch.unique(yb[1]).tolist()) <= {0.0, 1.0} and not (yb[1] > yb[0]).any()  # contact lies on objects
        seen += int(yb[1].sum())
    assert (
        sum(contact_map(LoadedPairs(pairs, head)[i][2], 2).sum() for i in range(len(pairs))) > 0
    )  # the images have touching nuclei
    assert seen > 0  # and 72 crops of them find some


def test_cpu_and_auto_carry_the_head_the_paper_and_the_plain_baseline_do_not():
    from qmed.experiments.common import smp_baseline_config

    assert resolve_config("cpu").model.out_channels == 2
    assert resolve_config("paper").model.instance_head == "none"
    assert smp_baseline_config("cpu").model.out_channels == 1
    assert resolve_config("cpu", overrides=["model.instance_head=none"]).model.out_channels == 1
    # an architecture asked for that cannot carry the head drops the preset's; asking for both is refused
    assert resolve_config("cpu", overrides=["model.arch=hq_unet", "model.attention=null"]).model.instance_head == "none"
    assert resolve_config("cpu", overrides=["model.arch=unet"]).model.instance_head == "contact"
    with pytest.raises(QmedInputError, match="instance_head"):
        resolve_config("cpu", overrides=["model.arch=attention_unet", "model.instance_head=contact"])


def test_contact_splits_what_the_distance_map_cannot():
    # a 10 x 20 rectangle: two square nuclei side by side. Its distance map has no dip between them.
    prob = np.full((20, 30), 0.1, np.float32)
    prob[5:15, 5:25] = 0.9
    assert split_instances(prob, diameter=11.0).max() == 1
    contact = np.zeros_like(prob)
    contact[5:15, 14:16] = 0.9  # the head marks where they meet
    lab = split_instances(prob, contact=contact, seeds="components")
    assert lab.max() == 2 and np.array_equal(lab > 0, prob > 0.5)
    assert len(np.unique(lab[5:15, 5:14])) == 1 and len(np.unique(lab[5:15, 16:25])) == 1
    assert lab[10, 6] != lab[10, 24]
    # no contact anywhere: one object per component; an all-contact component stays one object
    assert split_instances(prob, contact=np.zeros_like(prob), seeds="components").max() == 1
    assert split_instances(prob, contact=np.ones_like(prob), seeds="components").max() == 1
    assert split_instances(np.zeros_like(prob), contact=contact, seeds="components").max() == 0
    # speckle markers (under 10 % of a disc of the diameter) do not make objects of their own
    speck = contact.copy()
    speck[5:15, 5:25] = 0.9
    speck[9:11, 9:11] = 0.0  # a 4 px hole in the contact map
    assert split_instances(prob, diameter=11.0, contact=speck, seeds="components").max() == 1


def test_contact_and_distance_seeds_use_both_cues():
    """seeds="distance": h-maxima of the distance to background or contact. It splits the
    rectangle along the contact the head predicted, and two touching discs the head missed."""
    prob = np.full((20, 30), 0.1, np.float32)
    prob[5:15, 5:25] = 0.9
    contact = np.zeros_like(prob)
    contact[5:15, 14:16] = 0.9
    lab = split_instances(prob, contact=contact, seeds="distance")
    assert lab.max() == 2 and np.array_equal(lab > 0, prob > 0.5)
    assert lab[10, 6] != lab[10, 24]
    # the contact column itself goes to one side or the other: every foreground pixel is labelled
    assert set(np.unique(lab[5:15, 14:16])) <= {int(lab[10, 6]), int(lab[10, 24])}
    # two discs of radius 8 whose centres are 14 px apart, and no contact predicted: the
    # components seeds keep one object, the distance seeds find the dip (about 3.8 px > h = 1)
    yy, xx = np.mgrid[:30, :50]
    discs = ((yy - 15) ** 2 + (xx - 17) ** 2 <= 64) | ((yy - 15) ** 2 + (xx - 31) ** 2 <= 64)
    none = np.zeros(discs.shape, np.float32)
    assert split_instances(discs, contact=none, seeds="components").max() == 1
    two = split_instances(discs, contact=none, seeds="distance")
    assert two.max() == 2 and two[15, 17] != two[15, 31] and np.array_equal(two > 0, discs)
    # empty and all-contact: nothing, and one object per component
    assert split_instances(np.zeros_like(prob), contact=contact, seeds="distance").max() == 0
    assert split_instances(prob, contact=np.ones_like(prob), seeds="distance").max() == 1
    with pytest.raises(ValueError, match="seeds"):
        split_instances(prob, contact=contact, seeds="flow")


def test_tiny_run_with_the_head_end_to_end(fluo_subset, tmp_path):
    """train -> predict --instances (contact split, torch and ONNX) -> evaluate, and the report."""
    from typer.testing import CliRunner

    from qmed.cli.app import app

    run = tmp_path / "run"
    r = CliRunner().invoke(
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
            str(run),
            "--quiet",
            "--set",
            "model.instance_head=contact",
            "--set",
            "train.epochs=1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (run / "report.md").is_file() and "Objects" in (run / "report.md").read_text()
    out = tmp_path / "preds"
    r = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(run),
            "--input",
            str(fluo_subset["val"] / "images"),
            "--out",
            str(out),
            "--instances",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "predict.json").read_text())["instance_split"] == "contact+distance"
    assert len(list((out / "contact").glob("*.png"))) == 3  # the contact probabilities, 16-bit
    for p in (fluo_subset["val"] / "images").iterdir():
        lab = np.array(Image.open(out / "instances" / f"{p.stem}.png"))
        assert np.array_equal(lab > 0, np.array(Image.open(out / f"{p.stem}.png")) > 0)
    r = CliRunner().invoke(
        app, ["evaluate", "--pred", str(out / "instances"), "--truth", str(fluo_subset["val"]), "--n-boot", "100"]
    )
    assert r.exit_code == 0, r.output
    onnx = tmp_path / "m.onnx"
    r = CliRunner().invoke(app, ["export", "--model", str(run), "--out", str(onnx)])
    assert r.exit_code == 0, r.output
    from qmed.segment.export import sidecar_path

    assert json.loads(sidecar_path(onnx).read_text())["output"]["shape"][1] == 2
    out2 = tmp_path / "preds-onnx"
    r = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(onnx),
            "--input",
            str(fluo_subset["val"] / "images"),
            "--out",
            str(out2),
            "--instances",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    for p in (fluo_subset["val"] / "images").iterdir():
        a = np.array(Image.open(out / f"{p.stem}.png")) > 0
        b = np.array(Image.open(out2 / f"{p.stem}.png")) > 0
        assert (a != b).mean() < 0.01  # the same model through ONNX Runtime


def test_contact_split_marker_height_is_a_tenth_of_the_diameter():
    """With a contact map the h-maxima height is 0.1 d (H_FRACTION_CONTACT), without it 0.05 d.
    Two discs of radius 10, centres 14 px apart: the distance map peaks at 10.05 px and the neck
    at 8.0, a dip of 2.05 px; the union's equivalent diameter is 27.0 px, so 0.05 d = 1.35 px
    splits the pair and 0.1 d = 2.70 px keeps it whole, unless the head predicts the contact."""
    yy, xx = np.mgrid[:30, :50]
    pair = ((yy - 15) ** 2 + (xx - 18) ** 2 <= 100) | ((yy - 15) ** 2 + (xx - 32) ** 2 <= 100)
    none = np.zeros(pair.shape, np.float32)
    assert split_instances(pair).max() == 2
    assert split_instances(pair, contact=none).max() == 1
    assert split_instances(pair, contact=none, h=1.35).max() == 2
    contact = none.copy()
    contact[:, 24:27] = 0.9  # the head saw them meet: the core is two discs
    two = split_instances(pair, contact=contact)
    assert two.max() == 2 and two[15, 18] != two[15, 32] and np.array_equal(two > 0, pair)
