"""Object size: the median equivalent diameter of the objects in a mask or a set of masks.

`qmed train` records the training masks' figure; `qmed predict` with `predict.rescale` measures
it again on a first-pass prediction and resizes the image so the two agree (Cellpose's diameter
idea), because a network trained on 20 px nuclei segments 10 px ones less well.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=int)


def label_components(mask: np.ndarray) -> np.ndarray:
    """Connected components of a binary mask, 8-connectivity, int32 labels 1..N (0 background)."""
    labels, _ = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    return labels.astype(np.int32, copy=False)


def object_diameter(mask: np.ndarray, min_area: int = 4) -> float | None:
    """Median equivalent diameter (px) of one mask's objects: a bool mask is split into
    8-connected components, an int map is taken as instance labels. Objects under `min_area`
    pixels (speckle) are ignored; None when no object is left."""
    labels = np.asarray(mask)
    labels = label_components(labels) if labels.dtype == bool else labels.astype(np.int64, copy=False)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas >= max(min_area, 1)]
    if areas.size == 0:
        return None
    return float(np.sqrt(4.0 * np.median(areas) / np.pi))


def median_diameter(per_image: Iterable[float | None]) -> float | None:
    """Median over images of each image's median diameter (so one crowded image does not
    dominate); images without objects (None) are left out, None when none has any."""
    found = [d for d in per_image if d is not None]
    return float(np.median(found)) if found else None


def dataset_diameter(masks: Iterable[np.ndarray]) -> float | None:
    return median_diameter(object_diameter(m) for m in masks)


def contact_map(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of each object that lie within `width` px (a disc) of a different object: where
    touching nuclei meet (the DSB2018 winners' contact target, issue 20's instance head). Bool HxW;
    empty for a binary mask's connected components, which by construction never touch."""
    lab = np.asarray(labels)
    fg = lab > 0
    if not fg.any():
        return np.zeros(lab.shape, dtype=bool)
    lab = lab.astype(np.int32, copy=False)
    r = int(width)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = yy**2 + xx**2 <= r * r
    # At an object pixel the disc's largest label exceeds its own iff a higher-numbered object is
    # near, and the smallest (background counted as +inf) is below it iff a lower-numbered one is.
    hi = ndimage.grey_dilation(lab, footprint=disc, mode="nearest")
    lo = ndimage.grey_erosion(np.where(fg, lab, np.iinfo(np.int32).max), footprint=disc, mode="nearest")
    return fg & ((hi != lab) | (lo != lab))
