"""`qmed convert`: qmed layout <-> nnU-Net v2 raw format (2-D PNG), round trips and refusals."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qmed.cli.app import app
from qmed.data.nnunet import from_nnunet, to_nnunet
from qmed.errors import QmedInputError

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def gray_dataset(tmp_path):
    """Gray 8-bit images with binary 0/255 masks (one empty), plus a val split."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, names in (("train", ["a", "b_01", "c"]), ("val", ["v1", "v2"])):
        for i, n in enumerate(names):
            img = rng.integers(0, 256, (40 + 8 * i, 56), dtype=np.uint8)
            mask = np.zeros(img.shape, np.uint8)
            if i != 1:
                mask[5:20, 10:30] = 255
            _write(root / split / "images" / f"{n}.png", img)
            _write(root / split / "masks" / f"{n}.png", mask)
    return root


def _pairs(folder):
    out = {}
    for f in sorted((folder / "images").glob("*.png")):
        out[f.stem] = (np.array(Image.open(f)), np.array(Image.open(folder / "masks" / f.name)))
    return out


def test_round_trip_identical(gray_dataset, tmp_path):
    raw = tmp_path / "raw"
    res = run(
        "convert",
        "--to",
        "nnunet",
        "--data",
        gray_dataset / "train",
        "--val",
        gray_dataset / "val",
        "--out",
        raw,
        "--dataset-id",
        501,
        "--name",
        "Fluo",
        "--label-name",
        "nucleus",
    )
    assert res.exit_code == 0, res.output
    ds = raw / "Dataset501_Fluo"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "gray"}
    assert meta["labels"] == {"background": 0, "nucleus": 1}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".png"
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == ["a_0000.png", "b_01_0000.png", "c_0000.png"]
    assert sorted(p.name for p in (ds / "imagesTs").iterdir()) == ["v1_0000.png", "v2_0000.png"]
    lab = np.array(Image.open(ds / "labelsTr" / "a.png"))
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}

    back, back_val = tmp_path / "back", tmp_path / "back_val"
    res = run("convert", "--from", "nnunet", "--data", ds, "--out", back, "--val", back_val)
    assert res.exit_code == 0, res.output
    for src, dst in ((gray_dataset / "train", back), (gray_dataset / "val", back_val)):
        a, b = _pairs(src), _pairs(dst)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name][0].dtype == b[name][0].dtype and np.array_equal(a[name][0], b[name][0]), name
            assert np.array_equal(a[name][1], b[name][1]), name  # 0/255 in, 0/255 out


def test_rgb_16bit_and_instance_labels(tmp_path):
    """RGB goes out as one 3-channel PNG (R, G, B); 16-bit gray stays 16-bit; label maps become 0/1."""
    rng = np.random.default_rng(1)
    root = tmp_path / "rgb"
    rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    labels = np.zeros((32, 48), np.uint16)
    labels[2:8, 2:8], labels[10:20, 10:30] = 1, 7
    _write(root / "images" / "x.png", rgb)
    _write(root / "masks" / "x.png", labels)
    ds = to_nnunet(root, tmp_path / "raw", 502, "Rgb")
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert np.array_equal(np.array(Image.open(ds / "imagesTr" / "x_0000.png")), rgb)
    assert set(np.unique(np.array(Image.open(ds / "labelsTr" / "x.png")))) == {0, 1}
    n_tr, n_ts = from_nnunet(ds, tmp_path / "back")
    assert (n_tr, n_ts) == (1, 0)
    assert np.array_equal(np.array(Image.open(tmp_path / "back" / "images" / "x.png")), rgb)
    assert np.array_equal(np.array(Image.open(tmp_path / "back" / "masks" / "x.png")) > 0, labels > 0)

    g16 = tmp_path / "g16"
    img16 = rng.integers(0, 4096, (24, 24), dtype=np.uint16)
    _write(g16 / "images" / "y.png", img16)
    _write(g16 / "masks" / "y.png", np.zeros((24, 24), np.uint8))
    ds16 = to_nnunet(g16, tmp_path / "raw16", 503, "G16")
    out = np.array(Image.open(ds16 / "imagesTr" / "y_0000.png"))
    assert out.dtype == np.uint16 and np.array_equal(out, img16)


