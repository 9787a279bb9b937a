"""Complexity-weighted sampling: static per-image weights that favour hard images.

The paper samples training images with static weights favouring "complex" images and gives small
structures 1.5x weight, but gives no formula. Ours, from the instance-label mask alone:

    features (per image):
      n_objects          number of instances (distinct non-zero labels)
      boundary_per_area  boundary pixels / foreground pixels; a boundary pixel is a foreground pixel
                         with a 4-neighbour of a different label (background *or* another instance,
                         so touching cells count); the image border is not a boundary
      has_small          any instance smaller than `small_area` = 50 px

    weight (per image):
      empty image:  w = base                                  (base = 1.0)
      otherwise:    w = base + a·min(bpa / median_bpa, cap) + b·min(n / median_n, cap)
                    (a = b = 0.5, cap = 3; medians over the non-empty images of the dataset)
                    × small_boost (1.5) if has_small
      then all weights are divided by their mean (mean weight 1).

Reading it: a typical annotated image (at the dataset medians) weighs 2x an empty one; many or
small/irregular/touching cells (high boundary density) raise it up to 4x, ×1.5 with small structures.
Empty images keep a base weight because they are most of the data (about 60 % in the paper's set)
and teach the model to predict nothing; the cap stops a few crowded images from dominating.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import WeightedRandomSampler

SMALL_AREA = 50


def complexity_score(labels: np.ndarray, small_area: int = SMALL_AREA) -> dict:
    """Raw complexity features of one mask (H×W int instance labels, 0 = background; a bool mask is
    split into 8-connected components)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an H×W label map, got shape {labels.shape}")
    if labels.dtype == bool:
        labels, _ = ndimage.label(labels, structure=np.ones((3, 3), dtype=int))
    labels = labels.astype(np.int64, copy=False)
    fg = labels > 0
    areas = np.bincount(labels[fg].ravel()) if fg.any() else np.zeros(0, np.int64)
    areas = areas[areas > 0]  # labels need not be contiguous
    # Edge padding: a neighbour outside the image has the pixel's own label, so the border is no boundary.
    p = np.pad(labels, 1, mode="edge")
    differs = (p[:-2, 1:-1] != labels) | (p[2:, 1:-1] != labels) | (p[1:-1, :-2] != labels) | (p[1:-1, 2:] != labels)
    boundary = int((fg & differs).sum())
    fg_area = int(fg.sum())
    return {
        "n_objects": int(areas.size),
        "fg_area": fg_area,
        "fg_fraction": fg_area / labels.size,
        "boundary_pixels": boundary,
        "boundary_per_area": boundary / fg_area if fg_area else 0.0,
        "min_area": int(areas.min()) if areas.size else 0,
        "has_small": bool(areas.size and areas.min() < small_area),
    }


def complexity_weights(
    features: list[dict], small_boost: float = 1.5, base: float = 1.0, a: float = 0.5, b: float = 0.5, cap: float = 3.0
) -> np.ndarray:
    """Per-image sampling weights (mean 1) from complexity_score() features; formula in the module docstring."""
    if not features:
        return np.zeros(0)
    n = np.array([f["n_objects"] for f in features], dtype=float)
    bpa = np.array([f["boundary_per_area"] for f in features], dtype=float)
    small = np.array([bool(f["has_small"]) for f in features])
    nonempty = n > 0
    w = np.full(len(features), float(base))
    if nonempty.any():
        med_n = np.median(n[nonempty])
        med_b = np.median(bpa[nonempty])
        med_b = med_b if med_b > 0 else 1.0  # e.g. every mask fills its image: no boundaries anywhere
        w[nonempty] += a * np.minimum(bpa[nonempty] / med_b, cap) + b * np.minimum(n[nonempty] / med_n, cap)
    w[small & nonempty] *= small_boost
    return w / w.mean()


def hardness_weights(hardness: np.ndarray, cap: float = 3.0) -> np.ndarray:
    """Weights for `data.sampler: hard` (online hard-image mining): each image's running training
    loss over the median running loss, clipped to [1/cap, cap]; an image not drawn yet (NaN) gets 1.
    Mean 1. Unlike the complexity weights, which read the masks once, these follow what the model
    still gets wrong (on DSB2018 fluorescence: the embryo images, whose diffuse glow the ground
    truth leaves out; docs/benchmarks.md 1g)."""
    h = np.asarray(hardness, dtype=float)
    w = np.ones(h.size)
    seen = np.isfinite(h)
    if seen.any():
        med = np.median(h[seen])
        w[seen] = np.clip(h[seen] / med, 1.0 / cap, cap) if med > 0 else 1.0
    return w / w.mean() if w.size else w


def make_sampler(weights, num_samples: int, seed: int) -> WeightedRandomSampler:
    """Sampler drawing `num_samples` indices with replacement, ∝ weights, reproducibly for a seed.

    The generator is the sampler's own, so each epoch (each iteration) draws a new, but seed-determined,
    sequence, independent of the global torch RNG.
    """
    g = torch.Generator().manual_seed(int(seed))
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    return WeightedRandomSampler(w, num_samples=int(num_samples), replacement=True, generator=g)
