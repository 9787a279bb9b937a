"""Whole-slide images: open a slide, read any region of any pyramid level, pick the level for a pixel size.

Two readers behind one interface (`SlideReader`):
- tiled / pyramidal TIFF and OME-TIFF through tifffile, as a zarr store over the file's tiles, so a
  read decodes only the tiles it touches (pyramid levels as SubIFDs, as tifffile, bfconvert and QuPath
  write them, or as separate pages, as SVS-like files have them);
- every vendor format OpenSlide reads (SVS, NDPI, MRXS, SCN, VMS/VMU, BIF, Philips TIFF...).
`.tif`/`.tiff` go to tifffile first and OpenSlide second; the vendor suffixes the other way round (OpenSlide
reads a tifffile-written pyramid only as one level: it does not follow SubIFDs).

Every problem with the file (missing, truncated, not a slide, a level that does not exist, a tile that does
not decode) is a `QmedInputError` naming the file, never a library traceback. A truncated TIFF is caught when
it is opened: every tile's extent is checked against the file's size, so a half-copied slide fails at once
rather than after an hour of blocks.

Readers pickle as their path and reopen lazily in the new process (dask workers each open their own handle).
"""

from __future__ import annotations

import logging
import math
import threading
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from qmed.errors import QmedInputError

TIFF_SUFFIXES = (".tif", ".tiff")  # .ome.tif / .ome.tiff end in these too
VENDOR_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
SLIDE_SUFFIXES = VENDOR_SUFFIXES + TIFF_SUFFIXES

# micrometres per unit of OME's PhysicalSizeXUnit
_OME_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "pm": 1e-6}


def is_slide(path: str | Path) -> bool:
    """A file qmed reads as a whole slide: a vendor slide suffix, or a TIFF that is tiled or pyramidal
    (a plain strip TIFF is an ordinary image, read whole by qmed.io.images)."""
    p = Path(path)
    if not p.is_file() or p.name.startswith("."):
        return False
    suffix = p.suffix.lower()
    if suffix in VENDOR_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    try:
        import tifffile

        with _quiet_tifffile(), tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            return bool(series.keyframe.is_tiled or len(series.levels) > 1)
    except Exception:  # not a readable TIFF: the image reader gives it its one-line error
        return False


@contextmanager
def _quiet_tifffile():
    """tifffile logs a warning for each damaged tag it skips; qmed reports the file's problem once itself."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SlideReader:
    """A whole slide, opened for reading regions. Attributes: `path`, `dimensions` ((width, height) per
    level, level 0 first), `downsamples` (level-0 pixels per level pixel), `mpp` (level-0 microns per
    pixel, None when the file does not say), `backend` ("tifffile" or "openslide")."""

    backend = ""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.dimensions: list[tuple[int, int]] = []
        self.downsamples: list[float] = []
        self.mpp: float | None = None
        self._lock = threading.Lock()
        self._handle = None
        self._open()  # reads the metadata, and checks the file

    # -- pickling: the path and the small metadata; the file handle reopens on first read in the new process
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_handle", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._handle = None
        self._lock = threading.Lock()

    @property
    def level_count(self) -> int:
        return len(self.dimensions)

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The (h, w, 3) uint8 RGB region whose top-left corner is (x, y), all in `level`'s pixels. Parts
        outside the slide are white (255). Reads only the tiles the region touches."""
        if not 0 <= level < self.level_count:
            raise QmedInputError(
                self.path, f"level {level} does not exist (the slide has levels 0..{self.level_count - 1})"
            )
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w < 0 or h < 0:
            raise ValueError(f"negative region size {w}x{h}")
        out = np.full((h, w, 3), 255, np.uint8)
        lw, lh = self.dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            with self._lock:  # one handle per reader; readers are cheap to make per thread if needed
                if self._handle is None:
                    self._reopen()
                region = self._read_inside(level, x0, y0, x1 - x0, y1 - y0)
        except QmedInputError:
            raise
        except Exception as exc:  # a tile that does not decode: truncated or corrupt
            raise QmedInputError(
                self.path,
                f"cannot read level {level} at x={x0}, y={y0} ({_first_line(exc)}); "
                "the file may be truncated or corrupt",
            ) from None
        out[y0 - y : y1 - y, x0 - x : x1 - x] = region
        return out

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._close_handle()
                self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, levels={self.dimensions}, mpp={self.mpp})"

    # -- backends fill these in
    def _open(self) -> None:
        raise NotImplementedError

    def _reopen(self) -> None:
        raise NotImplementedError

    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def _close_handle(self) -> None:
        raise NotImplementedError


