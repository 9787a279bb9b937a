"""Whole slides, block by block, in memory that does not grow with the slide (issue 42).

The slide is read at one pyramid level (the "working level": `--level`, or the level whose pixel
size is nearest `--mpp` without being coarser; the image is then resized by the ratio, as data.zoom
does, so the network sees the pixel size asked for). Its pixels are cut into a grid of square
*cores* of `block` px, each with a *halo* around it (the read region, clipped to the slide).

Windows: the network runs on the windows of the slide's one grid, the grid `qmed predict` would lay
over the whole image (qmed.segment.predict.window_grid), and never on a block's own grid: SCSE's
channel squeeze makes a pixel's probability depend on the window it is seen in, so block-local
windows change every object a little (docs 14a: object F1 0.917 against the whole image). Each
window that reaches a tissue block's read region is run once, by the block that holds its origin
(`run_windows`: OUT/blocks/NNNNNN.windows.npy, the Gaussian-weighted sum of its windows); a block's
probabilities are then the sum of the stored windows over its read region, divided by their summed
weights (`run_block`), which is the whole-image blend up to float rounding. A stored sum is
deleted once every block that reads it has its marker.

Seams (as StarDist's predict_instances_big): inside the read region the foreground is split into
instances, and a block keeps exactly the objects whose centroid lies in its core (the pixel
floor(centroid + 0.5), so every centroid has one owner). A kept object is whole as long as it
reaches less than the halo beyond the core, so no object is cut by a seam and none is counted
twice; a kept object touching the read region's edge inside the slide is counted as "cut" in
predict.json (the halo is then too narrow). Ids are slide-unique: block b's objects get
offset[b] + 1.. , with the offsets summed from one count per block.

Statistics (never one block's): the intensity percentiles (data.normalize=percentile, pooled from
a histogram), the L*a*b* means and stds (data.normalize=reinhard), the edge channel's scale (the
median over sample tiles of the 99th percentile of the positive Gabor responses, where the model
takes each window's own) and the object diameter for the watershed's marker height (the model's
recorded predict.object_diameter, else measured on the sample tiles' predictions) are taken once,
from up to N_SAMPLES tiles of SAMPLE_SIZE px on tissue, and recorded in manifest.json and
predict.json. The ONNX backend runs its graph from the normalised tensor on, so the edge channel
there still takes each window's scale (the graph computes it).

Memory: one block's read region and its maps at a time (about 100 bytes per read-region pixel
with instances), whatever the slide's size. Block results go to disk as they finish:
OUT/blocks/{mask,labels,probability}.zarr hold the cores (chunks aligned with the cores, so blocks
running in parallel processes never write the same chunk), OUT/blocks/NNNNNN.npz the block's
objects table, polygons and its kept objects' pixels outside the core ("spill"), then
OUT/blocks/NNNNNN.json, the marker. `finish_slide` streams the outputs from those, tile by tile.

Resume: OUT/manifest.json holds a key of the model file's sha256, the slide's identity and the
settings; a run into an OUT with the same key continues with the blocks that have no marker
(`kill -9` and run the same command again). Another key needs --force, which replaces only a
folder qmed wrote. The blocks folder is removed once predict.json (written last) records the
finished outputs.

Outputs (level-0 px in the tables and polygons; the pyramids at the working level, with its pixel
size): mask.ome.tif (0/255), labels.ome.tif (with instances; uint32 ids), probability.ome.tif (with
`probability`; uint8, p x 255), objects.csv, objects.geojson (QuPath detections), tissue.png,
predict.json.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import logging
import math
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qmed.data.objects import label_components, object_diameter
from qmed.errors import QmedInputError
from qmed.evaluate.folders import PREDICTION_META
from qmed.io.files import atomic_path, read_json, write_json
from qmed.segment.instances import OBJECT_COLUMNS, split_instances
from qmed.segment.predict import accumulate_windows, add_weights, predict_at_scale, window_grid

log = logging.getLogger("qmed")

FORMAT = "qmed-slide"
VERB = "predict-slide"
MANIFEST = "manifest.json"
BLOCKS_DIR = "blocks"
MASK_FILE, LABELS_FILE, PROB_FILE = "mask.ome.tif", "labels.ome.tif", "probability.ome.tif"
OBJECTS_FILE, GEOJSON_FILE, TISSUE_FILE = "objects.csv", "objects.geojson", "tissue.png"
DEFAULT_BLOCK = 2048
HALO_MODEL_PX = 128  # the default halo at the network's scale: past the largest nucleus and most of the receptive field
MIN_BLOCK = 256
N_SAMPLES, SAMPLE_SIZE = 16, 512  # statistics tiles (working-level px)
N_DIAMETER_SAMPLES = 4  # of which this many are predicted to measure the object diameter


# --------------------------------------------------------------------------------------------
# The job: paths, settings and the block grid (small and picklable: Dask ships it to workers)


@dataclass(frozen=True)
class SlideJob:
    model_path: str
    backend: str
    device: str | None
    slide_path: str
    out: str
    key: str
    level: int
    downsample: float  # level-0 px per working-level px
    mpp: float | None  # the working level's microns per px
    width: int  # working level, px
    height: int
    block: int
    halo: int
    chunk: int
    scale: float  # the image's resize factor before the network (data.zoom x level mpp / --mpp)
    tta: int
    threshold: float
    tile: int
    overlap: float
    batch_size: int
    instances: bool
    probability: bool
    gzip: bool
    keep_blocks: bool = False
    intensity: tuple[float, float] | None = None
    lab: tuple[float, ...] | None = None
    edge_scale: float | None = None
    diameter: float | None = None
    blocks: tuple[int, ...] = field(default=())  # indices (row-major) of the blocks to run; the others are background

    @property
    def rows(self) -> int:
        return max(1, math.ceil(self.height / self.block))

    @property
    def cols(self) -> int:
        return max(1, math.ceil(self.width / self.block))

    @property
    def n_blocks(self) -> int:
        return self.rows * self.cols

    def core(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the block's core, working-level px."""
        r, c = divmod(index, self.cols)
        return (
            c * self.block,
            r * self.block,
            min(self.width, (c + 1) * self.block),
            min(self.height, (r + 1) * self.block),
        )

    def read_region(self, index: int) -> tuple[int, int, int, int]:
        """The core widened by the halo, clipped to the slide."""
        x0, y0, x1, y1 = self.core(index)
        h = self.halo
        return max(0, x0 - h), max(0, y0 - h), min(self.width, x1 + h), min(self.height, y1 + h)

    def stats(self) -> dict:
        """The slide-level statistics for qmed.data.batches.model_input."""
        out = {}
        if self.intensity is not None:
            out["intensity"] = tuple(self.intensity)
        if self.lab is not None:
            out["lab"] = tuple(self.lab)
        return out

    @property
    def blocks_dir(self) -> Path:
        return Path(self.out) / BLOCKS_DIR

    def marker(self, index: int) -> Path:
        return self.blocks_dir / f"{index:06d}.json"

    def result(self, index: int) -> Path:
        return self.blocks_dir / f"{index:06d}.npz"


def pending_blocks(job: SlideJob) -> list[int]:
    """The blocks to run that have no marker yet."""
    return [i for i in job.blocks if not job.marker(i).is_file()]


