"""Instance post-processing (qmed.segment.instances): watershed on hand-drawn discs, the semantic
mask kept, the per-object table, and an object across a sliding-window seam (issue 20)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from qmed.segment.instances import OBJECT_COLUMNS, object_table, split_instances, write_instances

YY, XX = np.mgrid[:60, :90]


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def prob_of(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 0.9, 0.1).astype(np.float32)


@pytest.mark.parametrize(
    "mask, n",
    [
        (disc(30, 30, 10) | disc(30, 50, 10), 2),  # touching: centres 2r apart, one pixel column of contact
        (disc(30, 30, 10) | disc(30, 44, 10), 2),  # overlapping (centres 1.4 r apart): the neck dips by 2 px
        (disc(30, 40, 12), 1),
        ((((YY - 30) / 8.0) ** 2 + ((XX - 45) / 30.0) ** 2) <= 1, 1),  # an elongated nucleus is not cut along its ridge
        (disc(15, 15, 6) | disc(45, 70, 6), 2),  # apart: two components, one label each
        (np.zeros((60, 90), bool), 0),
    ],
    ids=["touching", "overlapping", "one-disc", "ellipse", "apart", "empty"],
)
def test_watershed_on_hand_drawn_discs(mask, n):
    labels = split_instances(prob_of(mask))
    assert labels.dtype == np.int32 and labels.shape == mask.shape
    assert labels.max() == n and set(np.unique(labels)) == set(range(n + 1))  # labels 1..n
    assert np.array_equal(labels > 0, mask)  # the semantic mask is unchanged: no gap carved


def test_touching_discs_split_at_the_contact():
    a, b = disc(30, 30, 10), disc(30, 50, 10)
    labels = split_instances(a | b)  # a bool mask is taken as the foreground
    la, lb = labels[30, 30], labels[30, 50]
    assert la != lb and la > 0 and lb > 0
    # each disc is (all but its contact column) one label
    assert np.mean(labels[a & ~b & (XX < 40)] == la) == 1.0 and np.mean(labels[b & (XX > 40)] == lb) == 1.0


def test_diameter_sets_the_marker_height():
    # Overlapping discs: distance 10.05 at the centres, 8.0 at the neck, a dip of 2.05 px. Split with
    # the measured diameter (27 px for the merged component: h = max(1, 0.05 * 27) = 1.35 px), one
    # object when told the objects are 60 px wide (h = 3 px) or given h = 2.1 px directly.
    m = disc(30, 30, 10) | disc(30, 44, 10)
    assert split_instances(m).max() == 2
    assert split_instances(m, diameter=60).max() == 1
    assert split_instances(m, h=2.0).max() == 2 and split_instances(m, h=2.1).max() == 1


def test_small_component_keeps_a_label():
    m = disc(30, 30, 12) | disc(5, 80, 1.5)  # a 9 px speck far lower than h for 24 px objects
    labels = split_instances(m, diameter=24)
    assert labels.max() == 2 and np.array_equal(labels > 0, m)


def test_object_table_and_files(tmp_path):
    m = np.zeros((20, 30), bool)
    m[2:6, 3:8] = True  # 4x5 = 20 px, centroid (3.5, 5), bbox rows 2..6, cols 3..8 (max exclusive)
    m[10:13, 20:23] = True  # 3x3 = 9 px
    prob = np.where(m, 0.8, 0.0).astype(np.float32)
    prob[2, 3] = 1.0  # mean over object 1: (19 * 0.8 + 1.0) / 20 = 0.81
    n = write_instances(tmp_path / "instances", "img", prob)
    assert n == 2
    lab = np.array(Image.open(tmp_path / "instances" / "img.png"))
    assert lab.dtype == np.uint16 and lab.max() == 2 and np.array_equal(lab > 0, m)
    rows = list(csv.DictReader((tmp_path / "instances" / "img.csv").open()))
    assert tuple(rows[0]) == OBJECT_COLUMNS
    assert rows[0] == {
        "id": "1",
        "area": "20",
        "centroid_y": "3.5",
        "centroid_x": "5.0",
        "bbox_min_row": "2",
        "bbox_min_col": "3",
        "bbox_max_row": "6",
        "bbox_max_col": "8",
        "mean_probability": "0.81",
    }
    assert rows[1]["area"] == "9" and rows[1]["centroid_y"] == "11.0"
    assert object_table(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.float32)) == []
    assert write_instances(tmp_path / "instances", "none", np.zeros((8, 8), np.float32)) == 0
    assert (tmp_path / "instances" / "none.csv").read_text() == ",".join(OBJECT_COLUMNS) + "\n"
    assert not [p for p in (tmp_path / "instances").iterdir() if p.name.startswith(".")]  # atomic: no temp files left


class Brightness(torch.nn.Module):
    """A stand-in network: foreground logit = 40 * (red channel - 0.5)."""

    def forward(self, x):
        return 40.0 * (x[:, :1] - 0.5)


def test_object_across_a_window_seam_keeps_one_label():
    from qmed.segment.predict import predict_probability

    h, w = 150, 200
    yy, xx = np.mgrid[:h, :w]
    nucleus = ((yy - 75) / 14.0) ** 2 + ((xx - 100) / 40.0) ** 2 <= 1  # 80 px long, across the windows' seams
    other = (yy - 30) ** 2 + (xx - 30) ** 2 <= 64
    img = np.repeat(np.where(nucleus | other, 0.9, 0.1).astype(np.float32)[..., None], 3, axis=2)
    prob = predict_probability(Brightness(), img, tile=64, overlap=0.25, batch_size=8)  # 64 px windows, stride 32
    assert prob.shape == (h, w)
    labels = split_instances(prob)
    assert labels.max() == 2
    assert np.unique(labels[nucleus]).tolist() == [labels[75, 100]]  # one label over the whole nucleus
    assert np.array_equal(labels > 0, prob > 0.5)


def test_evaluate_cli_label_maps(fluo_subset, tmp_path):
    """qmed evaluate on DSB2018 instance truth: label maps (auto-detected and said), a watershed of
    the truth's foreground, and the options' one-line errors."""
    import json
    import shutil

    from typer.testing import CliRunner

    from qmed.cli.app import app
    from qmed.io.images import read_mask, write_labels

    val = fluo_subset["val"]
    (tmp_path / "labels").mkdir()
    for m in sorted((val / "masks").iterdir()):
        shutil.copy(m, tmp_path / "labels" / m.name)
        write_labels(tmp_path / "split" / m.name, split_instances(read_mask(m)[0]))
    runner = CliRunner()
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app, ["evaluate", "--pred", str(tmp_path / "labels"), "--truth", str(val), "--out", str(out), "--n-boot", "100"]
    )
    assert res.exit_code == 0, res.output
    assert "predictions read as 3 label maps (--pred-kind auto)" in res.output and "Mean AP" in res.output
    doc = json.loads(out.read_text())
    assert doc["summary"]["map_dsb"]["mean"] == 1.0 and doc["summary"]["pred_kinds"] == {"labels": 3}
    assert all(r["pred_kind"] == "labels" and r["count_error"] == 0 for r in doc["per_image"])
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(tmp_path / "split"),
            "--truth",
            str(val),
            "--out",
            str(out),
            "--n-boot",
            "100",
            "--pred-kind",
            "labels",
        ],
    )
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())["summary"]
    assert (
        s["dice_pooled"] == 1.0 and 0.0 < s["map_dsb"]["mean"] <= 1.0
    )  # same pixels; objects as the watershed cut them
    res = runner.invoke(
        app, ["evaluate", "--pred", str(tmp_path / "labels"), "--truth", str(val), "--pred-kind", "blobs"]
    )
    assert res.exit_code == 2 and "--pred-kind must be one of auto, mask, probability, labels" in res.output


@pytest.fixture
def untrained_model(tmp_path):
    """A tiny-preset checkpoint straight from initialisation (no training: predict only needs a model)."""
    from qmed.config import load_preset
    from qmed.io.checkpoints import save
    from qmed.models.segmenter import build

    torch.manual_seed(0)
    cfg = load_preset("tiny")
    path = tmp_path / "untrained.pt"
    save(path, {"config": cfg.model_dump(), "model": build(cfg.model, pretrained=False).state_dict()})
    return path


def test_predict_instances_writes_label_maps_and_tables(untrained_model, fluo_subset, tmp_path):
    import json

    from typer.testing import CliRunner

    from qmed.cli.app import app

    out = tmp_path / "preds"
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(untrained_model),
            "--input",
            str(fluo_subset["val"] / "images"),
            "--out",
            str(out),
            "--instances",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    names = sorted(p.stem for p in (fluo_subset["val"] / "images").iterdir())
    assert sorted(p.stem for p in (out / "instances").glob("*.png")) == names
    for n in names:
        mask = np.array(Image.open(out / f"{n}.png")) > 0
        lab = np.array(Image.open(out / "instances" / f"{n}.png"))
        assert lab.dtype == np.uint16 and np.array_equal(
            lab > 0, mask
        )  # the semantic mask is the label map's foreground
        rows = list(csv.DictReader((out / "instances" / f"{n}.csv").open()))
        assert len(rows) == lab.max() and [int(r["id"]) for r in rows] == list(range(1, lab.max() + 1))
        assert sum(int(r["area"]) for r in rows) == mask.sum()
    meta = json.loads((out / "predict.json").read_text())
    assert (
        meta["instances"] is True and json.loads((out / "instances" / "predict.json").read_text())["kind"] == "labels"
    )
    assert not list(out.parent.glob(f".{out.name}.*"))  # written in the staging folder
    res = CliRunner().invoke(
        app, ["evaluate", "--pred", str(out / "instances"), "--truth", str(fluo_subset["val"]), "--n-boot", "100"]
    )
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())  # the table caption may wrap
    assert "watershed label maps" in flat and "ignoring" not in flat


def test_reconstruct_by_hand_and_equal_to_skimage():
    from scipy import ndimage
    from skimage.morphology import reconstruction

    from qmed.segment.instances import reconstruct

    # by hand: the peak 2 (seed at mask 3 - 1) spreads under the mask: min(2, 1) = 1 on the dip, then
    # 1 on the 2 beyond it; the zero-mask ends stay 0
    mask = np.array([[0, 3, 1, 2, 0]], np.float32)
    assert reconstruct(mask - 1, mask).tolist() == [[0, 2, 1, 1, 0]]
    assert reconstruct(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)).shape == (0, 3)
    # a seed below 0 everywhere (no peak reaches h): no zero start, the plain iteration
    flat = np.ones((3, 4), np.float32)
    assert np.array_equal(reconstruct(flat - 2, flat), np.full((3, 4), -1, np.float32))
    rng = np.random.default_rng(0)
    for t in range(120):  # distance maps (the split's case), random maps, negative masks, sparse blobs; tiles of 8
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        if t % 3 == 0:
            mask = ndimage.distance_transform_edt(rng.random((h, w)) < rng.random()).astype(np.float32)
            seed = mask - np.float32(rng.random() * 4)
        elif t % 3 == 1:
            mask = (rng.random((h, w)) * 4 - 2).astype(np.float32)
            seed = np.minimum(mask, (rng.random((h, w)) * 4 - 2).astype(np.float32))
        else:
            blobs = ndimage.binary_dilation(rng.random((h, w)) < 0.05, iterations=3)
            mask = ndimage.distance_transform_edt(blobs).astype(np.float32)
            seed = mask - np.float32(2.5)
        want = reconstruction(seed, mask, method="dilation").astype(np.float32)
        assert np.array_equal(reconstruct(seed, mask, tile=8), want), t
