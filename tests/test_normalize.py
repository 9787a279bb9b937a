"""Per-image intensity normalisation (DataConfig.normalize): hand-computed values."""

import numpy as np

from qmed.config import resolve_config
from qmed.data.batches import model_input, normalize_intensity


def test_percentile_maps_low_and_high_to_0_and_1():
    img = np.arange(101, dtype=np.float32).reshape(101, 1, 1) / 400.0  # 0 .. 0.25, a dim image
    out = normalize_intensity(img, "percentile", (10.0, 90.0))
    # 10th percentile = 10/400, 90th = 90/400: value v -> (v - 10) / 80, clipped
    assert out[10, 0, 0] == 0.0 and out[0, 0, 0] == 0.0
    assert np.isclose(out[50, 0, 0], 0.5)
    assert out[90, 0, 0] == 1.0 and out[100, 0, 0] == 1.0


def test_flat_image_and_none_are_unchanged():
    flat = np.full((4, 4, 1), 0.3, np.float32)
    assert np.array_equal(normalize_intensity(flat, "percentile"), flat)
    img = np.random.default_rng(0).random((5, 5, 3)).astype(np.float32)
    assert np.array_equal(normalize_intensity(img, "none"), img)


def test_model_input_is_rgb_and_follows_the_config():
    gray = np.linspace(0, 0.1, 64, dtype=np.float32).reshape(8, 8, 1)
    cfg = resolve_config("tiny", overrides={"data": {"normalize": "percentile", "norm_percentiles": [0, 100]}})
    x = model_input(gray, cfg)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    assert np.isclose(x.min(), 0.0) and np.isclose(x.max(), 1.0)
    assert np.array_equal(x[..., 0], x[..., 2])
    raw = model_input(gray, resolve_config("tiny", overrides={"data": {"normalize": "none"}}))
    assert np.isclose(raw.max(), 0.1)