def is_finished(job: SlideJob) -> bool:
    meta = read_json(Path(job.out) / PREDICTION_META)
    return isinstance(meta, dict) and meta.get("complete") is True and meta.get("key") == job.key


# --------------------------------------------------------------------------------------------
# The model, once per process


class FixedScaleEdge(nn.Module):
    """A model's Gabor edge channel with the slide's scale instead of each window's 99th percentile
    (`scale` None: the wrapped module as it is)."""

    def __init__(self, edge: nn.Module):
        super().__init__()
        self.inner = edge
        self.scale: float | None = None

    def max_response(self, gray: torch.Tensor) -> torch.Tensor:
        return self.inner.max_response_conv(gray) if self.inner.mode == "conv" else self.inner.max_response(gray)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return self.inner(x)
        m = self.max_response(x.float().mean(dim=1, keepdim=True))
        return (m.clamp_min(0) / self.scale).clamp(0, 1).to(x.dtype)


class Predictor:
    """A model and its config, ready for blocks: `maps(rgb, job)` -> (C, H, W) probabilities.

    `forward`: a torch model or a probability function ((B,3,H,W) -> (B,C,H,W), as
    qmed.segment.predict.as_forward takes). Calls are serialised by a lock (the edge channel's scale
    is set per slide on the shared model)."""

    def __init__(
        self,
        forward,
        cfg,
        device: torch.device | str = "cpu",
        backend: str = "torch",
        checkpoint: str | Path | None = None,
    ):
        self.forward = forward
        self.cfg = cfg
        self.device = torch.device(device)
        self.backend = backend
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.lock = threading.Lock()
        self.edge = None
        edge = getattr(forward, "edge", None) if isinstance(forward, nn.Module) else None
        if edge is not None and hasattr(edge, "max_response"):
            self.edge = edge if isinstance(edge, FixedScaleEdge) else FixedScaleEdge(edge)
            forward.edge = self.edge

    def model_input(self, rgb: np.ndarray, stats: dict | None) -> np.ndarray:
        from qmed.data.batches import model_input

        return model_input(np.asarray(rgb, dtype=np.float32) / 255.0, self.cfg, stats)

    def maps(self, rgb: np.ndarray, job: SlideJob, tta: int | None = None) -> np.ndarray:
        """(C, H, W) float32 probabilities of an (H, W, 3) uint8 region: the foreground first (then an
        instance head's contact), at the region's size."""
        return self.probabilities(self.model_input(rgb, job.stats()), job, tta)

    @contextmanager
    def slide_settings(self, job: SlideJob):
        """The model as a slide's blocks use it: calls serialised, the edge channel at the slide's scale."""
        with self.lock:
            if self.edge is not None:
                self.edge.scale = job.edge_scale
            try:
                yield
            finally:
                if self.edge is not None:
                    self.edge.scale = None

    def probabilities(self, img: np.ndarray, job: SlideJob, tta: int | None = None) -> np.ndarray:
        """maps() of a region already converted by model_input: the network through the windows and TTA."""
        with self.slide_settings(job):
            return predict_at_scale(
                self.forward,
                img,
                job.scale,
                tta=job.tta if tta is None else tta,
                tile=job.tile,
                overlap=job.overlap,
                batch_size=job.batch_size,
                device=self.device,
                amp=self.cfg.train.amp,
                channels=True,
            )

    def window_sums(
        self, job: SlideJob, x: torch.Tensor, origin: tuple[int, int], coords, th: int, tw: int
    ) -> np.ndarray:
        """accumulate_windows with the job's TTA and batch, under slide_settings: (C, H, W) float32."""
        with self.slide_settings(job):
            return accumulate_windows(
                self.forward,
                x,
                origin,
                coords,
                th,
                tw,
                tta=job.tta,
                batch_size=job.batch_size,
                device=self.device,
                amp=self.cfg.train.amp,
            ).numpy()

    @torch.no_grad()
    def edge_scale(self, images: list[np.ndarray]) -> float | None:
        """The edge channel's slide-level scale from model inputs (HxWx3 float): the median over the
        images of each one's 99th percentile of the positive responses, floored as the model floors it."""
        if self.edge is None or not images:
            return None
        inner = self.edge.inner
        scales = []
        for img in images:
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float()
            m = self.edge.max_response(x.mean(dim=1, keepdim=True))
            pos = m[m > 0]
            if pos.numel():
                scales.append(float(torch.quantile(pos[: 1 << 24], inner.percentile / 100.0)))
        if not scales:
            return None
        return max(float(np.median(scales)), float(inner.min_scale))


