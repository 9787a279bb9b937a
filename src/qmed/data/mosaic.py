"""Test slides from real tissue: a pyramidal tiled TIFF mosaic of annotated tiles, with its truth label map.

The slide is a grid of square cells. Each cell is a `cell` x `cell` crop of one source tile (MoNuSeg's
1000 x 1000 H&E tiles by default), drawn at random with a random crop offset, flip and quarter turn, or is
left blank (white glass, a fraction `blank` of the cells) so tissue detection has background to skip. The
whole plan is drawn from `seed` up front, so the same arguments give the same slide.

The truth is a uint32 instance label map of the same size (its own pyramidal OME-TIFF): each cell's objects
are renumbered 1..n in the order of their source ids and shifted by the number of objects in the cells
before it (row by row), so ids are unique over the slide and run 1..objects without gaps. An object cut by a
cell's crop or by the slide's edge keeps the part that shows. Source masks that are binary (MoNuSeg's are
0/255) become instances by connected components (qmed.io.images.read_mask), so nuclei that touch in the
source mask are one object in the truth.

Memory: the source tiles are held (MoNuSeg's 30: ~150 MB); both pyramids are written tile by tile
(qmed.io.pyramid), each tile cut from the cells it overlaps; nothing of the slide's size is ever held.
Without `tiles_root`, synthetic brightfield-like tiles are made (qmed.data.synthetic nuclei, darkened onto a
pink ground), for tests of the machinery where the real data is absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qmed.data.dataset import find_pairs
from qmed.errors import QmedInputError
from qmed.io.images import read_array, read_mask
from qmed.io.pyramid import write_pyramid

_TISSUE_RGB = np.array([236.0, 196.0, 218.0])  # eosin-pink ground of the synthetic tiles
_NUCLEUS_RGB = np.array([70.0, 45.0, 130.0])  # haematoxylin-purple nuclei


@dataclass(frozen=True)
class _Cell:
    source: int  # index into the sources, -1 = blank
    rot: int  # quarter turns (np.rot90's k)
    flip: bool  # mirrored left-right before turning
    oy: int  # crop offset in the source
    ox: int


def _size(size) -> tuple[int, int]:
    """(width, height) from an int (square) or a (width, height) pair."""
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ValueError(f"slide size must be positive, got {size!r}")
    return w, h


def _load_sources(tiles_root: str | Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """RGB uint8 images and compact instance labels (uint16/uint32) of every pair in a dataset folder."""
    images, labels, names = [], [], []
    for pair in find_pairs(tiles_root):
        img = read_array(pair.image)
        if img.dtype != np.uint8:
            raise QmedInputError(pair.image, f"mosaic tiles must be 8-bit images, got {img.dtype}")
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = np.ascontiguousarray(img[..., :3])
        _, lab = read_mask(pair.mask)
        if lab.shape != img.shape[:2]:
            raise QmedInputError(
                pair.mask, f"mask is {lab.shape[1]}x{lab.shape[0]} but its image is {img.shape[1]}x{img.shape[0]}"
            )
        images.append(img)
        labels.append(lab.astype(np.uint16 if lab.max() < 2**16 else np.uint32))
        names.append(pair.name)
    return images, labels, names


def _synthetic_sources(side: int, n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    from qmed.data.synthetic import generate_sample

    rng = np.random.default_rng([seed, 7])
    images, labels, names = [], [], []
    for i in range(n):
        gray, lab = generate_sample(rng, (side, side))
        t = (gray.astype(np.float64) / 255.0)[..., None] ** 0.7
        images.append(np.clip(_TISSUE_RGB * (1 - t) + _NUCLEUS_RGB * t + 0.5, 0, 255).astype(np.uint8))
        labels.append(lab.astype(np.uint16))
        names.append(f"synthetic_{i}")
    return images, labels, names


def _plan(
    rows: int,
    cols: int,
    n_sources: int,
    src_shapes: list[tuple[int, int]],
    cell: int,
    blank: float,
    rng: np.random.Generator,
) -> list[_Cell]:
    cells = []
    for _ in range(rows * cols):
        is_blank = rng.random() < blank
        s = int(rng.integers(n_sources))
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        h, w = src_shapes[s]
        oy, ox = int(rng.integers(h - cell + 1)), int(rng.integers(w - cell + 1))
        cells.append(_Cell(-1 if is_blank else s, rot, flip, oy, ox))
    if all(c.source < 0 for c in cells):  # always some tissue
        c = cells[0]
        cells[0] = _Cell(int(rng.integers(n_sources)), c.rot, c.flip, c.oy, c.ox)
    return cells


def _view(arr: np.ndarray, c: _Cell, cell: int) -> np.ndarray:
    """The cell's crop of a source array, flipped and turned (a view, no copy)."""
    v = arr[c.oy : c.oy + cell, c.ox : c.ox + cell]
    if c.flip:
        v = v[:, ::-1]
    return np.rot90(v, c.rot)