class TiffSlideReader(SlideReader):
    """Tiled or pyramidal TIFF / OME-TIFF through tifffile's zarr store (no full read)."""

    backend = "tifffile"

    def _open(self) -> None:
        import tifffile

        with _quiet_tifffile():
            tif = tifffile.TiffFile(self.path)
            try:
                self._inspect(tif)
            except BaseException:
                tif.close()
                raise
        self._handle = self._attach(tif)

    def _inspect(self, tif) -> None:
        if not tif.series:
            raise QmedInputError(self.path, "TIFF holds no image")
        series = tif.series[0]
        levels = list(series.levels)
        self._layout = [_level_layout(self.path, lv) for lv in levels]
        self.dimensions = [(lay["width"], lay["height"]) for lay in self._layout]
        self.downsamples = [self.dimensions[0][0] / wd for wd, _ in self.dimensions]
        _check_extent(self.path, levels)
        self.mpp = _tiff_mpp(tif, series)

    def _attach(self, tif):
        import zarr

        store = tif.series[0].aszarr()
        node = zarr.open(store, mode="r")
        arrays = [node[str(i)] for i in range(len(self._layout))] if hasattr(node, "keys") else [node]
        return tif, store, arrays

    def _reopen(self) -> None:
        import tifffile

        self._handle = self._attach(tifffile.TiffFile(self.path))

    def _read_inside(self, level, x, y, w, h):
        lay = self._layout[level]
        arr = self._handle[2][level]
        index = [0] * len(lay["axes"])
        index[lay["y"]] = slice(y, y + h)
        index[lay["x"]] = slice(x, x + w)
        if lay["c"] is not None:
            index[lay["c"]] = slice(None)
        region = np.asarray(arr[tuple(index)])
        keep = [ax for ax in (lay["y"], lay["x"], lay["c"]) if ax is not None]
        region = np.transpose(region, _order(keep))
        if region.ndim == 2:
            region = region[..., None]
        if region.shape[2] == 1:
            region = np.repeat(region, 3, axis=2)
        return region[..., :3]

    def _close_handle(self) -> None:
        tif, store, _ = self._handle
        try:
            store.close()
        finally:
            tif.close()


def _order(keep: list[int]) -> list[int]:
    """Axis permutation taking an array whose axes are the sorted `keep` to the order y, x[, c]."""
    ordered = sorted(keep)
    return [ordered.index(ax) for ax in keep]


def _level_layout(path: Path, level) -> dict:
    """Where y, x and colour sit in one pyramid level of a tifffile series; refuses what is not a 2-D
    8-bit gray/RGB(A) image (other axes must have size 1)."""
    axes, shape = level.axes, level.shape
    if level.dtype != np.uint8:
        raise QmedInputError(path, f"slide pixels are {level.dtype}; qmed reads 8-bit gray or RGB slides")
    if "Y" not in axes or "X" not in axes:
        raise QmedInputError(path, f"TIFF series has axes {axes!r}, not an image with Y and X")
    c = None
    for ax_name in ("S", "C"):
        if ax_name in axes and shape[axes.index(ax_name)] > 1:
            if c is not None:
                raise QmedInputError(path, f"TIFF series has both samples and channels (axes {axes!r}, shape {shape})")
            c = axes.index(ax_name)
            if shape[c] not in (3, 4):
                raise QmedInputError(path, f"slide has {shape[c]} channels; qmed reads gray, RGB or RGBA slides")
    for i, (ax, n) in enumerate(zip(axes, shape)):
        if i not in (axes.index("Y"), axes.index("X"), c) and n != 1:
            raise QmedInputError(
                path,
                f"TIFF series has {n} planes along axis {ax!r} (axes {axes!r}); qmed reads one 2-D image per slide",
            )
    return {
        "axes": axes,
        "y": axes.index("Y"),
        "x": axes.index("X"),
        "c": c,
        "width": int(shape[axes.index("X")]),
        "height": int(shape[axes.index("Y")]),
    }


def _check_extent(path: Path, levels) -> None:
    """Every tile of every level lies inside the file, and every level the file declares was found: a
    truncated copy is refused when opened."""
    size = path.stat().st_size
    first = levels[0].keyframe
    if "SubIFDs" in first.tags:
        declared = np.atleast_1d(np.asarray(first.tags["SubIFDs"].value, dtype=np.int64))
        if (declared >= size).any() or len(levels) < 1 + declared.size:
            raise QmedInputError(
                path,
                f"file is truncated: it declares {1 + declared.size} pyramid levels but "
                f"{len(levels)} can be read from its {size} bytes",
            )
    for i, level in enumerate(levels):
        for page in level.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            # a tag whose values lay past the end is dropped by tifffile: the tile table comes up short
            expected = math.prod(getattr(page, "chunked", ()) or (offsets.size,))
            if offsets.size != expected or counts.size != expected:
                raise QmedInputError(
                    path, f"file is truncated or corrupt: level {i} lists {offsets.size} of its {expected} tiles"
                )
            if offsets.size and int((offsets + counts).max()) > size:
                raise QmedInputError(
                    path,
                    f"file is truncated: level {i}'s tiles end at byte "
                    f"{int((offsets + counts).max())} but the file has {size} bytes",
                )