_PREDICTORS: dict[tuple, Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def default_backend(model_path: str | Path, backend: str | None) -> str:
    return backend or ("onnxruntime" if Path(model_path).suffix.lower() == ".onnx" else "torch")


def open_predictor(model_path: str | Path, backend: str | None = None, device: str | None = None) -> Predictor:
    """The model at `model_path`, loaded once per process (cached per path, backend and device)."""
    backend = default_backend(model_path, backend)
    p = Path(model_path).resolve()
    if backend == "torch" and p.is_dir():
        from qmed.io.checkpoints import resolve_checkpoint

        p = resolve_checkpoint(p)
    st = p.stat() if p.exists() else None  # a new model file at the same path is another model
    key = (str(p), st and st.st_mtime_ns, st and st.st_size, backend, device)
    with _PREDICTORS_LOCK:
        if key in _PREDICTORS:
            return _PREDICTORS[key]
        if backend == "onnxruntime":
            from qmed.segment.onnx_backend import load_onnx

            fwd, cfg, _ = load_onnx(model_path, device)
            pred = Predictor(fwd, cfg, "cpu", backend, model_path)  # ONNX Runtime's provider places the work
        elif backend == "torch":
            from qmed.runtime import pick_device
            from qmed.segment.checkpoint import load_model

            if Path(model_path).suffix.lower() == ".onnx":
                raise QmedInputError(model_path, "is an ONNX model; predict with it through --backend onnxruntime")
            dev = pick_device(device)
            model, cfg, ckpt = load_model(model_path, dev)
            pred = Predictor(model, cfg, dev, backend, ckpt)
        else:
            raise QmedInputError(None, f"unknown --backend {backend!r}; use torch or onnxruntime")
        _PREDICTORS[key] = pred
        return pred


def load_predictor(job: SlideJob) -> Predictor:
    """The job's model, loaded once per process (a Dask worker loads it for its first block)."""
    return open_predictor(job.model_path, job.backend, job.device)


_READERS: dict[str, object] = {}


def _reader(path: str):
    from qmed.io.slides import open_slide

    if path not in _READERS:
        _READERS[path] = open_slide(path)
    return _READERS[path]


def read_region(reader, path, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """reader.read, with any failure of the file (a truncated tile, say) as one line naming the slide."""
    try:
        rgb = reader.read(level, x, y, w, h)
    except QmedInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - OpenSlide, tifffile and codecs raise many types for a bad file
        raise QmedInputError(
            path,
            f"cannot read level {level} at x={x}, y={y} ({type(exc).__name__}: {str(exc)[:80]}); "
            "the file may be truncated",
        ) from None
    rgb = np.asarray(rgb)
    if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
        raise QmedInputError(
            path, f"level {level} at x={x}, y={y} read as {rgb.shape} {rgb.dtype}, not ({h}, {w}, 3) uint8"
        )
    return rgb


# --------------------------------------------------------------------------------------------
# One block's objects (pure functions on arrays: tested by hand)


def histogram_percentiles(hist: np.ndarray, percentiles) -> tuple[float, ...]:
    """np.percentile (linear rule) of the values k / (len(hist) - 1), k counted `hist[k]` times, from
    the histogram alone: a whole slide's percentiles from its tiles' 8-bit histograms."""
    hist = np.asarray(hist, dtype=np.int64)
    cum = np.cumsum(hist)
    n = int(cum[-1])
    if n == 0:
        raise ValueError("percentiles of an empty histogram")
    top = len(hist) - 1
    out = []
    for q in percentiles:
        rank = q / 100.0 * (n - 1)
        lo = int(math.floor(rank))
        v_lo = int(np.searchsorted(cum, lo, side="right"))
        v_hi = int(np.searchsorted(cum, min(lo + 1, n - 1), side="right"))
        out.append((v_lo + (rank - lo) * (v_hi - v_lo)) / top)
    return tuple(out)


def block_objects(
    maps: np.ndarray,
    origin: tuple[int, int],
    core: tuple[int, int, int, int],
    slide_wh: tuple[int, int],
    threshold: float,
    diameter: float | None,
    instances: bool = True,
) -> dict:
    """The objects of one read region that its core owns.

    maps: (C, H, W) probabilities of the read region whose top-left is `origin` (x, y); core: (x0,
    y0, x1, y1) in slide px. Returns "labels" (H, W) uint32, the kept objects numbered 1..n in label
    order, 0 elsewhere; "table" (n rows: local id, area, centroid y/x, bbox min row/col, max row/col
    (exclusive) in slide px, mean probability); "cut": how many kept objects touch the read region's
    edge inside the slide; "mask": prob > threshold."""
    from skimage.measure import regionprops_table

    prob = maps[0]
    fg = prob > threshold
    if instances:
        labels = split_instances(prob, threshold, diameter=diameter, contact=maps[1] if maps.shape[0] > 1 else None)
    else:
        labels = label_components(fg)
    ox, oy = origin
    h, w = prob.shape
    empty = {"labels": np.zeros((h, w), np.uint32), "table": np.zeros((0, 9), np.float64), "cut": 0, "mask": fg}
    if not labels.any():
        return empty
    t = regionprops_table(
        labels,
        intensity_image=prob.astype(np.float32, copy=False),
        properties=("label", "area", "centroid", "bbox", "intensity_mean"),
    )
    cy, cx = t["centroid-0"] + oy, t["centroid-1"] + ox
    py, px = np.floor(cy + 0.5), np.floor(cx + 0.5)
    x0, y0, x1, y1 = core
    keep = (py >= y0) & (py < y1) & (px >= x0) & (px < x1)
    if not keep.any():
        return empty
    lut = np.zeros(int(labels.max()) + 1, np.uint32)
    kept_ids = t["label"][keep]
    lut[kept_ids] = np.arange(1, len(kept_ids) + 1, dtype=np.uint32)
    kept = lut[labels]
    sw, sh = slide_wh
    b0, b1, b2, b3 = (t[f"bbox-{k}"][keep] for k in range(4))
    cut = ((b0 == 0) & (oy > 0)) | ((b1 == 0) & (ox > 0)) | ((b2 == h) & (oy + h < sh)) | ((b3 == w) & (ox + w < sw))
    table = np.stack(
        [
            np.arange(1, len(kept_ids) + 1),
            t["area"][keep],
            cy[keep],
            cx[keep],
            b0 + oy,
            b1 + ox,
            b2 + oy,
            b3 + ox,
            t["intensity_mean"][keep],
        ],
        axis=1,
    ).astype(np.float64)
    return {"labels": kept, "table": table, "cut": int(cut.sum()), "mask": fg}


def spill(
    labels: np.ndarray, origin: tuple[int, int], core: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept objects' pixels outside the core: (y, x) in slide px (int32) and their local ids."""
    ox, oy = origin
    x0, y0, x1, y1 = core
    outside = labels > 0
    outside[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = False
    ys, xs = np.nonzero(outside)
    return (ys + oy).astype(np.int32), (xs + ox).astype(np.int32), labels[ys, xs].astype(np.uint32)


def paint_tile(y: int, x: int, h: int, w: int, local: np.ndarray, cores: list, spills: list) -> np.ndarray:
    """(h, w) uint32 global labels of the slide window at (y, x): each block's own objects inside its
    core (`local`: the window's local ids as the cores hold them; `cores`: (core, offset) per block),
    then the objects that spill out of their block's core, on pixels still 0, in block order
    (`spills`: (ys, xs, local ids, offset)). A pixel two blocks' objects claim goes to the block whose
    core holds it: the one whose network saw it with the most context."""
    out = np.zeros((h, w), np.uint32)
    for (cx0, cy0, cx1, cy1), offset in cores:
        ry0, ry1 = max(y, cy0), min(y + h, cy1)
        rx0, rx1 = max(x, cx0), min(x + w, cx1)
        if ry1 <= ry0 or rx1 <= rx0:
            continue
        part = local[ry0 - y : ry1 - y, rx0 - x : rx1 - x]
        out[ry0 - y : ry1 - y, rx0 - x : rx1 - x] = np.where(part > 0, part + np.uint32(offset), 0)
    for ys, xs, ids, offset in spills:
        sel = (ys >= y) & (ys < y + h) & (xs >= x) & (xs < x + w)
        if not sel.any():
            continue
        yy, xx, vv = ys[sel] - y, xs[sel] - x, ids[sel] + np.uint32(offset)
        free = out[yy, xx] == 0
        # Two spills on one free pixel: the first block in order keeps it (np assignment keeps the last, so reverse).
        yy, xx, vv = yy[free][::-1], xx[free][::-1], vv[free][::-1]
        out[yy, xx] = vv
    return out


# --------------------------------------------------------------------------------------------
# Planning


def _slide_identity(path: Path) -> dict:
    """Size and the sha256 of the first and last MiB: a cheap fingerprint that tells slides apart."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), 2)
            h.update(fh.read(1 << 20))
    return {"path": str(path.resolve()), "bytes": size, "sha256_ends": h.hexdigest()}


def _chunk(block: int) -> int:
    return next(c for c in (512, 256, 128, 64, 32) if block % c == 0)


def _sample_tiles(reader, path, level: int, width: int, height: int, points) -> list[np.ndarray]:
    tiles = []
    s = SAMPLE_SIZE
    for fx, fy in points:
        w, h = min(s, width), min(s, height)
        x = int(np.clip(round(fx * width - w / 2), 0, width - w))
        y = int(np.clip(round(fy * height - h / 2), 0, height - h))
        tiles.append(read_region(reader, path, level, x, y, w, h))
    return tiles


def slide_statistics(predictor: Predictor, tiles: list[np.ndarray], job: SlideJob) -> tuple[dict, dict]:
    """The slide-level statistics from sample tiles (uint8 RGB at the working level): ({"intensity",
    "lab", "edge_scale", "diameter"}, their sources)."""
    from qmed.data.stain import pooled_lab_stats

    cfg = predictor.cfg
    stats: dict = {"intensity": None, "lab": None, "edge_scale": None, "diameter": None}
    src: dict = {"tiles": len(tiles), "tile_px": SAMPLE_SIZE}
    if not tiles:
        return stats, {**src, "note": "no tissue: nothing to take statistics from"}
    if cfg.data.normalize == "percentile":
        hist = sum(np.bincount(t.ravel(), minlength=256) for t in tiles)
        stats["intensity"] = tuple(round(v, 6) for v in histogram_percentiles(hist, cfg.data.norm_percentiles))
        src["intensity"] = f"percentiles {list(cfg.data.norm_percentiles)} of the sample tiles' pixels pooled"
    elif cfg.data.normalize == "reinhard":
        stats["lab"] = tuple(round(v, 5) for v in pooled_lab_stats(t.astype(np.float32) / 255.0 for t in tiles))
        src["lab"] = "L*a*b* means and stds of the sample tiles' pixels pooled"
    fixed = {k: v for k, v in (("intensity", stats["intensity"]), ("lab", stats["lab"])) if v is not None}
    if predictor.edge is not None:
        scale = predictor.edge_scale([predictor.model_input(t, fixed) for t in tiles])
        stats["edge_scale"] = None if scale is None else round(scale, 6)
        src["edge_scale"] = "median over the sample tiles of the 99th percentile of the positive edge responses"
    elif predictor.backend == "onnxruntime":
        src["edge_scale"] = "per window (the ONNX graph computes the edge channel's scale)"
    d = cfg.predict.object_diameter
    if d:
        ratio = job.scale / cfg.data.zoom  # model px per working-level px, beyond the training's own zoom
        stats["diameter"] = round(float(d) / ratio, 3)
        src["diameter"] = "the model's predict.object_diameter (training masks' median)" + (
            f" / {ratio:.4g}" if ratio != 1 else ""
        )
    else:
        probe = SlideJob(
            **{**asdict(job), **{k: v for k, v in stats.items() if k in ("intensity", "lab", "edge_scale")}}
        )
        found = []
        for t in tiles[:N_DIAMETER_SAMPLES]:
            d_t = object_diameter(predictor.maps(t, probe, tta=1)[0] > job.threshold)
            if d_t:
                found.append(d_t)
        stats["diameter"] = round(float(np.median(found)), 3) if found else None
        src["diameter"] = (
            f"median of the predicted objects' median diameters on {min(len(tiles), N_DIAMETER_SAMPLES)} sample tiles"
            if found
            else "none found on the sample tiles: each block measures its own"
        )
    return stats, src


def plan_slide(
    model_path,
    slide_path,
    out,
    *,
    mpp: float | None = None,
    level: int | None = None,
    block: int = DEFAULT_BLOCK,
    halo: int | None = None,
    tissue: bool = True,
    tta: bool = False,
    instances: bool = True,
    probability: bool = False,
    threshold: float | None = None,
    tile: int | None = None,
    force: bool = False,
    backend: str | None = None,
    device: str | None = None,
    gzip: bool = False,
    keep_blocks: bool = False,
    predictor: Predictor | None = None,
) -> SlideJob:
    """Read the slide's metadata, tissue mask and statistics; write OUT/manifest.json (the resume key:
    the model file's sha256, the slide and the settings) unless OUT already holds this job, whose
    finished blocks are then kept. Nothing is written until every read has succeeded.
    `predictor`: a ready model (Predictor) instead of loading `model_path` (whose file still keys the job)."""
    from qmed.data.tissue import overlay, region_has_tissue, sample_points, thumbnail, tissue_from_rgb
    from qmed.io.files import (
        check_not_inputs,
        check_output,
        clear_output,
        file_digest,
        make_dirs,
        read_marker,
        remove_stale,
        settings_key,
        write_marker,
    )
    from qmed.io.slides import open_slide, pick_level

    t0 = time.perf_counter()
    slide_path, out = Path(slide_path), Path(out)
    if not slide_path.is_file():
        raise QmedInputError(slide_path, "slide file does not exist")
    if block < MIN_BLOCK or block % 32:
        raise QmedInputError(None, f"--block must be a multiple of 32 and at least {MIN_BLOCK}, got {block}")
    if halo is not None and not 0 <= halo < block:
        raise QmedInputError(None, f"--halo must be between 0 and the block size ({block}), got {halo}")
    check_not_inputs(out, [slide_path, model_path])
    reader = open_slide(slide_path)
    backend = default_backend(model_path, backend)
    predictor = predictor or open_predictor(model_path, backend, device)
    cfg = predictor.cfg
    lvl, lvl_mpp = pick_level(reader, mpp=mpp, level=level)
    width, height = (int(v) for v in reader.dimensions[lvl])
    downsample = float(reader.downsamples[lvl])
    scale = float(cfg.data.zoom) * (lvl_mpp / mpp if mpp and lvl_mpp else 1.0)
    model_file = predictor.checkpoint if predictor.checkpoint is not None else Path(model_path)
    settings = {
        "model_sha256": file_digest(model_file),
        "backend": backend,
        "slide": _slide_identity(slide_path),
        "level": lvl,
        "mpp": mpp,
        "block": block,
        "halo": halo,
        "tissue": bool(tissue),
        "tta": bool(tta),
        "instances": bool(instances),
        "probability": bool(probability),
        "threshold": threshold,
        "tile": tile,
        "gzip": bool(gzip),
    }
    key = settings_key(settings)
    manifest = read_json(out / MANIFEST)
    ours = isinstance(manifest, dict) and manifest.get("format") == FORMAT
    if ours and manifest.get("key") == key and not force:
        remove_stale(out, recursive=True)
        return load_job(out, model_path, device, keep_blocks)
    if ours and not force:
        raise QmedInputError(
            out,
            "holds a slide prediction made with another model, slide or settings; pass --force to replace "
            "it, or choose another --out",
        )
    marker = read_marker(out) if out.is_dir() else None
    half_planned = not ours and marker is not None and marker.get("verb") == VERB  # killed while planning
    if not ours and not half_planned:
        check_output(out, force, inputs=[slide_path, model_path])

    n_views = cfg.predict.tta if tta else 1
    thr = cfg.predict.threshold if threshold is None else float(threshold)
    job = SlideJob(
        model_path=str(model_path),
        backend=backend,
        device=device,
        slide_path=str(slide_path),
        out=str(out),
        key=key,
        level=lvl,
        downsample=downsample,
        mpp=lvl_mpp,
        width=width,
        height=height,
        block=block,
        halo=halo or 0,
        chunk=_chunk(block),
        scale=scale,
        tta=n_views,
        threshold=thr,
        tile=int(tile or cfg.predict.tile),
        overlap=float(cfg.predict.overlap),
        batch_size=int(cfg.predict.batch_size),
        instances=bool(instances),
        probability=bool(probability),
        gzip=bool(gzip),
        keep_blocks=keep_blocks,
    )
    thumb, thumb_ds = thumbnail(reader)
    tissue_info: dict = {"used": bool(tissue)}
    mask = None
    if tissue:
        mask, info = tissue_from_rgb(thumb)
        tissue_info.update(info)
    blocks = []
    for i in range(job.n_blocks):
        x0, y0, x1, y1 = job.core(i)
        if mask is None or region_has_tissue(
            mask, thumb_ds, x0 * downsample, y0 * downsample, x1 * downsample, y1 * downsample
        ):
            blocks.append(i)
    points = sample_points(mask, (height, width), N_SAMPLES) if blocks else []
    tiles = _sample_tiles(reader, slide_path, lvl, width, height, points)
    stats, sources = slide_statistics(predictor, tiles, job)
    del tiles
    if halo is None:
        h = max(math.ceil(HALO_MODEL_PX / scale), math.ceil(2 * (stats["diameter"] or 0)))
        halo = min(int(math.ceil(h / 16) * 16), block // 2)
    job = SlideJob(
        **{
            **asdict(job),
            "halo": int(halo),
            "intensity": stats["intensity"],
            "lab": stats["lab"],
            "edge_scale": stats["edge_scale"],
            "diameter": stats["diameter"],
            "blocks": tuple(blocks),
        }
    )

    # Every read has succeeded: now write.
    if out.is_dir() and any(out.iterdir()):
        clear_output(out)  # allowed above: --force on qmed's own output, or a killed plan of this verb
    make_dirs(out)
    write_marker(out, VERB, key)
    make_dirs(job.blocks_dir)
    _create_stores(job)
    _write_png(out / TISSUE_FILE, overlay(thumb, mask) if mask is not None else thumb)
    plan = {k: v for k, v in asdict(job).items() if k not in ("model_path", "device", "out", "keep_blocks")}
    write_json(
        out / MANIFEST,
        {
            "format": FORMAT,
            "version": 1,
            "key": key,
            "model_path": str(model_path),
            "settings": settings,
            "plan": plan,
            "tissue": {
                **tissue_info,
                "thumbnail_downsample": round(thumb_ds, 4),
                "blocks_run": len(blocks),
                "blocks": job.n_blocks,
            },
            "statistics_sources": sources,
            "plan_seconds": round(time.perf_counter() - t0, 3),
        },
    )
    return job


def _tuple(v):
    return None if v is None else tuple(v)


def load_job(out, model_path=None, device: str | None = None, keep_blocks: bool = False) -> SlideJob:
    """The job that OUT/manifest.json records (a planned or finished slide), e.g. to run its blocks
    elsewhere or to measure it. `model_path`: where the model is now (default: as planned)."""
    manifest = read_json(Path(out) / MANIFEST)
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT):
        raise QmedInputError(out, f"holds no slide plan ({MANIFEST} written by qmed predict --input SLIDE)")
    plan = manifest["plan"]
    return SlideJob(
        **{
            **plan,
            "model_path": str(model_path or manifest.get("model_path")),
            "device": device,
            "out": str(out),
            "keep_blocks": keep_blocks,
            "intensity": _tuple(plan["intensity"]),
            "lab": _tuple(plan["lab"]),
            "blocks": tuple(plan["blocks"]),
        }
    )


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def _stores(job: SlideJob) -> dict:
    names = {"mask": "uint8", "labels": "uint32"}  # labels: the kept objects' local ids in each core, always
    if job.probability:
        names["probability"] = "uint8"
    return names


def _create_stores(job: SlideJob) -> None:
    import zarr

    for name, dtype in _stores(job).items():  # open_array(mode="w"): zarr 2 (Python 3.10) and 3 alike
        zarr.open_array(
            str(job.blocks_dir / f"{name}.zarr"),
            mode="w",
            shape=(job.height, job.width),
            chunks=(job.chunk, job.chunk),
            dtype=dtype,
            fill_value=0,
        )


def _open_store(path: str, mode: str):
    import zarr

    return zarr.open_array(path, mode=mode)


# --------------------------------------------------------------------------------------------
# The slide's one window grid (the whole image's), and which block runs each window


@dataclass(frozen=True)
class WindowPlan:
    """Model space: the working level resized by the job's scale (as predict_at_scale resizes an image),
    hs x ws px, padded to hp x wp (multiples of 32, as predict_probability pads); windows th x tw.
    `owned[b]`: the windows (y, x) block b runs; `deps[b]`: the blocks whose window sums cover b's read
    region; `users[n]`: the blocks that read n's sums."""

    hs: int
    ws: int
    hp: int
    wp: int
    th: int
    tw: int
    owned: dict
    deps: dict
    users: dict

    def extent(self, n: int) -> tuple[int, int, int, int] | None:
        """(y0, x0, y1, x1): the model-space box of block n's windows (None: it runs none)."""
        ws = self.owned.get(n) or []
        if not ws:
            return None
        return (
            min(y for y, _ in ws),
            min(x for _, x in ws),
            max(y for y, _ in ws) + self.th,
            max(x for _, x in ws) + self.tw,
        )


def _model_size(n: int, scale: float) -> int:
    return n if scale == 1.0 else max(1, round(n * scale))


def model_span(job: SlideJob, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
    """The model-space box (y0, x0, y1, x1) whose probabilities give the working-level box's (the
    cubic or linear resize back reaches 2 px)."""
    if job.scale == 1.0:
        return y0, x0, y1, x1
    hs, ws = _model_size(job.height, job.scale), _model_size(job.width, job.scale)
    (my0, my1), (mx0, mx1) = _source_span(hs, job.height, y0, y1, 2), _source_span(ws, job.width, x0, x1, 2)
    return my0, mx0, my1, mx1


def _source_span(n_src: int, n_dst: int, d0: int, d1: int, reach: int) -> tuple[int, int]:
    """The source px that cv2.resize (n_src -> n_dst) reads for destination px [d0, d1): destination i
    sits at source (i + 0.5) n_src / n_dst - 0.5; `reach`: the filter's half-width in source px."""
    inv = n_src / n_dst
    return max(0, math.floor((d0 + 0.5) * inv - 0.5) - reach - 1), min(
        n_src, math.ceil((d1 - 0.5) * inv - 0.5) + reach + 2
    )


def resize_matrix(n_src: int, n_dst: int, d0: int, d1: int, s0: int, s1: int, mode: str):
    """The rows [d0, d1) of cv2.resize's 1-D operator from n_src to n_dst px, on the source columns
    [s0, s1) (scipy CSR, float32): cv2's INTER_LINEAR, INTER_CUBIC (a = -0.75) and INTER_AREA weights
    and border rules, so that a block resizes a crop exactly as the whole image is resized (a crop
    through cv2 would start its own grid and its own borders)."""
    from scipy.sparse import csr_matrix

    inv = n_src / n_dst
    rows, cols, vals = [], [], []
    for i in range(d0, d1):
        if mode == "area" and inv > 1:
            f1 = i * inv
            f2 = f1 + inv
            cell = min(inv, n_src - f1)
            a, b = math.ceil(f1), min(math.floor(f2), n_src - 1)
            a = min(a, b)
            taps = []
            if a - f1 > 1e-3:
                taps.append((a - 1, (a - f1) / cell))
            taps += [(j, 1.0 / cell) for j in range(a, b)]
            if f2 - b > 1e-3:
                taps.append((b, min(min(f2 - b, 1.0), cell - (b - f1)) / cell))
        else:
            fx = (i + 0.5) * inv - 0.5
            sx = math.floor(fx)
            t = fx - sx
            if mode == "cubic":
                A = -0.75
                w = [
                    ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A,
                    ((A + 2) * t - (A + 3)) * t * t + 1,
                    ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1,
                ]
                w.append(1 - sum(w))
                taps = [(min(max(sx - 1 + k, 0), n_src - 1), w[k]) for k in range(4)]
            else:
                if sx < 0:
                    sx, t = 0, 0.0
                if sx >= n_src - 1:
                    sx, t = n_src - 1, 0.0
                taps = [(sx, 1.0 - t), (min(sx + 1, n_src - 1), t)]
        for j, v in taps:
            if v == 0.0:
                continue
            if not s0 <= j < s1:
                raise RuntimeError(
                    f"resize_matrix: source px {j} outside [{s0}, {s1})"
                )  # a bug: the span is too narrow
            rows.append(i - d0)
            cols.append(j - s0)
            vals.append(v)
    return csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(d1 - d0, s1 - s0))


def resize_crop(img: np.ndarray, ay, ax) -> np.ndarray:
    """(H, W, ...) -> rows resized by `ay`, columns by `ax` (resize_matrix operators)."""
    h, w = img.shape[:2]
    rest = img.shape[2:]
    t = ay @ img.reshape(h, -1)  # (h', w * c)
    t = t.reshape(ay.shape[0], w, -1).transpose(1, 0, 2).reshape(w, -1)
    t = (ax @ t).reshape(ax.shape[0], ay.shape[0], -1).transpose(1, 0, 2)
    return np.ascontiguousarray(t.reshape(ay.shape[0], ax.shape[0], *rest)).astype(np.float32, copy=False)


def _hits(starts: list[int], size: int, a: int, b: int) -> range:
    """Indices of the windows [s, s + size) that intersect [a, b) (starts sorted)."""
    return range(bisect.bisect_right(starts, a - size), bisect.bisect_left(starts, b))


@lru_cache(maxsize=8)
def window_plan(job: SlideJob) -> WindowPlan:
    """Which windows of the slide's grid run, and where: every window that reaches a tissue block's
    read region, by the tissue block that holds its origin, else by the first tissue block it
    reaches (a window over background next to tissue)."""
    hs, ws = _model_size(job.height, job.scale), _model_size(job.width, job.scale)
    hp, wp = math.ceil(hs / 32) * 32, math.ceil(ws / 32) * 32
    th, tw, ys, xs = window_grid(hp, wp, job.tile, job.overlap)
    if hp <= th and wp <= tw:  # predict_probability's one pass for an image within a tile
        th, tw, ys, xs = hp, wp, [0], [0]
    fy, fx = hs / job.height, ws / job.width
    run = set(job.blocks)
    owner: dict[tuple[int, int], int] = {}
    spans = {}
    for b in job.blocks:
        my0, mx0, my1, mx1 = spans[b] = model_span(job, *job.read_region(b))
        for iy in _hits(ys, th, my0, my1):
            for ix in _hits(xs, tw, mx0, mx1):
                if (iy, ix) in owner:
                    continue
                y, x = ys[iy], xs[ix]
                r = min(job.rows - 1, min(job.height - 1, int((y + 0.5) / fy)) // job.block)
                c = min(job.cols - 1, min(job.width - 1, int((x + 0.5) / fx)) // job.block)
                home = r * job.cols + c
                owner[(iy, ix)] = home if home in run else b
    owned: dict[int, list] = {b: [] for b in job.blocks}
    for (iy, ix), b in sorted(owner.items()):
        owned[b].append((ys[iy], xs[ix]))
    deps: dict[int, list] = {}
    users: dict[int, list] = {b: [] for b in job.blocks}
    for b in job.blocks:
        my0, mx0, my1, mx1 = spans[b]
        d = sorted({owner[(iy, ix)] for iy in _hits(ys, th, my0, my1) for ix in _hits(xs, tw, mx0, mx1)})
        deps[b] = d
        for n in d:
            users[n].append(b)
    return WindowPlan(hs, ws, hp, wp, th, tw, owned, deps, users)


def windows_file(job: SlideJob, n: int) -> Path:
    return job.blocks_dir / f"{n:06d}.windows.npy"


def model_region(
    job: SlideJob, plan: WindowPlan, predictor: Predictor, y0: int, x0: int, y1: int, x1: int
) -> torch.Tensor:
    """(1, 3, y1 - y0, x1 - x0) of the model-space image, as predict_at_scale's resize and
    predict_probability's padding make it from the whole working level (box inside hp x wp)."""

    hs, ws = plan.hs, plan.ws
    yc, xc = min(y1, hs), min(x1, ws)
    # reflection at the slide's far edge reads up to 31 px back: take them in, crop after padding
    ya, xa = (max(0, y0 - 32) if y1 > hs else y0), (max(0, x0 - 32) if x1 > ws else x0)
    reader = _reader(job.slide_path)
    if job.scale == 1.0:
        img = predictor.model_input(
            read_region(reader, job.slide_path, job.level, xa, ya, xc - xa, yc - ya), job.stats()
        )
    else:  # as predict_at_scale resizes the whole level: area down, linear up
        mode = "linear" if job.scale > 1 else "area"
        reach = 2 + math.ceil(max(job.height / hs, job.width / ws))
        sy0, sy1 = _source_span(job.height, hs, ya, yc, reach)
        sx0, sx1 = _source_span(job.width, ws, xa, xc, reach)
        src = predictor.model_input(
            read_region(reader, job.slide_path, job.level, sx0, sy0, sx1 - sx0, sy1 - sy0), job.stats()
        )
        img = resize_crop(
            src,
            resize_matrix(job.height, hs, ya, yc, sy0, sy1, mode),
            resize_matrix(job.width, ws, xa, xc, sx0, sx1, mode),
        )
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]
    ph, pw = y1 - yc, x1 - xc
    if ph or pw:
        mode = (
            "reflect" if plan.hp - hs < hs and plan.wp - ws < ws else "replicate"
        )  # as pad_multiple decides for the whole
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x[:, :, y0 - ya :, x0 - xa :]


def run_windows(job: SlideJob, n: int, predictor: Predictor | None = None) -> dict:
    """Run the windows block n owns and store their Gaussian-weighted sum (C, h, w) float32 over their
    box, atomically; then a small JSON of its seconds. Idempotent: stored sums are kept."""
    path = windows_file(job, n)
    timing = path.with_suffix(".json")
    if path.is_file():
        return read_json(timing) or {"index": n}
    plan = window_plan(job)
    t_load = time.perf_counter()
    predictor = predictor or load_predictor(job)
    t0 = time.perf_counter()
    box = plan.extent(n)
    acc = np.zeros((0, 0, 0), np.float32)
    t_read = t0
    if box is not None:
        y0, x0, y1, x1 = box
        x = model_region(job, plan, predictor, y0, x0, y1, x1)
        t_read = time.perf_counter()
        acc = predictor.window_sums(job, x, (y0, x0), plan.owned[n], plan.th, plan.tw)
    t_net = time.perf_counter()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, acc)
    summary = {
        "index": n,
        "windows": len(plan.owned.get(n) or []),
        "seconds": {"load": round(t0 - t_load, 3), "read": round(t_read - t0, 3), "predict": round(t_net - t_read, 3)},
    }
    write_json(timing, summary)
    return summary


def block_maps(job: SlideJob, index: int, predictor: Predictor | None = None) -> np.ndarray:
    """(C, H, W) probabilities over block `index`'s read region: its windows' stored sums (run here
    when missing) divided by their summed weights, resized back to the working level."""
    plan = window_plan(job)
    rx0, ry0, rx1, ry1 = job.read_region(index)
    my0, mx0, my1, mx1 = model_span(job, rx0, ry0, rx1, ry1)
    acc = None
    coords = []
    for n in plan.deps[index]:
        if not windows_file(job, n).is_file():
            run_windows(job, n, predictor)
        box = plan.extent(n)
        if box is None:
            continue
        y0, x0, y1, x1 = box
        coords += plan.owned[n]
        a = np.load(windows_file(job, n), mmap_mode="r")
        if acc is None:
            acc = np.zeros((a.shape[0], my1 - my0, mx1 - mx0), np.float32)
        oy0, ox0, oy1, ox1 = max(y0, my0), max(x0, mx0), min(y1, my1), min(x1, mx1)
        if oy1 > oy0 and ox1 > ox0:
            acc[:, oy0 - my0 : oy1 - my0, ox0 - mx0 : ox1 - mx0] += a[:, oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
    if acc is None:
        raise RuntimeError(
            f"block {index} of {job.slide_path} has no windows"
        )  # a bug: every tissue block's region has some
    norm = torch.zeros((my1 - my0, mx1 - mx0), dtype=torch.float32)
    add_weights(norm, (my0, mx0), coords, plan.th, plan.tw)
    p = np.divide(acc, norm.numpy(), out=np.zeros_like(acc), where=norm.numpy() > 0)
    if job.scale == 1.0:
        return p
    mode = "linear" if job.scale > 1 else "cubic"  # as predict_at_scale resizes the probabilities back
    ay = resize_matrix(plan.hs, job.height, ry0, ry1, my0, my1, mode)
    ax = resize_matrix(plan.ws, job.width, rx0, rx1, mx0, mx1, mode)
    return resize_crop(p.transpose(1, 2, 0), ay, ax).transpose(2, 0, 1).clip(0.0, 1.0)


def release_windows(job: SlideJob, index: int) -> None:
    """Delete the stored window sums that no unfinished block reads any more (after `index`'s marker)."""
    plan = window_plan(job)
    for n in plan.deps.get(index, []):
        if all(job.marker(u).is_file() for u in plan.users[n]):
            windows_file(job, n).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Blocks


def run_block(job: SlideJob, index: int, predictor: Predictor | None = None) -> dict:
    """Predict one block, keep the objects its core owns, write its result (the cores into the zarr
    stores, NNNNNN.npz) and then its marker NNNNNN.json, each atomically. Idempotent: a block with a
    marker returns the recorded summary. The return value is small (counts and seconds)."""
    marker = job.marker(index)
    done = read_json(marker)
    if isinstance(done, dict):
        return done
    if index not in set(job.blocks):
        return {"index": index, "objects": 0, "skipped": True}
    from qmed.io.geojson import label_polygons

    x0, y0, x1, y1 = job.read_region(index)
    core = job.core(index)
    for n in window_plan(job).deps[index]:  # the windows it needs that no block has run yet (their seconds: their JSON)
        if not windows_file(job, n).is_file():
            run_windows(job, n, predictor)
    t0 = time.perf_counter()
    maps = block_maps(job, index, predictor)
    t_net = time.perf_counter()
    res = block_objects(maps, (x0, y0), core, (job.width, job.height), job.threshold, job.diameter, job.instances)
    t_split = time.perf_counter()
    cx0, cy0, cx1, cy1 = core
    inner = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    stores = _stores(job)
    _open_store(str(job.blocks_dir / "mask.zarr"), "r+")[cy0:cy1, cx0:cx1] = res["mask"][inner].astype(np.uint8)
    _open_store(str(job.blocks_dir / "labels.zarr"), "r+")[cy0:cy1, cx0:cx1] = res["labels"][inner]
    if "probability" in stores:
        p = np.round(np.clip(maps[0][inner], 0, 1) * 255).astype(np.uint8)
        _open_store(str(job.blocks_dir / "probability.zarr"), "r+")[cy0:cy1, cx0:cx1] = p
    del maps
    sy, sx, sid = spill(res["labels"], (x0, y0), core)
    ds = job.downsample
    poly_id, poly_len, poly_xy = [], [], []
    for oid, ring in label_polygons(res["labels"], offset_xy=(x0 * ds, y0 * ds), scale=ds):
        poly_id.append(oid)
        poly_len.append(len(ring))
        poly_xy.extend(ring)
    with atomic_path(job.result(index)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                table=res["table"],
                spill_y=sy,
                spill_x=sx,
                spill_id=sid,
                poly_id=np.asarray(poly_id, np.int64),
                poly_len=np.asarray(poly_len, np.int64),
                poly_xy=np.asarray(poly_xy, np.float64).reshape(-1, 2),
            )
    n = int(res["table"].shape[0])
    summary = {
        "index": index,
        "objects": n,
        "cut": res["cut"],
        "read_px": int((x1 - x0) * (y1 - y0)),
        "core_px": int((cx1 - cx0) * (cy1 - cy0)),
        "seconds": {
            "blend": round(t_net - t0, 3),
            "objects": round(t_split - t_net, 3),
            "write": round(time.perf_counter() - t_split, 3),
        },
    }
    write_json(marker, summary)
    release_windows(job, index)
    return summary


# --------------------------------------------------------------------------------------------
# Outputs


class _Assembly:
    """Reads block results lazily for finish_slide: the zarr cores per window, spills per block (a few cached)."""

    def __init__(self, job: SlideJob, offsets: np.ndarray):
        self.job = job
        self.offsets = offsets
        self.run = set(job.blocks)
        self.labels = _open_store(str(job.blocks_dir / "labels.zarr"), "r")
        self.spill = lru_cache(maxsize=32)(self._spill)  # a tile row touches a few blocks' spills again and again

    def _spill(self, index: int):
        with np.load(self.job.result(index)) as z:
            return z["spill_y"], z["spill_x"], z["spill_id"]

    def labels_tile(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        job = self.job
        local = self.labels[y : y + h, x : x + w]
        B, halo = job.block, job.halo
        cores, spills = [], []
        for r in range(max(0, (y - halo) // B), min(job.rows - 1, (y + h - 1 + halo) // B) + 1):
            for c in range(max(0, (x - halo) // B), min(job.cols - 1, (x + w - 1 + halo) // B) + 1):
                i = r * job.cols + c
                if i not in self.run:
                    continue
                core = job.core(i)
                if core[0] < x + w and core[2] > x and core[1] < y + h and core[3] > y:
                    cores.append((core, int(self.offsets[i])))
                rx0, ry0, rx1, ry1 = job.read_region(i)
                if rx0 < x + w and rx1 > x and ry0 < y + h and ry1 > y:
                    sy, sx, sid = self.spill(i)
                    if len(sid):
                        spills.append((sy, sx, sid, int(self.offsets[i])))
        return paint_tile(y, x, h, w, local, cores, spills)


def finish_slide(job: SlideJob, extra: dict | None = None) -> dict:
    """Write the outputs from the block results (all blocks must have their markers) and, last,
    OUT/predict.json; then remove the block results (unless job.keep_blocks). Idempotent: a
    finished job returns its predict.json."""
    from qmed.io.files import remove_stale
    from qmed.io.geojson import GeoJSONWriter
    from qmed.io.pyramid import write_pyramid

    out = Path(job.out)
    if is_finished(job):
        return read_json(out / PREDICTION_META)
    missing = pending_blocks(job)
    if missing:
        raise QmedInputError(
            out,
            f"{len(missing)} of {len(job.blocks)} blocks have not finished; run the same command again to finish them",
        )
    t0 = time.perf_counter()
    remove_stale(out)
    summaries = {i: read_json(job.marker(i)) for i in job.blocks}
    counts = np.zeros(job.n_blocks, np.int64)
    for i, s in summaries.items():
        counts[i] = int(s["objects"])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_objects = int(counts.sum())
    if n_objects >= 2**32 - 1:
        raise QmedInputError(out, f"{n_objects} objects do not fit the uint32 label map")
    shape = (job.height, job.width)
    mask = _open_store(str(job.blocks_dir / "mask.zarr"), "r")
    write_pyramid(
        out / MASK_FILE,
        shape,
        np.uint8,
        lambda y, x, h, w: mask[y : y + h, x : x + w] * np.uint8(255),
        kind="mask",
        mpp=job.mpp,
    )
    asm = _Assembly(job, offsets)
    if job.instances:
        write_pyramid(out / LABELS_FILE, shape, np.uint32, asm.labels_tile, kind="labels", mpp=job.mpp)
    if job.probability:
        prob = _open_store(str(job.blocks_dir / "probability.zarr"), "r")
        write_pyramid(
            out / PROB_FILE,
            shape,
            np.uint8,
            lambda y, x, h, w: prob[y : y + h, x : x + w],
            kind="probability",
            mpp=job.mpp,
        )
    t_pyr = time.perf_counter()
    geo_name = GEOJSON_FILE + (".gz" if job.gzip else "")
    _write_objects(job, offsets, out / OBJECTS_FILE, out / geo_name, GeoJSONWriter)
    manifest = read_json(out / MANIFEST) or {}
    cut = sum(int(s.get("cut", 0)) for s in summaries.values())
    secs = [s.get("seconds", {}) for s in summaries.values()]
    wsecs = [(read_json(windows_file(job, i).with_suffix(".json")) or {}).get("seconds", {}) for i in job.blocks]
    ds = job.downsample
    meta = {
        "complete": True,
        "key": job.key,
        "kind": "slide",
        "model": job.model_path,
        "backend": job.backend,
        "model_sha256": manifest.get("settings", {}).get("model_sha256"),
        "slide": job.slide_path,
        "slide_size_level0": [round(job.width * ds), round(job.height * ds)],
        "level": job.level,
        "downsample": ds,
        "mpp": job.mpp,
        "size": [job.width, job.height],
        "scale": job.scale,
        "block": job.block,
        "halo": job.halo,
        "tile": job.tile,
        "overlap": job.overlap,
        "tta": job.tta,
        "threshold": job.threshold,
        "instances": job.instances,
        "instance_split": "watershed" if job.instances else "connected components",
        "statistics": {
            "intensity": job.intensity,
            "lab": job.lab,
            "edge_scale": job.edge_scale,
            "diameter": job.diameter,
            "sources": manifest.get("statistics_sources"),
        },
        "tissue": manifest.get("tissue"),
        "counts": {
            "blocks": job.n_blocks,
            "blocks_run": len(job.blocks),
            "objects": n_objects,
            "cut_objects": cut,
            "windows": sum(len(v) for v in window_plan(job).owned.values()),
            "pixels_run": sum(int(s.get("core_px", 0)) for s in summaries.values()),
            "pixels_read": sum(int(s.get("read_px", 0)) for s in summaries.values()),
        },
        "seconds": {
            "plan": manifest.get("plan_seconds"),
            "blocks": {
                **{k: round(sum(s.get(k, 0.0) for s in wsecs), 3) for k in ("load", "read", "predict")},
                **{k: round(sum(s.get(k, 0.0) for s in secs), 3) for k in ("blend", "objects", "write")},
            },
            "pyramids": round(t_pyr - t0, 3),
            "tables": round(time.perf_counter() - t_pyr, 3),
            **(extra or {}),
        },
        "outputs": [MASK_FILE]
        + ([LABELS_FILE] if job.instances else [])
        + ([PROB_FILE] if job.probability else [])
        + [OBJECTS_FILE, geo_name, TISSUE_FILE],
        "coordinates": "objects.csv and the GeoJSON in level-0 px; the pyramids at the working level (downsample, mpp)",
    }
    if cut:
        log.warning("%s: %d objects reach past the halo of %d px; pass a wider --halo", job.slide_path, cut, job.halo)
    write_json(out / PREDICTION_META, meta)
    if not job.keep_blocks:
        shutil.rmtree(job.blocks_dir, ignore_errors=True)
    return meta


def _write_objects(job: SlideJob, offsets: np.ndarray, csv_path: Path, geo_path: Path, writer_cls) -> None:
    """objects.csv and the GeoJSON, streamed block by block (one block's objects in memory at a time)."""
    ds = job.downsample
    area_um2 = job.mpp**2 if job.mpp else None  # the working level's px area in um²
    with (
        atomic_path(csv_path) as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
        writer_cls(geo_path, gzip=job.gzip) as geo,
    ):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(OBJECT_COLUMNS)
        for i in job.blocks:
            with np.load(job.result(i)) as z:
                table, pid, plen, pxy = z["table"], z["poly_id"], z["poly_len"], z["poly_xy"]
            off = int(offsets[i])
            starts = np.concatenate([[0], np.cumsum(plen)])
            polys = {int(k): pxy[starts[j] : starts[j + 1]] for j, k in enumerate(pid)}
            for lid, area, cy, cx, b0, b1, b2, b3, mp in table:
                gid = off + int(lid)
                # pixel i of the level covers level-0 px [i ds, (i + 1) ds): its centre is level-0 (i + 0.5) ds - 0.5
                w.writerow(
                    [
                        gid,
                        int(round(area * ds * ds)),
                        round((cy + 0.5) * ds - 0.5, 2),
                        round((cx + 0.5) * ds - 0.5, 2),
                        int(round(b0 * ds)),
                        int(round(b1 * ds)),
                        int(round(b2 * ds)),
                        int(round(b3 * ds)),
                        round(float(mp), 4),
                    ]
                )
                ring = polys.get(int(lid))
                if ring is None or len(ring) < 4:
                    continue
                meas = {"area_px": int(round(area * ds * ds)), "mean_probability": round(float(mp), 4)}
                if area_um2:
                    meas["area_um2"] = round(float(area) * area_um2, 3)
                geo.add(gid, [(float(a), float(b)) for a, b in ring], meas)


# --------------------------------------------------------------------------------------------
# In one process


def predict_slide(
    model_path, slide_path, out, *, quiet: bool = False, predictor: Predictor | None = None, **kw
) -> dict:
    """plan_slide, every pending block in this process (a progress bar on a terminal unless `quiet`),
    finish_slide. Returns predict.json's content."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    job = plan_slide(model_path, slide_path, out, predictor=predictor, **kw)
    if is_finished(job):
        return read_json(Path(job.out) / PREDICTION_META)
    todo = pending_blocks(job)
    for i in tqdm(
        todo,
        desc=f"slide blocks ({len(job.blocks)} of {job.n_blocks} hold tissue)",
        unit="block",
        leave=False,
        disable=True if quiet else None,
        dynamic_ncols=True,
    ):
        run_block(job, i, predictor)
    return finish_slide(job, extra={"wall_this_run": round(time.perf_counter() - t0, 3), "blocks_this_run": len(todo)})
