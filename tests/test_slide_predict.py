"""Whole slides block by block (issue 42): tissue mask, slide-level statistics, seams, resume, outputs.

The seam tests run the engine's own functions on hand-made probability maps (discs placed across
the block seams); the end-to-end tests run small pyramidal TIFF slides (about 1-2k px) through
`predict_slide` / `qmed predict`, with a deterministic stand-in network (dark pixels are nuclei,
so any window arrangement gives the same probabilities) where exact agreement is the point, and a
tiny untrained model where the real forward pass, ONNX and the CLI are.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qmed.data.tissue import region_has_tissue, sample_points, thumbnail, tissue_from_rgb
from qmed.segment.instances import split_instances
from qmed.segment.slide import SlideJob, block_objects, histogram_percentiles, owner_cell, paint_tile, spill


# --------------------------------------------------------------------------------------------
# helpers


class ArrayReader:
    """A slide held in memory, with the SlideReader interface (levels by 2x striding), for the
    thumbnail and tissue tests; out-of-slide reads are white, as the interface says."""

    def __init__(self, rgb: np.ndarray, levels: int = 1):
        self.levels = [rgb[:: 2**k, :: 2**k] for k in range(levels)]
        self.dimensions = [(a.shape[1], a.shape[0]) for a in self.levels]
        self.downsamples = [float(2**k) for k in range(levels)]
        self.mpp = 0.25

    def read(self, level, x, y, w, h):
        a = self.levels[level]
        out = np.full((h, w, 3), 255, np.uint8)
        ys, xs = slice(max(0, y), min(a.shape[0], y + h)), slice(max(0, x), min(a.shape[1], x + w))
        part = a[ys, xs]
        out[ys.start - y:ys.start - y + part.shape[0], xs.start - x:xs.start - x + part.shape[1]] = part
        return out


def discs(shape, centres, r) -> np.ndarray:
    """Instance labels of discs of radius r at (y, x) centres (later ones drawn over earlier ones)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


def job_for(width, height, block, halo) -> SlideJob:
    return SlideJob(model_path="m", backend="torch", device=None, slide_path="s", out="o", key="k", level=0, downsample=1.0,
                    mpp=None, width=width, height=height, block=block, halo=halo, chunk=32, scale=1.0, tta=1, threshold=0.5,
                    tile=128, overlap=0.25, batch_size=2, instances=True, probability=False, gzip=False,
                    blocks=tuple(range(math.ceil(width / block) * math.ceil(height / block))))


