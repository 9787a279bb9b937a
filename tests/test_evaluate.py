"""evaluate_folders / write_outputs / summary_table on tiny datasets built in tmp_path."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qmed.errors import QmedInputError
from qmed.evaluate.folders import default_csv_path, evaluate_folders, summary_table, write_outputs

REAL_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-fluo" / "val"


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_masks() -> dict[str, np.ndarray]:
    """Four 16x16 masks: two with foreground, one with two objects, one empty."""
    a = np.zeros((16, 16), bool)
    a[2:8, 2:8] = True
    b = np.zeros((16, 16), bool)
    b[1:4, 1:4] = True
    b[9:14, 6:12] = True
    c = np.zeros((16, 16), bool)
    c[5:11, 4:15] = True
    return {"a": a, "b": b, "c": c, "empty": np.zeros((16, 16), bool)}


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    masks = make_masks()
    root = tmp_path / "data"
    for name, m in masks.items():
        save_png(root / "images" / f"{name}.png", np.full((16, 16), 90, np.uint8))
        save_png(root / "masks" / f"{name}.png", np.where(m, 255, 0).astype(np.uint8))
    return root, masks


def write_preds(folder: Path, masks: dict[str, np.ndarray], make) -> Path:
    for name, m in masks.items():
        save_png(folder / f"{name}.png", make(m))
    return folder


def test_truth_as_prediction_is_perfect(dataset, tmp_path):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: m.astype(np.uint8))  # 0/1 masks
    s, rows = evaluate_folders(pred, root, n_boot=100)
    assert [r["name"] for r in rows] == sorted(masks)
    assert s["dice_mean_empty1"]["mean"] == 1.0 and s["dice_mean_fg"]["mean"] == 1.0 and s["dice_pooled"] == 1.0
    assert s["hd95"]["mean"] == 0.0 and s["boundary_f1"]["mean"] == 1.0 and s["aji"]["mean"] == 1.0
    assert s["object_recall"] == 1.0 and s["small_object_recall"] == 1.0  # b's 9 px square is small
    assert s["fp_rate_empty"] == 0.0 and s["n_empty_truth"] == 1 and s["n_fg_images"] == 3


def test_empty_predictions(dataset, tmp_path):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: np.zeros(m.shape, np.uint8))
    s, _ = evaluate_folders(pred, root, n_boot=100)
    assert s["dice_mean_fg"]["mean"] == 0.0
    assert s["dice_pooled"] == 0.0
    assert s["dice_mean_empty1"]["mean"] == pytest.approx(1 / 4)  # the one empty-truth image scores 1
    assert s["hd95"]["n_undefined"] == 3 and s["hd95"]["n"] == 1
    assert s["object_recall"] == 0.0


def test_probability_maps_thresholded(dataset, tmp_path):
    import tifffile

    root, masks = dataset
    pred = tmp_path / "pred"
    pred.mkdir()
    for name, m in masks.items():  # float TIFF: 0.7 inside, 0.3 outside
        tifffile.imwrite(pred / f"{name}.tif", np.where(m, 0.7, 0.3).astype(np.float32))
    s, _ = evaluate_folders(pred, root, threshold=0.5, n_boot=100)
    assert s["dice_mean_empty1"]["mean"] == 1.0 and s["dice_pooled"] == 1.0
    s, _ = evaluate_folders(pred, root, threshold=0.8, n_boot=100)  # nothing above 0.8
    assert s["dice_pooled"] == 0.0 and s["dice_mean_empty1"]["mean"] == pytest.approx(1 / 4)
    s, _ = evaluate_folders(pred, root, threshold=0.2, n_boot=100)  # everything above 0.2
    assert s["fp_rate_empty"] == 1.0 and s["fp_empty_counts"]["mean_fp_fraction"] == 1.0


def test_16bit_probability_png(dataset, tmp_path):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: np.where(m, 40000, 20000).astype(np.uint16))
    s, _ = evaluate_folders(pred, root, n_boot=100)  # 40000/65535 = 0.61 > 0.5 > 0.31
    assert s["dice_pooled"] == 1.0


def test_masks_only_folder_and_extra_predictions(dataset, tmp_path, caplog):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: np.where(m, 255, 0).astype(np.uint8))
    save_png(pred / "stray.png", np.zeros((16, 16), np.uint8))
    with caplog.at_level(logging.WARNING, logger="qmed"):
        s, rows = evaluate_folders(pred, root / "masks", n_boot=100)  # folder holding masks directly
    assert len(rows) == 4 and s["dice_pooled"] == 1.0
    assert "stray" in caplog.text
    shutil.rmtree(root / "images")  # DATA_DIR with masks/ but no images/
    s, rows = evaluate_folders(pred, root, n_boot=100)
    assert len(rows) == 4


def _expect_error(pred, root, fragment: str):
    with pytest.raises(QmedInputError) as ei:
        evaluate_folders(pred, root, n_boot=10)
    assert fragment in str(ei.value), str(ei.value)
    return ei.value


def test_missing_prediction(dataset, tmp_path):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: m.astype(np.uint8))
    (pred / "b.png").unlink()
    err = _expect_error(pred, root, "b.png")  # names the truth mask ...
    assert "b.*" in str(err)  # ... and the prediction it looked for


def test_size_mismatch(dataset, tmp_path):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: m.astype(np.uint8))
    save_png(pred / "c.png", np.zeros((10, 12), np.uint8))
    err = _expect_error(pred, root, "c.png")
    assert err.path == pred / "c.png" and "12x10" in str(err)


def test_nan_probability(dataset, tmp_path):
    import tifffile

    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: m.astype(np.uint8))
    (pred / "a.png").unlink()
    bad = np.full((16, 16), 0.2, np.float32)
    bad[3, 3] = np.nan
    tifffile.imwrite(pred / "a.tif", bad)
    err = _expect_error(pred, root, "a.tif")
    assert "NaN" in str(err)


def test_missing_or_empty_pred_dir(dataset, tmp_path):
    root, _ = dataset
    _expect_error(tmp_path / "nope", root, "nope")
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path / "empty", root, "empty")


def test_write_outputs(dataset, tmp_path):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: np.zeros(m.shape, np.uint8))
    out = tmp_path / "out" / "eval.json"
    # The CLI order: a failing evaluation raises before anything is written.
    with pytest.raises(QmedInputError):
        write_outputs(*evaluate_folders(tmp_path / "nope", root), out)
    assert not (tmp_path / "out").exists()

    s, rows = evaluate_folders(pred, root, n_boot=100)
    j, c = write_outputs(s, rows, out)
    assert c == default_csv_path(out) == tmp_path / "out" / "eval.per_image.csv"
    doc = json.loads(j.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["summary"]["dice_mean_fg"]["mean"] == 0.0
    assert "dice_mean_empty1" in doc["conventions"]
    assert [r["name"] for r in doc["per_image"]] == sorted(masks)
    assert doc["per_image"][0]["hd95"] is None  # a: empty prediction on foreground
    with open(c, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and table[0]["name"] == "a" and table[0]["hd95"] == ""
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json", "eval.per_image.csv"]  # no temp files


def test_summary_table_labels(dataset, tmp_path):
    from rich.console import Console

    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: m.astype(np.uint8))
    s, _ = evaluate_folders(pred, root, n_boot=100)
    console = Console(record=True, width=200)
    console.print(summary_table(s))
    out = console.export_text()
    for label in (
        "Dice, per image, empty=1 (paper)",
        "Dice, per image, foreground images (nnU-Net/MONAI)",
        "Dice, pooled over pixels",
        "FP rate on empty images",
        "HD95 (px)",
        "Boundary F1 @3px",
        "Small-object recall (<50 px)",
        "AJI",
    ):
        assert label in out


@pytest.mark.skipif(not (REAL_VAL / "masks").is_dir(), reason=f"real data not present at {REAL_VAL}")
def test_real_data_ground_truth_as_prediction(tmp_path):
    from qmed.io.images import read_mask, write_mask_png

    masks = sorted((REAL_VAL / "masks").iterdir())[:8]
    truth = tmp_path / "truth" / "masks"
    truth.mkdir(parents=True)
    for m in masks:
        shutil.copy(m, truth / m.name)
        # These masks are 16-bit instance label maps; a prediction is a binary mask or a
        # probability map, so the ground truth goes in as its 0/255 foreground.
        write_mask_png(tmp_path / "pred" / f"{m.stem}.png", read_mask(m)[0])
    s, rows = evaluate_folders(tmp_path / "pred", tmp_path / "truth", n_boot=100)
    assert len(rows) == len(masks)
    assert all(r["dice_empty1"] == 1.0 and r["hd95"] == 0.0 and r["boundary_f1"] == 1.0 for r in rows)
    assert s["dice_pooled"] == 1.0 and s["dice_mean_fg"]["mean"] == 1.0
    # (object figures may fall below 1: touching nuclei merge into one predicted component)


def test_label_map_prediction_warns(dataset, tmp_path, caplog):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: m.astype(np.uint8))
    from qmed.evaluate.metrics import label_components

    save_png(pred / "b.png", label_components(masks["b"]).astype(np.uint16))  # labels 1, 2
    s, rows = evaluate_folders(pred, root, n_boot=10)  # auto: b.png is read as a label map
    assert s["pred_kinds"] == {"mask": 3, "labels": 1} and s["dice_pooled"] == 1.0
    with caplog.at_level(logging.WARNING, logger="qmed"):  # told it is a probability map: 1, 2 -> /65535
        s, _ = evaluate_folders(pred, root, n_boot=10, pred_kind="probability")
    assert "b.png" in caplog.text and "--pred-kind labels" in caplog.text and s["dice_pooled"] < 1.0


def _caption(summary) -> str:
    from rich.console import Console

    console = Console(record=True, width=300)
    console.print(summary_table(summary))
    return " ".join(console.export_text().split())


def test_predict_json_is_read_not_scored(dataset, tmp_path, caplog):
    """PRED/predict.json (written by qmed predict) is carried into the summary and the caption, never paired as a prediction."""
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: np.where(m, 255, 0).astype(np.uint8))
    meta = {"model": "RUN", "checkpoint": "/x/RUN/checkpoints/best.pt", "tta": 7, "threshold": 0.5, "tile": 1024}
    (pred / "predict.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="qmed"):
        s, rows = evaluate_folders(pred, root, n_boot=50)
    assert "ignoring" not in caplog.text and len(rows) == len(masks)
    assert s["predictions"]["tta"] == 7
    assert (
        s["predictions"]["description"] == "TTA 7 views, threshold 0.5, tile 1024 px, from /x/RUN/checkpoints/best.pt"
    )
    assert "predictions: TTA 7 views, threshold 0.5, tile 1024 px, from /x/RUN/checkpoints/best.pt" in _caption(s)
    j, _ = write_outputs(s, rows, tmp_path / "out" / "eval.json")
    assert json.loads(j.read_text())["summary"]["predictions"]["checkpoint"] == meta["checkpoint"]


def test_no_or_bad_predict_json(dataset, tmp_path, caplog):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: np.where(m, 255, 0).astype(np.uint8))
    s, _ = evaluate_folders(pred, root, n_boot=50)
    assert "predictions" not in s
    assert "no predict.json: not made by qmed predict" in _caption(s)
    (pred / "predict.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="qmed"):
        s, _ = evaluate_folders(pred, root, n_boot=50)
    assert "predictions" not in s and "predict.json" in caplog.text


# ------------------------------------------------------------------ label-map predictions (issue 20)


def label_maps(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hand-made label maps: a's 6x6 square cut into two 6x3 halves (labels 1, 2), b's two objects
    labelled 1 and 2 as in truth, c exact (one object), empty empty."""
    from qmed.evaluate.metrics import label_components

    a = masks["a"].astype(np.uint16)
    a[2:8, 5:8] *= 2
    return {
        "a": a,
        "b": label_components(masks["b"]).astype(np.uint16),
        "c": masks["c"].astype(np.uint16),
        "empty": np.zeros((16, 16), np.uint16),
    }


