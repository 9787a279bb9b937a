"""Pyramidal OME-TIFF writing, streamed tile by tile in memory that does not grow with the image.

The file is what QuPath, napari (with a tifffile/OME reader) and Bio-Formats open: BigTIFF, tiled, deflate
(or JPEG for RGB) compressed, level 0 as the OME image and each half-size level as a SubIFD (tifffile's
layout for pyramidal OME-TIFF), the pixel size in the OME metadata and in the resolution tags.

How memory stays flat: level 0 is pulled from `read_tile` one tile at a time (row by row) and written
straight into the TIFF. Each tile is also halved at once and saved as one chunk (tile/2 square) of a
compressed temporary zarr array of level 1 beside the output. Level 1 is then written to the TIFF from that
array, tile by tile (four chunks each), each of its tiles halved into level 2's array, and so on down the
pyramid; each level's array is deleted once the level is written. A halved tile is exactly one chunk, so no
chunk is ever read back and rewritten, and the memory held is a few tiles whatever the image's width and
height (a 32k x 32k uint32 label map is never more than a few MB in memory, not 4 GB). The temporary disk is
a compressed quarter of level 0 at most.

Halving: nearest neighbour (every other pixel, starting at 0) for labels and masks, so every value in a
smaller level is a real value of level 0; the mean of each 2 x 2 block for probabilities and images (an odd
last row or column is averaged with itself). Tiles start at even pixels, so halving tile by tile gives
exactly the halved level.

Atomic: written to `.NAME.tmp` beside the output and renamed at the end; the temporary zarr folder
`.NAME.levels.tmp` is removed. Leftovers of a killed run (same names) are removed by the next write.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

KINDS = ("labels", "mask", "probability", "image")
_NEAREST = ("labels", "mask")
_BUFFER_BYTES = 8 << 20  # tifffile holds and compresses this many bytes of tiles per batch


def level_shapes(height: int, width: int, min_size: int = 512) -> list[tuple[int, int]]:
    """(height, width) of each level: level 0, then halved (rounding up) until the largest side <= min_size."""
    shapes = [(int(height), int(width))]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def halve(block: np.ndarray, kind: str) -> np.ndarray:
    """One level down: nearest neighbour for labels/mask, 2x2 mean for probability/image."""
    if kind in _NEAREST:
        return block[::2, ::2]
    h, w = block.shape[:2]
    pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (block.ndim - 2)
    if h % 2 or w % 2:
        block = np.pad(block, pad, mode="edge")
    h2, w2 = block.shape[0] // 2, block.shape[1] // 2
    quads = block.reshape(h2, 2, w2, 2, *block.shape[2:])
    if np.issubdtype(block.dtype, np.integer):
        total = quads.astype(np.int64).sum(axis=(1, 3))
        return ((total + 2) // 4).astype(block.dtype)  # round half up
    return quads.mean(axis=(1, 3), dtype=np.float64).astype(block.dtype)


def _scratch(store: Path, shape: tuple[int, ...], dtype, chunk: int):
    import zarr

    return zarr.open_array(str(store), mode="w", shape=shape, dtype=dtype, chunks=(chunk, chunk) + tuple(shape[2:]))


def write_pyramid(
    path: str | Path,
    shape: tuple[int, ...],
    dtype,
    read_tile: Callable[[int, int, int, int], np.ndarray],
    *,
    tile: int = 512,
    kind: str = "labels",
    mpp: float | None = None,
    min_size: int = 512,
    compression: str | None = "zlib",
    compressionargs: dict | None = None,
    maxworkers: int | None = None,
) -> None:
    """Write a pyramidal OME-TIFF at `path` from level-0 tiles.

    `shape`: (height, width), or (height, width, channels) for kind "image" (RGB, uint8).
    `read_tile(y, x, h, w)` returns level 0's (h, w[, channels]) array of `dtype` at row y, column x; it is
    called once per tile, row by row. `kind`: "labels"/"mask" (nearest-neighbour halving), "probability"
    (mean; float32), "image" (mean, rounded). Levels halve until the largest side <= `min_size`.
    `mpp`: level-0 microns per pixel, written to the OME metadata and the resolution tags.
    `compression`: a tifffile codec name ("zlib" = deflate, read everywhere; "jpeg" for RGB images; None),
    with `compressionargs` (e.g. {"level": 90} for JPEG quality). `maxworkers`: tifffile's encoding threads."""
    import tifffile

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"TIFF tiles must be a positive multiple of 16 pixels, got {tile}")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape[:2]) < 1:
        raise ValueError(f"shape must be (height, width[, channels]) with at least one pixel, got {shape}")
    dtype = np.dtype(dtype)
    channels = shape[2:]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    scratch_dir = path.with_name(f".{path.name}.levels.tmp")
    _remove(tmp)
    _remove(scratch_dir)
    shapes = [s + channels for s in level_shapes(shape[0], shape[1], min_size)]
    half = tile // 2

    def level_tiles(level: int, source):
        """Tiles of `level` row by row from `source(y, x, h, w)`, each halved into the next level's array
        before it is handed over (tifffile stops pulling after the last tile)."""
        height, width = shapes[level][:2]
        below = None
        if level + 1 < len(shapes):
            below = _scratch(scratch_dir / str(level + 1), shapes[level + 1], dtype, half)
        for y in range(0, height, tile):
            th = min(tile, height - y)
            for x in range(0, width, tile):
                tw = min(tile, width - x)
                data = source(y, x, th, tw)
                if below is not None:
                    below[y // 2 : y // 2 + (th + 1) // 2, x // 2 : x // 2 + (tw + 1) // 2] = halve(data, kind)
                yield data

    def level0(y, x, th, tw):
        data = np.asarray(read_tile(y, x, th, tw))
        if data.shape != (th, tw) + channels:
            raise ValueError(
                f"read_tile({y}, {x}, {th}, {tw}) returned shape {data.shape}, expected {(th, tw) + channels}"
            )
        return data.astype(dtype, copy=False)

    def stored(level: int):
        import zarr

        array = zarr.open_array(str(scratch_dir / str(level)), mode="r")
        return lambda y, x, th, tw: np.asarray(array[y : y + th, x : x + tw])

    photometric = "rgb" if channels and channels[0] in (3, 4) else "minisblack"
    common = dict(
        tile=(tile, tile),
        photometric=photometric,
        compression=compression,
        compressionargs=compressionargs,
        maxworkers=maxworkers,
        buffersize=_BUFFER_BYTES,
    )

    def resolution(level: int) -> dict:
        if mpp is None:
            return {}
        level_mpp = mpp * shapes[0][1] / shapes[level][1]
        return dict(resolution=(1e4 / level_mpp, 1e4 / level_mpp), resolutionunit="CENTIMETER")

    metadata = {"axes": "YXS" if channels else "YX", "Name": path.name}
    if mpp is not None:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
            tw.write(
                level_tiles(0, level0),
                shape=shapes[0],
                dtype=dtype,
                subifds=len(shapes) - 1,
                metadata=metadata,
                **resolution(0),
                **common,
            )
            for k in range(1, len(shapes)):
                tw.write(
                    level_tiles(k, stored(k)),
                    shape=shapes[k],
                    dtype=dtype,
                    subfiletype=1,
                    metadata=None,
                    **resolution(k),
                    **common,
                )
                _remove(scratch_dir / str(k))  # done with it: free the disk as the pyramid goes down
        os.replace(tmp, path)
    finally:
        _remove(tmp)
        _remove(scratch_dir)


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def pyramid_levels(height: int, width: int, min_size: int = 512) -> int:
    """How many levels write_pyramid writes for an image of this size."""
    return len(level_shapes(height, width, min_size))
