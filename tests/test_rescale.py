"""Object-size measurement, scale augmentation and size-normalised prediction (hand-made cases)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from qmed.config import QmedConfig
from qmed.data.batches import TrainCrops
from qmed.data.objects import dataset_diameter, object_diameter
from qmed.segment.predict import predict_image


def d(area):
    return math.sqrt(4 * area / math.pi)


def test_object_diameter_hand_computed():
    m = np.zeros((40, 40), bool)
    m[1:5, 1:5] = True  # area 16
    m[10:12, 10:12] = True  # area 4
    m[20:26, 20:26] = True  # area 36
    assert object_diameter(m) == pytest.approx(d(16))  # median of 4, 16, 36
    m[35, 35] = True  # a 1-pixel speck is below min_area and ignored: median of 4, 16, 36 again
    assert object_diameter(m) == pytest.approx(d(16))


def test_object_diameter_instance_labels_and_empty():
    lab = np.zeros((10, 10), np.int32)
    lab[0:2, 0:5] = 1  # area 10
    lab[2:6, 0:5] = 2  # area 20, touching object 1: labels keep them apart
    assert object_diameter(lab) == pytest.approx(d(15))
    assert object_diameter(np.zeros((8, 8), bool)) is None
    speck = np.zeros((8, 8), bool)
    speck[3, 3] = True
    assert object_diameter(speck) is None


def test_dataset_diameter_is_the_median_of_image_medians():
    a, b, c = (np.zeros((20, 20), bool) for _ in range(3))
    a[0:2, 0:2] = True  # 4
    b[0:4, 0:4] = True  # 16
    b[10:12, 10:12] = True  # 4 -> image median area 10
    c[0:6, 0:6] = True  # 36
    assert dataset_diameter([a, b, c, np.zeros((5, 5), bool)]) == pytest.approx(d(10))
    assert dataset_diameter([np.zeros((5, 5), bool)]) is None


class _Data:
    """One 64x64 image holding a 16x16 bright square with its mask."""

    def __init__(self):
        img = np.zeros((64, 64, 3), np.float32)
        fg = np.zeros((64, 64), bool)
        img[16:32, 16:32] = 1.0
        fg[16:32, 16:32] = True
        self.item = (img, fg, fg.astype(np.int32))

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.item


def _crops(scale_p, scale_range):
    cfg = QmedConfig()
    cfg.data.crop = 32
    cfg.augment.elastic_p = 0.0
    cfg.augment.brightness_contrast_p = 0.0
    cfg.augment.scale_p = scale_p
    cfg.augment.scale_range = scale_range
    return TrainCrops(_Data(), cfg)


def test_scale_augmentation_zooms_out():
    # f = 0.5: a 64 px window (the whole image) is resized to the 32 px crop, so the 16x16 square
    # becomes 8x8 (flips and rotations keep its area).
    x, y = _crops(1.0, (0.5, 0.5))[(0, 0)]
    assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32)
    assert y.sum().item() == 64
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


def test_scale_augmentation_off_keeps_pixels():
    for pos in range(5):
        _, y = _crops(0.0, (0.5, 0.5))[(0, pos)]
        assert y.sum().item() <= 256  # a plain 32 px crop holds at most the whole 16x16 square


def test_factor_ranges_must_be_ordered_and_positive():
    for bad in (
        {"augment": {"scale_range": (1.4, 0.7)}},
        {"augment": {"scale_range": (0.0, 1.0)}},
        {"predict": {"rescale_limits": (2.0, 0.5)}},
    ):
        with pytest.raises(ValueError, match="0 < low <= high"):
            QmedConfig(**bad)


class _Bright(nn.Module):
    """Logits from the first channel: bright pixels are foreground (a stand-in for a trained net)."""

    def forward(self, x):
        return 40.0 * (x[:, :1] - 0.5)


def _disks(radius, n=3, size=96):
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3), np.float32)
    for k in range(n):
        cy, cx = 20 + 28 * k, 20 + 28 * k
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return img


def _cfg(diameter, rescale=True):
    cfg = QmedConfig()
    cfg.train.amp = False
    cfg.predict.rescale = rescale
    cfg.predict.object_diameter = diameter
    return cfg


def test_rescaled_prediction_resizes_to_the_training_diameter_and_back():
    img = _disks(5)  # diameter about 11 px
    found = object_diameter(img[..., 0] > 0.5)
    prob, f = predict_image(_Bright(), img, _cfg(2 * found), tta=3)
    assert f == pytest.approx(2.0)
    assert prob.shape == img.shape[:2]
    truth = img[..., 0] > 0.5
    inter = ((prob > 0.5) & truth).sum()
    assert 2 * inter / ((prob > 0.5).sum() + truth.sum()) > 0.95  # resized back onto the same disks


def test_rescale_limits_and_dead_band():
    img = _disks(5)
    found = object_diameter(img[..., 0] > 0.5)
    assert predict_image(_Bright(), img, _cfg(100 * found))[1] == pytest.approx(2.0)  # clipped to rescale_limits
    assert predict_image(_Bright(), img, _cfg(found / 100))[1] == pytest.approx(0.5)
    assert predict_image(_Bright(), img, _cfg(1.05 * found))[1] == 1.0  # within 10 %: no resize
    assert predict_image(_Bright(), np.zeros((64, 64, 3), np.float32), _cfg(20.0))[1] == 1.0  # nothing found
    assert predict_image(_Bright(), img, _cfg(2 * found, rescale=False))[1] == 1.0


def _zoomed_crops(zoom):
    c = _crops(0.0, (1.0, 1.0)).data
    cfg = QmedConfig()
    cfg.data.crop = 32
    cfg.data.zoom = zoom
    cfg.augment.elastic_p = 0.0
    cfg.augment.brightness_contrast_p = 0.0
    return TrainCrops(c, cfg)


def test_zoom_cuts_a_smaller_window_and_enlarges_it():
    # zoom 2: a 16 px source window is resized to the 32 px crop, so each source pixel covers 2x2.
    # The window lies wholly inside or around the 16x16 square; the crop's mask pixels are 4x the
    # source pixels it covers (nearest-neighbour resize of a window aligned to whole pixels).
    seen = set()
    for pos in range(20):
        x, y = _zoomed_crops(2.0)[(0, pos)]
        assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32)
        n = int(y.sum().item())
        assert n % 4 == 0 and n <= 32 * 32
        seen.add(n)
    assert 32 * 32 in seen or max(seen) > 256  # some window falls inside the square: more than a plain crop holds
    # zoom 0.5: the whole 64 px image is resized into the crop, the square becomes 8x8 (as scale_p with f = 0.5)
    _, y = _zoomed_crops(0.5)[(0, 0)]
    assert y.sum().item() == 64


class _Sizes(nn.Module):
    """_Bright that records the spatial size of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return _Bright()(x)


