"""Reinhard stain normalisation (qmed.data.stain): L*a*b* by hand, the transfer's promise, degenerate images."""

import numpy as np
import pytest
import torch

from qmed.config import resolve_config
from qmed.data.batches import model_input
from qmed.data.stain import ReinhardNormalization, lab_stats, lab_to_rgb, reinhard, rgb_to_lab, stain_target
from qmed.errors import QmedInputError


def lab_of(rgb) -> np.ndarray:
    return rgb_to_lab(torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)).flatten().numpy()


def test_lab_by_hand():
    assert lab_of([1.0, 1.0, 1.0]) == pytest.approx([100.0, 0.0, 0.0], abs=0.01)  # the D65 white
    assert lab_of([0.0, 0.0, 0.0]) == pytest.approx([0.0, 0.0, 0.0], abs=1e-4)
    # mid gray: linear ((0.5 + 0.055) / 1.055)^2.4 = 0.21404 = Y; L = 116 * Y^(1/3) - 16 = 53.389
    assert lab_of([0.5, 0.5, 0.5]) == pytest.approx([53.389, 0.0, 0.0], abs=0.01)
    # pure red (sRGB's primary): L 53.24, a 80.09, b 67.20 (CIE's published values for #FF0000)
    assert lab_of([1.0, 0.0, 0.0]) == pytest.approx([53.24, 80.09, 67.20], abs=0.2)


def test_lab_round_trip():
    x = torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-4


def test_reinhard_gives_the_target_statistics():
    rng = np.random.default_rng(0)
    a = np.clip(0.55 + 0.15 * rng.standard_normal((40, 50, 3)) * [1.0, 0.6, 0.8], 0, 1).astype(np.float32)
    b = np.clip([0.8, 0.5, 0.7] + 0.08 * rng.standard_normal((40, 50, 3)), 0, 1).astype(np.float32)  # a pinker "stain"
    mean_b, std_b = lab_stats(rgb_to_lab(torch.from_numpy(b.transpose(2, 0, 1).copy())[None]))
    target = [*mean_b.flatten().tolist(), *std_b.flatten().tolist()]
    out = reinhard(a, target)
    assert out.shape == a.shape and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    mean_o, std_o = lab_stats(rgb_to_lab(torch.from_numpy(out.transpose(2, 0, 1).copy())[None]))
    assert mean_o.flatten().tolist() == pytest.approx(target[:3], abs=0.5)  # up to the few pixels clipped to sRGB
    assert std_o.flatten().tolist() == pytest.approx(target[3:], abs=0.5)
    assert reinhard(b, target) == pytest.approx(b, abs=2e-3)  # an image already at the target is left as it is


def test_flat_image_and_target_median():
    # a flat image has no spread: every pixel becomes the target's mean colour (here mid gray)
    flat = np.full((4, 5, 3), 0.2, np.float32)
    assert reinhard(flat, [53.389, 0, 0, 10, 10, 10]) == pytest.approx(np.full((4, 5, 3), 0.5), abs=1e-3)
    # black, mid gray, white: L means 0, 53.389, 100 -> median 53.389; a, b 0; every std 0
    imgs = [np.full((3, 3, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    assert stain_target(imgs) == pytest.approx([53.389, 0.0, 0.0, 0.0, 0.0, 0.0], abs=0.01)
    with pytest.raises(ValueError, match="at least one"):
        stain_target([])
    with pytest.raises(ValueError, match="got 2 numbers"):
        ReinhardNormalization([1.0, 2.0])


def test_model_input_needs_a_target():
    cfg = resolve_config("tiny", None, {"data": {"normalize": "reinhard"}})
    img = np.full((4, 4, 1), 0.5, np.float32)
    with pytest.raises(QmedInputError, match="stain_target"):
        model_input(img, cfg)
    cfg.data.stain_target = (53.389, 0, 0, 10, 10, 10)
    assert model_input(img, cfg).shape == (4, 4, 3)  # gray repeated to RGB, then normalised