def test_channel_files_and_multiclass_from_nnunet(tmp_path):
    """A case stored as three single-channel files is stacked to RGB; several labels are merged."""
    ds = tmp_path / "Dataset777_Multi"
    rng = np.random.default_rng(2)
    chans = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    for i, c in enumerate(chans):
        _write(ds / "imagesTr" / f"case_{i:04d}.png", c)
    lab = np.zeros((16, 16), np.uint8)
    lab[1:4, 1:4], lab[8:12, 8:12] = 1, 2
    _write(ds / "labelsTr" / "case.png", lab)
    (ds / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "R", "1": "G", "2": "B"},
                "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": 1,
                "file_ending": ".png",
            }
        )
    )
    from_nnunet(ds, tmp_path / "out")
    img = np.array(Image.open(tmp_path / "out" / "images" / "case.png"))
    assert np.array_equal(img, np.stack(chans, -1))
    m = np.array(Image.open(tmp_path / "out" / "masks" / "case.png"))
    assert np.array_equal(m > 0, lab > 0) and set(np.unique(m)) == {0, 255}


def test_refusals(gray_dataset, tmp_path):
    raw = tmp_path / "raw"
    to_nnunet(gray_dataset / "train", raw, 501, "Fluo")
    with pytest.raises(QmedInputError, match="not empty"):
        to_nnunet(gray_dataset / "train", raw, 501, "Fluo")
    with pytest.raises(QmedInputError, match="ID 501"):
        to_nnunet(gray_dataset / "train", raw, 501, "Other")
    with pytest.raises(QmedInputError, match="between 1 and 999"):
        to_nnunet(gray_dataset / "train", raw, 1000, "X")
    with pytest.raises(QmedInputError, match="dataset.json"):
        from_nnunet(tmp_path, tmp_path / "o")
    res = run("convert", "--to", "nnunet", "--from", "nnunet", "--data", gray_dataset / "train", "--out", raw)
    assert res.exit_code == 2 and "exactly one" in res.output
    res = run("convert", "--to", "monai", "--data", gray_dataset / "train", "--out", raw)
    assert res.exit_code == 2 and "unknown format" in res.output
    nii = tmp_path / "Dataset900_Nii"
    nii.mkdir()
    (nii / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "x": 1},
                "numTraining": 0,
                "file_ending": ".nii.gz",
            }
        )
    )
    res = run("convert", "--from", "nnunet", "--data", nii, "--out", tmp_path / "o2")
    assert res.exit_code == 2 and "2-D image files only" in res.output
    assert not (tmp_path / "o2").exists()


def test_round_trip_real_images(fluo_subset, tmp_path):
    """Real DSB2018 images (8-bit gray, uint16 instance label maps): images identical, masks binarised."""
    from qmed.io.images import read_mask

    ds = to_nnunet(fluo_subset["train"], tmp_path / "raw", 501, "Fluo", val=fluo_subset["val"])
    from_nnunet(ds, tmp_path / "back", tmp_path / "back_val")
    for src, dst in ((fluo_subset["train"], tmp_path / "back"), (fluo_subset["val"], tmp_path / "back_val")):
        names = sorted(p.stem for p in (src / "images").iterdir())
        assert names == sorted(p.stem for p in (dst / "images").iterdir())
        for n in names:
            assert np.array_equal(
                np.array(Image.open(src / "images" / f"{n}.png")), np.array(Image.open(dst / "images" / f"{n}.png"))
            )
            assert np.array_equal(read_mask(src / "masks" / f"{n}.png")[0], read_mask(dst / "masks" / f"{n}.png")[0])
