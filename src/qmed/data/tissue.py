"""Where a whole slide holds tissue: a mask from a thumbnail, so background blocks never reach the network.

The thumbnail is made from the coarsest pyramid level that is still at least THUMB_MAX px on its
longer side (or level 0 of a small slide), reduced by an integer factor with block means, tile by
tile: never a whole large level in memory.

The mask (as QuPath's and TIAToolbox's tissue detectors do) is Otsu's threshold on a channel that
separates tissue from glass for the stain: on brightfield slides (a bright background: H&E, IHC)
the HSV saturation, which is near 0 for white glass and grey dust and high for any stain; on
darkfield slides (fluorescence, a dark background) the brightness. A brightfield threshold is kept
within [SAT_FLOOR, SAT_CAP]: the floor keeps glass noise out when there is hardly any tissue to
split from it, and the cap keeps pale tissue in when the slide is nearly all tissue (Otsu then
splits eosin from haematoxylin instead of tissue from glass; MoNuSeg's H&E tissue measures a
median saturation of 0.2-0.5, its glass and lumens below 0.05). Holes smaller than HOLE_FRACTION
of the thumbnail are filled (lumens, fat inside tissue) and specks smaller than SPECK_FRACTION are
dropped (dust).
"""

from __future__ import annotations

import math

import numpy as np

THUMB_MAX = 2048  # the thumbnail's longer side, px (at most)
SAT_FLOOR, SAT_CAP = 0.05, 0.15  # brightfield saturation threshold bounds (0..1)
DARK_FLOOR = 0.02  # darkfield brightness threshold floor (0..1)
HOLE_FRACTION = 0.01  # holes below this share of the thumbnail's area are filled
SPECK_FRACTION = 1e-5  # components below this share (and below SPECK_MIN px) are dropped
SPECK_MIN = 9  # 3 x 3 thumbnail px: 50-100 level-0 px at the usual downsamples, dust