def test_label_map_round_trip_hand_made(dataset, tmp_path):
    root, masks = dataset
    pred = tmp_path / "pred"
    for name, lab in label_maps(masks).items():
        save_png(pred / f"{name}.png", lab)
    s, rows = evaluate_folders(pred, root, n_boot=50)
    # a, b hold several labels: label maps; c (one label, value 1) and empty read as masks.
    assert s["pred_kinds"] == {"labels": 2, "mask": 2} and s["settings"]["instances"] is True
    by = {r["name"]: r for r in rows}
    assert by["a"]["pred_kind"] == "labels" and by["c"]["pred_kind"] == "mask"
    # a: each half has IoU 18/36 = 0.5 with the square: one match at t = 0.5 only, 1/(1+1+0) -> mAP 0.05;
    #    PQ 0.5 / (1 + 1/2) = 1/3; one object too many. b, c: exact. empty vs empty: 1 by convention.
    assert (
        by["a"]["map_dsb"] == pytest.approx(0.05)
        and by["a"]["pq"] == pytest.approx(1 / 3)
        and by["a"]["count_error"] == 1
    )
    assert by["a"]["dice"] == 1.0  # the pixel figures see labels > 0: the same square
    assert by["b"]["map_dsb"] == 1.0 and by["empty"]["map_dsb"] == 1.0 and by["empty"]["pq"] == 1.0
    assert s["map_dsb"]["mean"] == pytest.approx((0.05 + 3) / 4)
    assert s["pq"]["mean"] == pytest.approx((1 / 3 + 3) / 4)
    assert s["count_error"]["mean"] == pytest.approx(1 / 4) and s["count_abs_error"]["mean"] == pytest.approx(1 / 4)
    assert s["object_counts"] == {"tp": 4, "fp": 1, "fn": 0}  # a: 1 of 2 halves matched; b: 2; c: 1
    j, c = write_outputs(s, rows, tmp_path / "out" / "eval.json")
    doc = json.loads(j.read_text())
    assert doc["summary"]["map_dsb"]["mean"] == pytest.approx(0.7625) and "map_dsb" in doc["conventions"]
    with c.open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert {"pred_kind", "map_dsb", "ap50", "ap75", "pq", "dq", "sq", "n_pred", "n_truth", "count_error"} <= set(
        csv_rows[0]
    )
    assert csv_rows[0]["name"] == "a" and float(csv_rows[0]["map_dsb"]) == pytest.approx(0.05)
    text = _caption(s)
    assert "Mean AP, IoU 0.5:0.95 (DSB2018)" in text and "PQ = DQ x SQ" in text
    assert "read as 2 label maps, 2 binary masks (--pred-kind auto)" in text