def blockwise_labels(prob: np.ndarray, block: int, halo: int, diameter=None, instances=True) -> tuple[np.ndarray, list]:
    """The engine's block loop and assembly on an in-memory probability map: per block, the read
    region's objects its core owns (block_objects) and its spill; then paint_tile over the whole map."""
    h, w = prob.shape
    job = job_for(w, h, block, halo)
    results, counts = {}, []
    for i in job.blocks:
        x0, y0, x1, y1 = job.read_region(i)
        res = block_objects(prob[None, y0:y1, x0:x1], (x0, y0), job.core(i), (w, h), 0.5, diameter, instances)
        results[i] = res
        counts.append(res["table"].shape[0])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local = np.zeros((h, w), np.uint32)
    spills, cores = [], []
    for i, res in results.items():
        x0, y0, x1, y1 = job.read_region(i)
        cx0, cy0, cx1, cy1 = job.core(i)
        local[cy0:cy1, cx0:cx1] = res["labels"][cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        cores.append((job.core(i), int(offsets[i])))
        sy, sx, sid = spill(res["labels"], (x0, y0), job.core(i))
        spills.append((sy, sx, sid, int(offsets[i])))
    return paint_tile(0, 0, h, w, local, cores, spills), [results[i]["table"] for i in job.blocks]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label maps hold the same objects (the same pixel sets), whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# --------------------------------------------------------------------------------------------
# pure parts


def test_histogram_percentiles_equal_numpy_on_the_pixels():
    rng = np.random.default_rng(0)
    for pixels in (rng.integers(0, 256, 1001), rng.integers(100, 103, 7), np.array([5]), np.array([0, 255])):
        hist = np.bincount(pixels, minlength=256)
        got = histogram_percentiles(hist, (1.0, 50.0, 99.8))
        want = np.percentile(pixels / 255.0, (1.0, 50.0, 99.8))
        assert np.allclose(got, want, atol=1e-12), (got, want)
    # by hand: values 0, 0, 255 -> the 50th percentile is the 2nd of 3 sorted (0), the 75th halfway to 1
    assert histogram_percentiles(np.bincount([0, 0, 255], minlength=256), (50, 75)) == (0.0, 0.5)


def test_owner_cell_gives_every_centroid_one_core():
    # pixel index 127 is in core 0 (0..127), 127.5 rounds to pixel 128: core 1; -0.5 to pixel 0
    assert owner_cell(np.array([0.0, 127.0, 127.49, 127.5, 255.99, -0.5]), 128).tolist() == [0, 0, 0, 1, 2, 0]


def test_read_region_is_the_core_widened_by_the_halo_and_clipped():
    job = job_for(300, 200, 128, 32)
    assert (job.rows, job.cols, job.n_blocks) == (2, 3, 6)
    assert job.core(0) == (0, 0, 128, 128) and job.read_region(0) == (0, 0, 160, 160)
    assert job.core(4) == (128, 128, 256, 200) and job.read_region(4) == (96, 96, 288, 200)
    assert job.core(5) == (256, 128, 300, 200) and job.read_region(5) == (224, 96, 300, 200)


def test_object_across_a_seam_keeps_one_id_and_matches_the_whole_image():
    """Discs on the seams (x = 128, y = 128), on the corner where four cores meet, touching pairs
    across a seam: block-wise objects equal whole-image objects, none duplicated, none cut."""
    shape = (256, 384)
    centres = [(128, 128), (60, 128), (200, 119), (200, 136), (30, 30), (240, 370), (128, 256), (121, 300)]
    truth = discs(shape, centres, 9)
    prob = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    whole = split_instances(prob, 0.5, diameter=18.0)
    assert whole.max() == len(centres)  # the touching pair is split on the whole image
    for block in (128, 256):
        lab, tables = blockwise_labels(prob, block, halo=32, diameter=18.0)
        assert same_partition(lab, whole), block
        ids = np.concatenate([t[:, 0] + k * 1000 for k, t in enumerate(tables)])
        assert sum(len(t) for t in tables) == len(centres) == len(np.unique(lab)) - 1 == len(np.unique(ids))
        cy = np.concatenate([t[:, 2] for t in tables])
        cx = np.concatenate([t[:, 3] for t in tables])
        found = sorted(zip(np.round(cy).astype(int), np.round(cx).astype(int)))
        assert found == sorted(centres)  # every object once, centroid at its disc's centre


def test_block_keeps_objects_by_centroid_and_reports_cut_ones():
    # a 100 px read region at origin (100, 0) of a 400 x 100 slide, core x 120..180
    prob = np.zeros((100, 100), np.float32)
    prob[40:50, 10:18] = 0.9  # centroid x = 100 + 13.5 -> pixel 114: left of the core, dropped
    prob[40:50, 25:35] = 0.9  # centroid x = 129.5 -> pixel 130: kept
    prob[10:20, 70:80] = 0.9  # centroid x = 174.5 -> pixel 175 (< 180): kept
    prob[60:70, 75:100] = 0.9  # centroid x = 187, touches the read region's right edge inside the slide: dropped
    prob[80:90, 50:100] = 0.9  # centroid x = 174.5: kept, but cut by the read edge (x = 200 < 400)
    res = block_objects(prob[None], (100, 0), (120, 0, 180, 100), (400, 100), 0.5, 10.0, instances=False)
    t = res["table"]
    assert t[:, 0].tolist() == [1, 2, 3] and res["cut"] == 1  # numbered in label (scan) order
    assert t[:, 3].tolist() == [174.5, 129.5, 174.5] and t[:, 2].tolist() == [14.5, 44.5, 84.5]
    assert t[:, 1].tolist() == [100, 100, 500]
    assert tuple(t[1, 4:8]) == (40, 125, 50, 135)  # bbox in slide px, max exclusive
    assert set(np.unique(res["labels"])) == {0, 1, 2, 3}
    sy, sx, sid = spill(res["labels"], (100, 0), (120, 0, 180, 100))
    assert set(sid.tolist()) == {3} and sx.min() == 180 and len(sid) == 10 * 20  # object 3's part right of the core


def test_empty_probability_gives_no_objects():
    res = block_objects(np.zeros((1, 64, 64), np.float32), (0, 0), (0, 0, 64, 64), (64, 64), 0.5, None)
    assert res["table"].shape == (0, 9) and not res["labels"].any() and res["cut"] == 0


def test_paint_tile_gives_a_contested_pixel_to_its_core_owner():
    local = np.zeros((4, 8), np.uint32)
    local[:, :4] = 1  # block 0's object 1 fills its core (x < 4)
    cores = [((0, 0, 4, 4), 0), ((4, 0, 8, 4), 1)]
    # block 0's object spills to x = 4, 5; block 1's object (offset 1 -> id 2) spills onto x = 3
    spills = [(np.array([0, 0]), np.array([4, 5]), np.array([1, 1], np.uint32), 0),
              (np.array([0, 1]), np.array([3, 3]), np.array([1, 1], np.uint32), 1)]
    out = paint_tile(0, 0, 4, 8, local, cores, spills)
    assert out[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]  # x = 3 stays with block 0's own object
    # a window at (y, x) = (0, 2) of 2 x 4
    out = paint_tile(0, 2, 2, 4, local[:2, 2:6], cores, spills)
    assert out.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


# --------------------------------------------------------------------------------------------
# tissue


def pinkish(shape, seed=0) -> np.ndarray:
    """H&E-like tissue: pink with purple nuclei-sized blobs, saturation 0.3-0.6."""
    rng = np.random.default_rng(seed)
    img = np.empty((*shape, 3), np.uint8)
    img[...] = (230, 150, 190)
    for _ in range(shape[0] * shape[1] // 400):
        y, x = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
        img[y:y + 6, x:x + 6] = (120, 60, 150)
    return img


def test_tissue_mask_skips_white_glass_fills_holes_and_drops_specks():
    img = np.full((400, 600, 3), 245, np.uint8)
    img[50:350, 50:300] = pinkish((300, 250))
    img[150:160, 150:160] = 245  # a small hole (lumen) inside the tissue
    img[380:382, 500:502] = (120, 60, 150)  # a speck of dust on the glass
    mask, info = tissue_from_rgb(img)
    assert info["channel"] == "saturation"
    assert mask[50:350, 50:300].all()  # hole filled
    assert not mask[:, 320:].any() and not mask[:40].any()  # glass and speck
    assert 0.30 < info["tissue_fraction"] < 0.33  # 300 x 250 of 400 x 600 = 0.3125


def test_tissue_mask_of_an_empty_slide_is_empty():
    for value in (255, 240):
        mask, info = tissue_from_rgb(np.full((64, 64, 3), value, np.uint8))
        assert not mask.any() and info["tissue_fraction"] == 0.0
    noisy = np.clip(np.random.default_rng(1).normal(245, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert not tissue_from_rgb(noisy)[0].any()  # glass noise stays under the saturation floor


def test_tissue_mask_of_all_tissue_is_all_tissue():
    mask, _ = tissue_from_rgb(pinkish((200, 200)))
    assert mask.all()


def test_fluorescence_slide_uses_brightness():
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:80, 20:80] = 90
    mask, info = tissue_from_rgb(img)
    assert info["channel"] == "brightness" and mask[20:80, 20:80].all() and mask.sum() == 3600


def test_thumbnail_is_the_block_mean_of_the_coarsest_level_that_is_large_enough():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 500, 3)).astype(np.uint8)
    reader = ArrayReader(rgb, levels=3)  # 500, 250, 125 px wide
    th, ds = thumbnail(reader, max_side=200)  # level 1 (250 >= 200), then a factor 2
    assert ds == 4.0 and th.shape == (75, 125, 3)
    lvl1 = rgb[::2, ::2].astype(np.float64)
    assert np.array_equal(th[10, 20], np.round(lvl1[20:22, 40:42].mean(axis=(0, 1))).astype(np.uint8))
    th, ds = thumbnail(reader, max_side=1000)  # no level is that large: level 0 as it is
    assert ds == 1.0 and np.array_equal(th, rgb)


def test_region_has_tissue_and_sample_points():
    mask = np.zeros((10, 10), bool)
    mask[5, 5] = True
    assert region_has_tissue(mask, 8.0, 40, 40, 48, 48) and region_has_tissue(mask, 8.0, 48, 48, 64, 64)  # margin 1
    assert not region_has_tissue(mask, 8.0, 0, 0, 24, 24)
    assert sample_points(mask, (80, 80), 5) == [(0.55, 0.55)]
    assert sample_points(np.zeros((4, 4), bool), (4, 4), 3) == []
    assert sample_points(None, (100, 100), 4) == [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]


# --------------------------------------------------------------------------------------------
# slide-level statistics in the preprocessing


def test_model_input_takes_fixed_statistics():
    from qmed.config import resolve_config
    from qmed.data.batches import model_input

    cfg = resolve_config("tiny", None, {"data": {"normalize": "percentile"}})
    img = np.linspace(0, 1, 300, dtype=np.float32).reshape(10, 10, 3)
    own = model_input(img, cfg)
    assert np.allclose(own, model_input(img, cfg, {"intensity": tuple(np.percentile(img, cfg.data.norm_percentiles))}))
    fixed = model_input(img, cfg, {"intensity": (0.25, 0.75)})
    assert fixed[0, 0, 0] == 0.0 and fixed[-1, -1, -1] == 1.0 and np.isclose(fixed[5, 0, 0], (img[5, 0, 0] - 0.25) / 0.5)


def test_reinhard_with_the_images_own_statistics_as_source_is_unchanged():
    from qmed.config import resolve_config
    from qmed.data.batches import model_input
    from qmed.data.stain import pooled_lab_stats

    target = [60.0, 20.0, -10.0, 12.0, 6.0, 5.0]
    cfg = resolve_config("tiny", None, {"data": {"normalize": "reinhard", "stain_target": target}})
    img = pinkish((32, 32)).astype(np.float32) / 255
    own = pooled_lab_stats([img])
    assert np.allclose(model_input(img, cfg), model_input(img, cfg, {"lab": own}), atol=1e-4)
    # pooled over two halves is the whole's
    assert np.allclose(pooled_lab_stats([img[:16], img[16:]]), own, atol=1e-6)