def _tiff_mpp(tif, series) -> float | None:
    """Level-0 microns per pixel: OME PhysicalSizeX, an Aperio 'MPP =' description, or the resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("}Pixels") or el.tag == "Pixels":
                    value = el.get("PhysicalSizeX")
                    if value:
                        mpp = float(value) * _OME_UNIT_UM.get(el.get("PhysicalSizeXUnit", "µm"), float("nan"))
                        if math.isfinite(mpp) and mpp > 0:
                            return mpp
                    break
        except (ET.ParseError, ValueError):
            pass
    page = series.levels[0].keyframe
    desc = page.description or ""
    if "Aperio" in desc and "MPP =" in desc:
        try:
            mpp = float(desc.split("MPP =")[1].split("|")[0].strip())
            if mpp > 0:
                return mpp
        except ValueError:
            pass
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num > 0 and den > 0:
            per_unit = num / den  # pixels per unit
            um = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre; 1 = no unit
            if um is not None and per_unit > 1:  # 1 pixel/unit is the "unset" default some writers leave
                return um / per_unit
    return None


class OpenSlideReader(SlideReader):
    """Every format OpenSlide reads (vendor slides, generic tiled TIFF)."""

    backend = "openslide"

    def _open(self) -> None:
        import openslide

        osr = openslide.OpenSlide(str(self.path))
        try:
            self.dimensions = [(int(w), int(h)) for w, h in osr.level_dimensions]
            self.downsamples = [float(d) for d in osr.level_downsamples]
            self.mpp = _openslide_mpp(osr.properties)
        except BaseException:
            osr.close()
            raise
        self._handle = osr

    def _reopen(self) -> None:
        import openslide

        self._handle = openslide.OpenSlide(str(self.path))

    def _read_inside(self, level, x, y, w, h):
        ds = self.downsamples[level]
        # read_region takes the top-left corner in level-0 pixels and the size in the level's pixels
        rgba = np.asarray(self._handle.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h)))
        alpha = rgba[..., 3:4].astype(np.uint16)
        # transparent (outside the scanned area) becomes white, as outside the slide
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)

    def _close_handle(self) -> None:
        self._handle.close()


def _openslide_mpp(props) -> float | None:
    import openslide

    value = props.get(openslide.PROPERTY_NAME_MPP_X)
    try:
        if value is not None and float(value) > 0:
            return float(value)
    except ValueError:
        pass
    res, unit = props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit")
    try:
        um = {"centimeter": 1e4, "inch": 25400.0}.get(str(unit).lower())
        if res is not None and um is not None and float(res) > 1:
            return um / float(res)
    except ValueError:
        pass
    return None


def open_slide(path: str | Path) -> SlideReader:
    """Open a whole slide: tifffile first for .tif/.tiff, OpenSlide first for vendor formats, each falling
    back to the other. QmedInputError (one line naming the file) when neither can read it."""
    path = Path(path)
    if not path.exists():
        raise QmedInputError(path, "slide does not exist")
    if not path.is_file():
        raise QmedInputError(path, "is not a file")
    if path.stat().st_size == 0:
        raise QmedInputError(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix not in SLIDE_SUFFIXES:
        raise QmedInputError(path, f"not a slide file type {suffix!r} (use one of {', '.join(SLIDE_SUFFIXES)})")
    order = (TiffSlideReader, OpenSlideReader) if suffix in TIFF_SUFFIXES else (OpenSlideReader, TiffSlideReader)
    first_problem = None
    for cls in order:
        try:
            reader = cls(path)
        except QmedInputError:  # the file was understood and is bad (truncated, 16-bit...): say so
            raise
        except Exception as exc:
            if first_problem is None:
                first_problem = f"{cls.backend}: {_first_line(exc)}"
            continue
        if reader.level_count == 0 or min(min(d) for d in reader.dimensions) < 1:
            reader.close()
            raise QmedInputError(path, "slide has no pixels")
        return reader
    raise QmedInputError(
        path, f"cannot be opened as a slide ({first_problem}); the file may be truncated, corrupt or not a slide"
    )


def pick_level(reader: SlideReader, mpp: float | None = None, level: int | None = None) -> tuple[int, float | None]:
    """The pyramid level to run a model on, and its microns per pixel (None when the slide does not say).

    `level` given: checked to exist. `mpp` given (the model's training pixel size): the level whose pixel
    size is nearest to it on a log scale, among the levels no coarser than mpp * 1.1 (a model sees nuclei
    too small rather than too blurred); level 0 when even level 0 is coarser. Neither: level 0."""
    n = reader.level_count
    if level is not None and mpp is not None:
        raise QmedInputError(reader.path, "give a pyramid level or a pixel size (mpp), not both")
    if level is not None:
        if isinstance(level, bool) or int(level) != level or not 0 <= int(level) < n:
            raise QmedInputError(reader.path, f"level {level} does not exist (the slide has levels 0..{n - 1})")
        return int(level), reader.level_mpp(int(level))
    if mpp is None:
        return 0, reader.level_mpp(0)
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise QmedInputError(reader.path, f"pixel size must be a positive number of microns, got {mpp!r}")
    if reader.mpp is None:
        raise QmedInputError(reader.path, "slide does not record its pixel size (mpp); pass a pyramid level instead")
    best, best_gap = 0, math.inf
    for i in range(n):
        m = reader.level_mpp(i)
        if m > mpp * 1.1:
            continue
        gap = abs(math.log(m / mpp))
        if gap < best_gap:
            best, best_gap = i, gap
    return best, reader.level_mpp(best)