def test_pred_kind_option(dataset, tmp_path):
    root, masks = dataset
    pred = tmp_path / "pred"
    for name, lab in label_maps(masks).items():
        save_png(pred / f"{name}.png", lab)
    s, rows = evaluate_folders(pred, root, n_boot=20, pred_kind="labels")
    assert s["pred_kinds"] == {"labels": 4} and s["settings"]["pred_kind"] == "labels"
    # As masks: a's two halves are one component again (mAP 1), and no instance figures unless asked.
    s, rows = evaluate_folders(pred, root, n_boot=20, pred_kind="mask")
    assert s["pred_kinds"] == {"mask": 4} and "map_dsb" not in s and "map_dsb" not in rows[0]
    assert s["object_counts"] == {"tp": 4, "fp": 0, "fn": 0}
    s, rows = evaluate_folders(pred, root, n_boot=20, pred_kind="mask", instances=True)
    assert s["map_dsb"]["mean"] == 1.0 and s["count_error"]["mean"] == 0.0
    with pytest.raises(QmedInputError, match="pred-kind"):
        evaluate_folders(pred, root, pred_kind="instances")


def test_masks_and_probabilities_report_no_instance_figures(dataset, tmp_path):
    root, masks = dataset
    pred = write_preds(tmp_path / "pred", masks, lambda m: np.where(m, 255, 0).astype(np.uint8))
    s, rows = evaluate_folders(pred, root, n_boot=20)
    assert s["pred_kinds"] == {"mask": 4} and s["settings"]["instances"] is False
    assert "map_dsb" not in s and "map_dsb" not in rows[0] and "Mean AP" not in _caption(s)
    s, rows = evaluate_folders(pred, root, n_boot=20, instances=True)  # connected components as objects
    assert s["map_dsb"]["mean"] == 1.0 and rows[0]["n_pred"] == 1


