"""Folder datasets: pairing, CSV lists, splits, loading and the dataset fingerprint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qmed.data.dataset import Pair, find_pairs, fingerprint, load_pair, split_pairs
from qmed.data.planning import plan
from qmed.errors import QmedInputError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _img(path: Path, h: int = 16, w: int = 20, value: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    return path


def _mask(path: Path, arr: np.ndarray | None = None, h: int = 16, w: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        arr = np.zeros((h, w), np.uint8)
        arr[2:6, 3:9] = 255
    Image.fromarray(arr).save(path)
    return path


def _dataset(root: Path, names=("a", "b", "c"), mask_suffix: str = "", ext: str = ".png") -> Path:
    for n in names:
        _img(root / "images" / f"{n}{ext}")
        _mask(root / "masks" / f"{n}{mask_suffix}.png")
    return root


# ------------------------------------------------------------------------------------ find_pairs
@pytest.mark.parametrize(
    "names,mask_suffix,ext",
    [
        (("a", "b", "c"), "", ".png"),
        (("img_01", "img_02"), "_mask", ".png"),
        (("x1", "x2"), "_label", ".tif"),
        (("s1", "s2"), "_gt", ".png"),
    ],
    ids=["same_stem", "mask_suffix", "label_suffix_tif_images", "gt_suffix"],
)
def test_find_pairs_by_stem(tmp_path, names, mask_suffix, ext):
    root = _dataset(tmp_path / "ds", names, mask_suffix, ext)
    pairs = find_pairs(root)
    assert [p.name for p in pairs] == sorted(names)
    for p in pairs:
        assert p.image == root / "images" / f"{p.name}{ext}"
        assert p.mask == root / "masks" / f"{p.name}{mask_suffix}.png"


def test_find_pairs_image_named_like_a_mask(tmp_path):
    # An image whose own name ends in "_mask" pairs with the mask of the same stem, not "scan".
    root = tmp_path / "ds"
    _img(root / "images" / "scan_mask.png")
    _img(root / "images" / "other.png")
    _mask(root / "masks" / "scan_mask.png")
    _mask(root / "masks" / "other_mask.png")
    pairs = {p.name: p.mask.name for p in find_pairs(root)}
    assert pairs == {"scan_mask": "scan_mask.png", "other": "other_mask.png"}


def test_find_pairs_ignores_non_images_with_warning(tmp_path, caplog):
    root = _dataset(tmp_path / "ds")
    (root / "images" / "notes.txt").write_text("hello")
    (root / "images" / "Thumbs.db").write_bytes(b"\0")
    (root / "images" / ".DS_Store").write_bytes(b"\0")  # hidden: skipped silently
    (root / "masks" / "README.md").write_text("masks")
    with caplog.at_level(logging.WARNING, logger="qmed"):
        pairs = find_pairs(root)
    assert [p.name for p in pairs] == ["a", "b", "c"]
    text = caplog.text
    assert "notes.txt" in text and "Thumbs.db" in text and "README.md" in text
    assert ".DS_Store" not in text


def test_find_pairs_image_without_mask(tmp_path):
    root = _dataset(tmp_path / "ds")
    _img(root / "images" / "lonely.png")
    with pytest.raises(QmedInputError, match="no mask") as ei:
        find_pairs(root)
    assert "lonely.png" in str(ei.value)
    # Without masks required (prediction), the image is listed with mask None.
    pairs = {p.name: p.mask for p in find_pairs(root, require_masks=False)}
    assert pairs["lonely"] is None and pairs["a"] is not None


def test_find_pairs_mask_without_image(tmp_path):
    root = _dataset(tmp_path / "ds")
    _mask(root / "masks" / "orphan.png")
    with pytest.raises(QmedInputError, match="no matching image") as ei:
        find_pairs(root)
    assert "orphan.png" in str(ei.value)


def test_find_pairs_two_masks_for_one_image(tmp_path):
    root = _dataset(tmp_path / "ds")
    _mask(root / "masks" / "a_mask.png")
    with pytest.raises(QmedInputError, match="second mask"):
        find_pairs(root)


def test_find_pairs_duplicate_image_stems(tmp_path):
    root = _dataset(tmp_path / "ds")
    _img(root / "images" / "a.tif")
    with pytest.raises(QmedInputError, match="share the name"):
        find_pairs(root)


@pytest.mark.parametrize(
    "setup,words",
    [
        (lambda r: (r / "images").mkdir(parents=True), "holds no images"),
        (lambda r: ((r / "images").mkdir(parents=True), (r / "images" / "x.txt").write_text("x")), "holds no images"),
        (lambda r: r.mkdir(), "no images/ subfolder"),
        (lambda r: _img(r / "images" / "a.png"), "no masks/ subfolder"),
        (lambda r: None, "does not exist"),
        (lambda r: (r.parent.mkdir(parents=True, exist_ok=True), r.write_text("x")), "neither a dataset folder"),
    ],
    ids=["empty_images_folder", "only_non_images", "no_images_folder", "no_masks_folder", "missing", "plain_file"],
)
def test_find_pairs_bad_folders(tmp_path, setup, words):
    root = tmp_path / "ds"
    setup(root)
    with pytest.raises(QmedInputError, match=words) as ei:
        find_pairs(root)
    assert "ds" in str(ei.value) and "\n" not in str(ei.value)


def test_find_pairs_spaces_and_unicode(tmp_path):
    root = _dataset(tmp_path / "my data" / "ñúcleos", names=("célula 1", "célula 2"), mask_suffix="_mask")
    pairs = find_pairs(root)
    assert [p.name for p in pairs] == ["célula 1", "célula 2"]
    img, fg, labels = load_pair(pairs[0])
    assert img.shape == (16, 20, 1) and fg.sum() == 24 and labels.max() == 1


# ------------------------------------------------------------------------------------------ CSV
def test_find_pairs_from_csv(tmp_path):
    _img(tmp_path / "raw" / "one.png")
    _img(tmp_path / "raw" / "two.png")
    _mask(tmp_path / "ann" / "one_seg.png")
    _mask(tmp_path / "ann" / "two_seg.png")
    csv = tmp_path / "lists" / "pairs.csv"
    csv.parent.mkdir()
    # Paths relative to the CSV's folder; a BOM and stray spaces as spreadsheets write them.
    csv.write_text(
        "\ufeffimage, mask\n../raw/two.png,../ann/two_seg.png\n../raw/one.png , ../ann/one_seg.png\n\n",
        encoding="utf-8",
    )
    pairs = find_pairs(csv)
    assert [p.name for p in pairs] == ["one", "two"]
    assert pairs[0].image == (tmp_path / "raw" / "one.png").resolve()
    assert pairs[0].mask == (tmp_path / "ann" / "one_seg.png").resolve()


@pytest.mark.parametrize(
    "text,words",
    [
        ("img,msk\na.png,a_m.png\n", "columns"),
        ("image,mask\n", "no pairs"),
        ("image,mask\nmissing.png,a_m.png\n", "missing.png"),
        ("image,mask\na.png,\n", "'mask' column is empty"),
        ("image,mask\na.png\n", "'mask' column is empty"),
    ],
    ids=["wrong_columns", "no_rows", "missing_file", "empty_cell", "short_row"],
)
def test_find_pairs_bad_csv(tmp_path, text, words):
    _img(tmp_path / "a.png")
    _mask(tmp_path / "a_m.png")
    (tmp_path / "list.csv").write_text(text, encoding="utf-8")
    with pytest.raises(QmedInputError, match=words):
        find_pairs(tmp_path / "list.csv")


# ----------------------------------------------------------------------------------- split_pairs
def _fake_pairs(names) -> list[Pair]:
    return [Pair(n, Path(f"/data/images/{n}.png"), Path(f"/data/masks/{n}.png")) for n in names]


@pytest.mark.parametrize("n,val_fraction", [(2, 0.2), (10, 0.2), (37, 0.3), (100, 0.1)])
def test_split_pairs_deterministic_disjoint_complete(n, val_fraction):
    pairs = _fake_pairs([f"im{i:03d}" for i in range(n)])
    train, val = split_pairs(pairs, val_fraction=val_fraction, seed=3)
    train2, val2 = split_pairs(list(reversed(pairs)), val_fraction=val_fraction, seed=3)  # input order irrelevant
    assert (train, val) == (train2, val2)
    names_t, names_v = {p.name for p in train}, {p.name for p in val}
    assert not names_t & names_v
    assert names_t | names_v == {p.name for p in pairs}
    assert train and val
    assert len(val) == max(1, round(val_fraction * n))


def test_split_pairs_seed_changes_split():
    pairs = _fake_pairs([f"im{i:03d}" for i in range(50)])
    vals = {tuple(p.name for p in split_pairs(pairs, 0.2, seed=s)[1]) for s in range(5)}
    assert len(vals) > 1


def test_split_pairs_grouped_keeps_groups_together():
    names = [f"patient{p}_slide{s}" for p in range(8) for s in range(1 + p % 3)]
    pairs = _fake_pairs(names)
    for seed in range(5):
        train, val = split_pairs(pairs, val_fraction=0.25, seed=seed, group_pattern=r"(patient\d+)_")
        g_train = {p.name.split("_")[0] for p in train}
        g_val = {p.name.split("_")[0] for p in val}
        assert g_train and g_val and not g_train & g_val
        assert len(train) + len(val) == len(pairs)


@pytest.mark.parametrize(
    "pairs,kwargs,words",
    [
        (_fake_pairs(["a"]), {}, "at least 2"),
        (_fake_pairs(["a", "b"]), {"val_fraction": 0.0}, "val_fraction"),
        (_fake_pairs(["a", "b"]), {"val_fraction": 1.0}, "val_fraction"),
        (_fake_pairs(["p1_a", "p1_b", "p1_c"]), {"group_pattern": r"(p\d)_"}, "one group"),
    ],
    ids=["one_pair", "zero_fraction", "full_fraction", "single_group"],
)
def test_split_pairs_refused(pairs, kwargs, words):
    with pytest.raises(QmedInputError, match=words):
        split_pairs(pairs, **kwargs)


# ------------------------------------------------------------------------------------- load_pair
def test_load_pair_size_mismatch_names_mask(tmp_path):
    img = _img(tmp_path / "images" / "a.png", h=16, w=20)
    msk = _mask(tmp_path / "masks" / "a_mask.png", h=16, w=21)
    with pytest.raises(QmedInputError, match="21x16") as ei:
        load_pair(Pair("a", img, msk))
    assert ei.value.path == msk and "a.png" in str(ei.value)


def test_load_pair_without_mask(tmp_path):
    img = _img(tmp_path / "a.png")
    with pytest.raises(QmedInputError, match="no mask"):
        load_pair(Pair("a", img, None))


# ----------------------------------------------------------------------------------- fingerprint
def test_fingerprint_small_hand_made_set(tmp_path):
    root = tmp_path / "ds"
    # a: 2 objects (100 px and 20 px); b: empty; c: 3 objects (30, 49, 50 px), 32x40; d: empty
    m = np.zeros((16, 20), np.uint16)
    m[0:10, 0:10] = 1
    m[12:16, 12:17] = 2
    _img(root / "images" / "a.png")
    _mask(root / "masks" / "a.png", m)
    _img(root / "images" / "b.png")
    _mask(root / "masks" / "b.png", np.zeros((16, 20), np.uint8))
    c = np.zeros((32, 40), np.uint16)
    c[0:5, 0:6] = 1  # 30
    c[10:17, 10:17] = 2  # 49
    c[20:30, 20:25] = 3  # 50
    _img(root / "images" / "c.png", h=32, w=40)
    _mask(root / "masks" / "c.png", c)
    _img(root / "images" / "d.png")
    _mask(root / "masks" / "d.png", np.zeros((16, 20), np.uint8))

    fp = fingerprint(find_pairs(root))
    assert fp["n_pairs"] == 4
    assert fp["sizes"] == {"20x16": 3, "40x32": 1}
    assert fp["min_side"] == 16
    assert fp["channels"] == [1]
    assert fp["empty_fraction"] == pytest.approx(0.5)
    assert fp["objects_per_image"] == {"min": 0, "median": 1.0, "max": 3}
    assert fp["object_size_px"]["n"] == 5
    assert fp["object_size_px"]["small_lt_50"] == 3  # 20, 30, 49; not 50 or 100
    assert fp["object_size_px"]["median"] == 49.0
    # diameter: a's components 100 and 20 px (median 60), c's median 49; empty images left out
    d_a, d_c = (4 * 60 / np.pi) ** 0.5, (4 * 49 / np.pi) ** 0.5
    assert fp["object_diameter_px"] == pytest.approx((d_a + d_c) / 2)
    assert fp["foreground_fraction"]["max"] == pytest.approx(120 / 320)
    assert fp["foreground_fraction"]["min"] == 0.0
    # --preset auto's crop: objects ~8 px across want 128 px (10 diameters, at least 128), but the
    # smallest side (16 px, rounded up to the 64 px floor) bounds it, and the reason says so
    over, why = plan(fp)
    assert over["data"]["crop"] == 64
    assert "bounded by the smallest image side, 16 px; smaller images are padded" in why["data.crop"]
    assert isinstance(fp["hash"], str) and len(fp["hash"]) == 12
    assert fingerprint(find_pairs(root))["hash"] == fp["hash"]  # stable


def test_fingerprint_hash_changes_with_masks(tmp_path):
    root = _dataset(tmp_path / "ds")
    h1 = fingerprint(find_pairs(root))["hash"]
    _mask(root / "masks" / "b.png", np.zeros((16, 20), np.uint8))
    assert fingerprint(find_pairs(root))["hash"] != h1


def test_fingerprint_empty_list():
    with pytest.raises(QmedInputError, match="empty dataset"):
        fingerprint([])


@pytest.mark.skipif(
    not (SHARED_DATA / "dsb2018-fluo" / "train").is_dir(), reason=f"real data not found at {SHARED_DATA}"
)
def test_fingerprint_dsb2018_fluo_train():
    t0 = time.perf_counter()
    pairs = find_pairs(SHARED_DATA / "dsb2018-fluo" / "train")
    fp = fingerprint(pairs)
    elapsed = time.perf_counter() - t0
    assert fp["n_pairs"] == 373
    assert fp["channels"] == [1]
    assert fp["min_side"] == 256
    assert 0.001 < fp["foreground_fraction"]["min"] < 0.003
    assert 0.40 < fp["foreground_fraction"]["max"] < 0.42
    assert fp["empty_fraction"] == 0.0
    assert plan(fp)[0]["data"]["crop"] == 256  # nuclei ~17 px across want 256 (10 diameters), and every side is >= 256
    assert elapsed < 120, f"fingerprint of 373 images took {elapsed:.0f}s"