def test_zoomed_prediction_sees_the_enlarged_image_and_returns_the_original_size():
    from pathlib import Path

    from qmed.data.batches import LoadedPairs
    from qmed.data.dataset import Pair
    from qmed.segment.validate import validate

    img = _disks(6)
    truth = img[..., 0] > 0.5
    for zoom, side in ((1.0, 96), (2.0, 192)):
        cfg = _cfg(None, rescale=False)
        cfg.data.zoom = zoom
        cfg.predict.tile = 512
        net = _Sizes()
        prob, f = predict_image(net, img, cfg)
        assert f == 1.0 and prob.shape == (96, 96)
        assert max(s[0] for s in net.seen) >= side and min(s[0] for s in net.seen) >= side  # padded to a multiple of 32
        assert 2 * ((prob > 0.5) & truth).sum() / ((prob > 0.5).sum() + truth.sum()) > 0.97
        # validation during training goes through the same path
        data = LoadedPairs([Pair("disks", Path("disks.png"), Path("disks_mask.png"))], cfg)
        data._cache[0] = (img, truth, truth.astype(np.int32))  # held in memory: no files read
        net.seen.clear()
        summary, rows = validate(net, data, cfg, torch.device("cpu"))
        assert min(s[0] for s in net.seen) >= side and rows[0]["dice"] > 0.97