def test_real_label_maps_round_trip(fluo_subset, tmp_path):
    """DSB2018 truth (16-bit instance maps) as predictions: label maps, every instance figure perfect;
    their binary foreground with --instances: connected components, touching nuclei merge."""
    from qmed.io.images import read_mask, write_mask_png

    val = fluo_subset["val"]
    (tmp_path / "labels").mkdir()
    for m in sorted((val / "masks").iterdir()):
        shutil.copy(m, tmp_path / "labels" / m.name)
        write_mask_png(tmp_path / "fg" / m.name, read_mask(m)[0])
    s, rows = evaluate_folders(tmp_path / "labels", val, n_boot=20)
    n = len(rows)
    assert s["pred_kinds"] == {"labels": n}
    assert (
        s["map_dsb"]["mean"] == 1.0
        and s["pq"]["mean"] == 1.0
        and s["aji"]["mean"] == 1.0
        and s["count_abs_error"]["mean"] == 0.0
    )
    cc, _ = evaluate_folders(tmp_path / "fg", val, n_boot=20, instances=True)
    assert cc["pred_kinds"] == {"mask": n} and cc["dice_pooled"] == 1.0
    assert cc["map_dsb"]["mean"] <= 1.0 and cc["count_error"]["mean"] <= 0.0  # merging never adds objects