def thumbnail(reader, level: int | None = None, max_side: int = THUMB_MAX) -> tuple[np.ndarray, float]:
    """(h, w, 3) uint8 RGB of the slide at most `max_side` px on its longer side, and its downsample
    (level-0 px per thumbnail px). `level`: read that level (default: the coarsest one at least
    `max_side` px long, or level 0). Read in tiles and reduced by block means of an integer factor."""
    dims, downs = list(reader.dimensions), [float(d) for d in reader.downsamples]
    if level is None:
        level = max(i for i, (w, h) in enumerate(dims) if i == 0 or max(w, h) >= max_side)
    w, h = dims[level]
    f = max(1, math.ceil(max(w, h) / max_side))
    tw, th = math.ceil(w / f), math.ceil(h / f)
    step = f * max(1, 1024 // f)  # a read tile: a whole number of thumbnail pixels
    out = np.empty((th, tw, 3), np.uint8)
    for y in range(0, h, step):
        for x in range(0, w, step):
            rw, rh = min(step, w - x), min(step, h - y)
            # Outside the slide reads as white (SlideReader's rule), so edge tiles are padded to whole blocks.
            tile = np.asarray(reader.read(level, x, y, math.ceil(rw / f) * f, math.ceil(rh / f) * f), dtype=np.float32)
            small = tile.reshape(tile.shape[0] // f, f, tile.shape[1] // f, f, 3).mean(axis=(1, 3))
            out[y // f : y // f + small.shape[0], x // f : x // f + small.shape[1]] = np.round(small).astype(np.uint8)
    return out, downs[level] * f


def tissue_channel(rgb: np.ndarray) -> tuple[np.ndarray, str]:
    """The channel that separates tissue from background, in [0, 1], and its name: "saturation"
    for a bright (brightfield) background, "brightness" for a dark (fluorescence) one."""
    x = np.asarray(rgb, dtype=np.float32) / 255.0
    mx, mn = x.max(axis=2), x.min(axis=2)
    if np.median(x.mean(axis=2)) < 0.5:
        return mx, "brightness"
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32), "saturation"


def tissue_from_rgb(rgb: np.ndarray) -> tuple[np.ndarray, dict]:
    """Tissue mask (bool, the thumbnail's shape) of a thumbnail, and how it was made (channel, threshold)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    chan, name = tissue_channel(rgb)
    if chan.size == 0 or float(chan.max()) == float(chan.min()):
        t = 1.0  # a flat thumbnail (all glass, or all one colour): nothing to split, call it background
    else:
        t = float(threshold_otsu(chan))
    t = float(np.clip(t, SAT_FLOOR, SAT_CAP)) if name == "saturation" else max(t, DARK_FLOOR)
    mask = chan > t
    area = mask.size
    # By hand, not skimage's remove_small_*: their size keyword changed in 0.26 (qmed supports >= 0.21).
    holes, n = ndimage.label(~mask)
    if n:
        sizes = np.bincount(holes.ravel())
        edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes < HOLE_FRACTION * area
        small[0] = False
        small[edge] = False  # glass open to the slide's edge is no hole
        mask |= small[holes]
    comps, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(comps.ravel())
        speck = sizes < max(SPECK_MIN, SPECK_FRACTION * area)
        speck[0] = False
        mask &= ~speck[comps]
    return mask, {
        "channel": name,
        "threshold": round(t, 4),
        "tissue_fraction": round(float(mask.mean()), 4) if area else 0.0,
    }


def tissue_mask(reader, level: int | None = None) -> tuple[np.ndarray, float]:
    """The slide's tissue mask at a low resolution (bool) and its downsample (level-0 px per mask px)."""
    rgb, ds = thumbnail(reader, level)
    return tissue_from_rgb(rgb)[0], ds


def region_has_tissue(
    mask: np.ndarray, downsample: float, x0: float, y0: float, x1: float, y1: float, margin: int = 1
) -> bool:
    """Does the level-0 rectangle [x0, x1) x [y0, y1) touch the mask, widened by `margin` mask px
    (a nucleus on the tissue's edge belongs to the block that holds it)?"""
    h, w = mask.shape
    c0 = max(0, int(math.floor(x0 / downsample)) - margin)
    r0 = max(0, int(math.floor(y0 / downsample)) - margin)
    c1 = min(w, int(math.ceil(x1 / downsample)) + margin)
    r1 = min(h, int(math.ceil(y1 / downsample)) + margin)
    return c1 > c0 and r1 > r0 and bool(mask[r0:r1, c0:c1].any())


def sample_points(
    mask: np.ndarray | None, shape_hw: tuple[int, int], n: int, seed: int = 0
) -> list[tuple[float, float]]:
    """Up to `n` (x, y) points in [0, 1)² (fractions of the slide's width and height): on tissue pixels
    of `mask` drawn at random (seeded), or, with no mask, the centres of a regular grid over the slide."""
    if mask is None:
        k = max(1, math.ceil(math.sqrt(n)))
        return [((i + 0.5) / k, (j + 0.5) / k) for j in range(k) for i in range(k)][:n]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    pick = np.random.default_rng(seed).choice(len(ys), size=min(n, len(ys)), replace=False)
    pick.sort()
    h, w = mask.shape
    return [((xs[i] + 0.5) / w, (ys[i] + 0.5) / h) for i in pick]


def overlay(rgb: np.ndarray, mask: np.ndarray, color=(0, 160, 0), alpha: float = 0.35) -> np.ndarray:
    """The thumbnail with the tissue tinted and its outline drawn, for OUT/tissue.png."""
    from scipy import ndimage

    out = np.asarray(rgb, dtype=np.float32).copy()
    c = np.asarray(color, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * c
    edge = mask & ~ndimage.binary_erosion(mask)
    out[edge] = c
    return np.round(out).astype(np.uint8)
