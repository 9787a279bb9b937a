"""Synthetic fluorescence nuclei: seeded, well-formed, and readable through qmed's own readers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qmed.data.dataset import find_pairs, fingerprint, load_pair
from qmed.data.synthetic import generate_sample, write_dataset, write_demo_splits
from qmed.errors import QmedInputError
from qmed.io.images import read_image, read_mask


@pytest.mark.parametrize("size", [(256, 256), (64, 96), (40, 40)], ids=["256", "64x96", "40"])
def test_generate_sample_shapes_and_dtypes(size):
    image, labels = generate_sample(np.random.default_rng(1), size=size)
    assert image.shape == labels.shape == size
    assert image.dtype == np.uint8 and labels.dtype == np.uint16


def test_generate_sample_deterministic():
    a = generate_sample(np.random.default_rng(123))
    b = generate_sample(np.random.default_rng(123))
    c = generate_sample(np.random.default_rng(124))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_generate_sample_empty():
    image, labels = generate_sample(np.random.default_rng(7), empty=True)
    assert labels.max() == 0
    assert image.mean() < 40  # a dark background, not a blank or saturated frame
    assert image.std() > 0


SAMPLES = [generate_sample(np.random.default_rng([2024, i])) for i in range(40)]


@pytest.mark.parametrize("i", range(len(SAMPLES)))
def test_labels_consistent_with_image(i):
    image, labels = SAMPLES[i]
    fg = labels > 0
    ids = np.unique(labels[fg])
    assert fg.any(), "generate_sample(empty=False) must draw at least one nucleus"
    # Labels are 1..N, and each nucleus is a single 4-connected region.
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    for j, sl in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
        _, n = ndimage.label(labels[sl] == j)
        assert n == 1, f"nucleus {j} is in {n} pieces"
    # Nuclei are brighter than the background, on average and one by one.
    assert image[fg].mean() > image[~fg].mean() + 8
    means = ndimage.mean(image.astype(np.float64), labels, ids)
    assert np.mean(means > np.median(image[~fg])) > 0.9


def test_samples_vary_like_the_real_data():
    fg = np.array([(lab > 0).mean() for _, lab in SAMPLES])
    sizes = np.concatenate([np.bincount(lab.ravel())[1:] for _, lab in SAMPLES])
    sizes = sizes[sizes > 0]
    assert fg.min() < 0.02 and fg.max() > 0.15  # sparse and crowded images
    assert fg.max() < 0.6
    assert (sizes < 50).any()  # tiny nuclei occur
    assert (sizes > 400).any()  # and large ones
    assert 40 < np.median(sizes) < 800
    # Some nuclei touch (clusters): a label next to a different label.
    touching = 0
    for _, lab in SAMPLES:
        a, b = lab[:, :-1], lab[:, 1:]
        touching += int(np.count_nonzero((a > 0) & (b > 0) & (a != b)))
    assert touching > 0


def test_write_dataset_deterministic_bytes(tmp_path):
    d1 = write_dataset(tmp_path / "one", 6, size=(64, 64), seed=5)
    d2 = write_dataset(tmp_path / "two", 6, size=(64, 64), seed=5)
    d3 = write_dataset(tmp_path / "three", 6, size=(64, 64), seed=6)
    for sub in ("images", "masks"):
        f1 = sorted((d1 / sub).iterdir())
        f2 = sorted((d2 / sub).iterdir())
        assert [p.name for p in f1] == [f"synth_{i:04d}.png" for i in range(6)]
        assert [p.name for p in f1] == [p.name for p in f2]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(f1, f2))
    assert (d1 / "images" / "synth_0000.png").read_bytes() != (d3 / "images" / "synth_0000.png").read_bytes()


def test_write_dataset_prefix_stable_when_n_grows(tmp_path):
    # Image i depends on (seed, i) only: a bigger dataset starts with the same images.
    small = write_dataset(tmp_path / "small", 3, size=(48, 48), seed=1, empty_fraction=0.0)
    big = write_dataset(tmp_path / "big", 5, size=(48, 48), seed=1, empty_fraction=0.0)
    for i in range(3):
        n = f"synth_{i:04d}.png"
        assert (small / "masks" / n).read_bytes() == (big / "masks" / n).read_bytes()


def test_write_dataset_removes_stale_files_only(tmp_path):
    d = write_dataset(tmp_path / "d", 5, size=(32, 32))
    (d / "images" / "mine.png").write_bytes((d / "images" / "synth_0000.png").read_bytes())
    write_dataset(d, 3, size=(32, 32))
    assert sorted(p.name for p in (d / "images").iterdir()) == [
        "mine.png",
        "synth_0000.png",
        "synth_0001.png",
        "synth_0002.png",
    ]
    assert sorted(p.name for p in (d / "masks").iterdir()) == ["synth_0000.png", "synth_0001.png", "synth_0002.png"]


@pytest.mark.parametrize("n,fraction,expected", [(20, 0.1, 2), (10, 0.0, 0), (10, 0.25, 2), (7, 1.0, 7), (30, 0.5, 15)])
def test_write_dataset_empty_fraction(tmp_path, n, fraction, expected):
    d = write_dataset(tmp_path / "d", n, size=(32, 32), seed=2, empty_fraction=fraction)
    empties = sum(not read_mask(p)[0].any() for p in sorted((d / "masks").iterdir()))
    assert empties == expected


def test_round_trip_through_find_pairs_and_load_pair(tmp_path):
    root = write_dataset(tmp_path / "synthetic data", 8, size=(64, 80), seed=3)
    pairs = find_pairs(root)
    assert [p.name for p in pairs] == [f"synth_{i:04d}" for i in range(8)]
    labels_read = {}
    for pair in pairs:
        img, fg, labels = load_pair(pair)
        assert img.shape == (64, 80, 1) and img.dtype == np.float32
        assert fg.shape == (64, 80)
        labels_read[pair.name] = labels
    # The files hold exactly what generate_sample makes from the image's own stream (seed, 0, i):
    # label PNGs read back as the generated labels, not as re-derived components.
    empty_idx = {i for i, p in enumerate(pairs) if not labels_read[p.name].any()}
    for i, pair in enumerate(pairs):
        image, labels = generate_sample(
            np.random.default_rng(np.random.SeedSequence([3, 0, i])), (64, 80), empty=i in empty_idx
        )
        np.testing.assert_array_equal(labels_read[pair.name], labels.astype(np.int32))
        np.testing.assert_allclose(read_image(pair.image)[..., 0], image / 255.0, atol=1e-6)
    fp = fingerprint(pairs)
    assert fp["n_pairs"] == 8 and fp["channels"] == [1]


def test_write_demo_splits(tmp_path):
    train, val = write_demo_splits(tmp_path / "demo", n_train=4, n_val=3, size=(48, 48), seed=0)
    assert train == tmp_path / "demo" / "train" and val == tmp_path / "demo" / "val"
    assert len(find_pairs(train)) == 4 and len(find_pairs(val)) == 3
    # Independent streams: val is not a copy of the first train images.
    t0 = (train / "images" / "synth_0000.png").read_bytes()
    v0 = (val / "images" / "synth_0000.png").read_bytes()
    assert t0 != v0


def test_write_dataset_speed(tmp_path):
    import time

    t0 = time.perf_counter()
    write_dataset(tmp_path / "d", 20, size=(256, 256), seed=0)
    assert time.perf_counter() - t0 < 10  # ~0.03 s per image here; generous for slow CI


@pytest.mark.parametrize(
    "kwargs", [{"n": 0}, {"n": 3, "empty_fraction": 1.5}, {"n": 3, "size": (4, 4)}], ids=["n0", "fraction", "tiny_size"]
)
def test_write_dataset_bad_arguments(tmp_path, kwargs):
    with pytest.raises(QmedInputError):
        write_dataset(tmp_path / "d", **kwargs)