def test_prediction_kind_detection(tmp_path):
    import tifffile

    from qmed.io.images import prediction_kind, read_prediction
    from qmed.segment.instances import split_instances

    yy, xx = np.mgrid[:64, :96]
    r = np.sqrt((yy - 32) ** 2 + (xx - 30) ** 2)
    discs = (r <= 12) | ((yy - 32) ** 2 + (xx - 54) ** 2 <= 144)  # two touching discs
    sharp = np.clip(12.5 - r, 0, 1)  # one disc, a one-pixel ramp: the most label-like probability map
    labels = split_instances(discs)
    cases = [
        (discs, "mask"),
        (discs.astype(np.uint8) * 255, "mask"),
        (discs.astype(np.uint16) * 65535, "mask"),
        (discs.astype(np.float32), "mask"),
        (np.zeros((8, 8), np.uint16), "mask"),
        (np.rint(sharp * 255).astype(np.uint8), "probability"),
        (np.rint(sharp * 65535).astype(np.uint16), "probability"),
        (np.where(discs, 40000, 20000).astype(np.uint16), "probability"),  # two levels, no background
        (np.where(discs, 20000, 0).astype(np.uint16), "probability"),  # one level that is not full scale: 0.31
        (labels.astype(np.uint16), "labels"),
        (labels.astype(np.int32), "labels"),
        (labels.astype(np.float32), "labels"),
        (np.where(discs, np.where(xx < 42, 3, 9), 0).astype(np.uint8), "labels"),  # any two label values
    ]
    for arr, kind in cases:
        assert prediction_kind(arr) == kind, (arr.dtype, kind)
    tifffile.imwrite(tmp_path / "l.tif", labels.astype(np.int32))
    kind, lab = read_prediction(tmp_path / "l.tif")
    assert kind == "labels" and lab.dtype == np.int32 and np.array_equal(lab, labels)
    # A map tiled with labels and no background looks like a probability map to auto: say --pred-kind labels.
    tiled = np.where(xx < 48, 1, 2).astype(np.uint16)
    assert prediction_kind(tiled) == "probability"
    save_png(tmp_path / "t.png", tiled)
    assert read_prediction(tmp_path / "t.png", "labels")[0] == "labels"
    assert read_prediction(tmp_path / "t.png", "mask")[1].all()


def test_instances_folder_object_tables_are_not_predictions(dataset, tmp_path, caplog):
    """OUT/instances of qmed predict --instances: NAME.png label maps, NAME.csv tables, predict.json."""
    root, masks = dataset
    pred = tmp_path / "instances"
    for name, lab in label_maps(masks).items():
        save_png(pred / f"{name}.png", lab)
        (pred / f"{name}.csv").write_text("id,area\n")
    (pred / "predict.json").write_text(
        json.dumps({"checkpoint": "/x/best.pt", "tta": 1, "threshold": 0.5, "kind": "labels"})
    )
    (pred / "notes.csv").write_text("x\n")  # a CSV without an image of its name is still worth a word
    with caplog.at_level(logging.WARNING, logger="qmed"):
        s, rows = evaluate_folders(pred, root, n_boot=10)
    assert "ignoring 1 non-image file(s): notes.csv" in caplog.text and len(rows) == 4
    assert s["predictions"]["description"] == "no TTA, threshold 0.5, watershed label maps, from /x/best.pt"