def build_slide(
    path: str | Path,
    size,
    tiles_root: str | Path | None,
    *,
    seed: int = 0,
    tile: int = 256,
    mpp: float = 0.25,
    truth_path: str | Path | None = None,
    cell: int | None = None,
    blank: float = 0.25,
    compression: str = "jpeg",
    quality: int = 90,
    min_size: int = 512,
) -> dict:
    """Write a mosaic slide (pyramidal tiled OME-TIFF, RGB) at `path` and, with `truth_path`, its truth label
    map (uint32 pyramidal OME-TIFF, nearest-neighbour levels). `size`: an int (square) or (width, height).
    `tiles_root`: a dataset folder (images/ + masks/, e.g. ../shared/data/monuseg/train), or None for
    synthetic tiles. `cell`: the side of a grid cell (default: the smallest source side, capped at the slide's
    larger side). `blank`: the chance that a cell is left white. `tile`: the TIFF tile side. `compression`:
    "jpeg" (quality `quality`, as scanners store slides) or a lossless codec such as "zlib".
    Returns a summary: {"objects", "width", "height", "cell", "grid", "tissue_cells", "blank_cells", ...}."""
    width, height = _size(size)
    if not 0 <= blank < 1:
        raise ValueError(f"blank must be a fraction in [0, 1), got {blank}")
    if tiles_root is None:
        side = int(cell or min(1000, max(width, height)))
        images, labels, names = _synthetic_sources(side, 6, seed)
    else:
        images, labels, names = _load_sources(tiles_root)
    smallest = min(min(im.shape[:2]) for im in images)
    cell = int(cell or min(smallest, max(width, height)))
    if not 1 <= cell <= smallest:
        raise QmedInputError(
            tiles_root, f"cell side {cell} must lie in 1..{smallest} (the smallest source tile's side)"
        )
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    rng = np.random.default_rng(seed)
    cells = _plan(rows, cols, len(images), [im.shape[:2] for im in images], cell, blank, rng)

    # renumber each cell's visible objects 1..n, shifted by the objects of the cells before it
    luts: list[np.ndarray | None] = []
    total = 0
    for i, c in enumerate(cells):
        if c.source < 0:
            luts.append(None)
            continue
        r, q = divmod(i, cols)
        vis = _view(labels[c.source], c, cell)[: min(cell, height - r * cell), : min(cell, width - q * cell)]
        counts = np.bincount(vis.ravel(), minlength=int(labels[c.source].max()) + 1)
        present = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(counts.size, np.uint32)
        lut[present] = total + np.arange(1, present.size + 1, dtype=np.uint32)
        total += int(present.size)
        luts.append(lut)
    if total >= 2**32:
        raise ValueError(f"{total} objects do not fit uint32 labels")

    def pieces(y: int, x: int, h: int, w: int):
        """(cell index, cell, slice of the tile, slice of the cell) for each cell the tile overlaps."""
        for r in range(y // cell, (y + h - 1) // cell + 1):
            for q in range(x // cell, (x + w - 1) // cell + 1):
                cy, cx = r * cell, q * cell
                y0, y1, x0, x1 = max(y, cy), min(y + h, cy + cell), max(x, cx), min(x + w, cx + cell)
                yield (
                    r * cols + q,
                    cells[r * cols + q],
                    (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)),
                    (slice(y0 - cy, y1 - cy), slice(x0 - cx, x1 - cx)),
                )

    def image_tile(y, x, h, w):
        out = np.full((h, w, 3), 255, np.uint8)
        for _, c, dst, src in pieces(y, x, h, w):
            if c.source >= 0:
                out[dst] = _view(images[c.source], c, cell)[src]
        return out

    def truth_tile(y, x, h, w):
        out = np.zeros((h, w), np.uint32)
        for i, c, dst, src in pieces(y, x, h, w):
            if c.source >= 0:
                out[dst] = luts[i][_view(labels[c.source], c, cell)[src]]
        return out

    path = Path(path)
    # written first: a missing truth next to a finished slide is the less misleading half-result
    if truth_path is not None:
        write_pyramid(
            truth_path, (height, width), np.uint32, truth_tile, tile=tile, kind="labels", mpp=mpp, min_size=min_size
        )
    write_pyramid(
        path,
        (height, width, 3),
        np.uint8,
        image_tile,
        tile=tile,
        kind="image",
        mpp=mpp,
        min_size=min_size,
        compression=compression,
        compressionargs={"level": quality} if compression == "jpeg" else None,
    )
    tissue = sum(c.source >= 0 for c in cells)
    return {
        "path": str(path),
        "truth_path": None if truth_path is None else str(truth_path),
        "width": width,
        "height": height,
        "mpp": mpp,
        "objects": total,
        "cell": cell,
        "grid": [rows, cols],
        "tissue_cells": tissue,
        "blank_cells": len(cells) - tissue,
        "sources": len(images),
        "tiles_root": None if tiles_root is None else str(tiles_root),
        "seed": seed,
        "tile": tile,
        "compression": compression,
    }
