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
from qmed.segment.slide import SlideJob, block_objects, histogram_percentiles, paint_tile, spill

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
        out[ys.start - y : ys.start - y + part.shape[0], xs.start - x : xs.start - x + part.shape[1]] = part
        return out


def discs(shape, centres, r) -> np.ndarray:
    """Instance labels of discs of radius r at (y, x) centres (later ones drawn over earlier ones)."""
    lab = np.zeros(shape, np.int32)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = dy**2 + dx**2 <= r * r
    for k, (cy, cx) in enumerate(centres, 1):
        y0, x0 = cy - r, cx - r
        ys, xs = slice(max(0, y0), min(shape[0], cy + r + 1)), slice(max(0, x0), min(shape[1], cx + r + 1))
        d = disc[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        lab[ys, xs][d] = k
    return lab


def job_for(width, height, block, halo) -> SlideJob:
    return SlideJob(
        model_path="m",
        backend="torch",
        device=None,
        slide_path="s",
        out="o",
        key="k",
        level=0,
        downsample=1.0,
        mpp=None,
        width=width,
        height=height,
        block=block,
        halo=halo,
        chunk=32,
        scale=1.0,
        tta=1,
        threshold=0.5,
        tile=128,
        overlap=0.25,
        batch_size=2,
        instances=True,
        probability=False,
        gzip=False,
        blocks=tuple(range(math.ceil(width / block) * math.ceil(height / block))),
    )


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
        local[cy0:cy1, cx0:cx1] = res["labels"][cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
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


def test_a_centroid_on_the_seam_has_one_owner():
    """Two-pixel objects whose centroids lie at x = 127.0 (pixel 127: core 0) and 127.5 (rounds to
    pixel 128: core 1), seen by both blocks of a 256-wide slide in cores of 128 with a halo of 8."""
    prob = np.zeros((1, 6, 256), np.float32)
    prob[0, 1, 127] = prob[0, 2, 127] = 0.9  # centroid x = 127.0
    prob[0, 4, 127:129] = 0.9  # centroid x = 127.5
    kept = []
    for core, origin in (((0, 0, 128, 6), (0, 0)), ((128, 0, 256, 6), (120, 0))):
        x0, x1 = origin[0], min(256, core[2] + 8)
        res = block_objects(prob[:, :, x0:x1], origin, core, (256, 6), 0.5, None, instances=False)
        kept.append(res["table"][:, 3].tolist())
    assert kept == [[127.0], [127.5]]


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
    spills = [
        (np.array([0, 0]), np.array([4, 5]), np.array([1, 1], np.uint32), 0),
        (np.array([0, 1]), np.array([3, 3]), np.array([1, 1], np.uint32), 1),
    ]
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
        img[y : y + 6, x : x + 6] = (120, 60, 150)
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
    assert (
        fixed[0, 0, 0] == 0.0 and fixed[-1, -1, -1] == 1.0 and np.isclose(fixed[5, 0, 0], (img[5, 0, 0] - 0.25) / 0.5)
    )


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


# --------------------------------------------------------------------------------------------
# end to end, on small pyramidal TIFF slides

PINK, PURPLE, GLASS = (236, 196, 218), (70, 45, 130), (246, 246, 246)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tests' small windows gain nothing from two, and lose a lot on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tissue_image(h: int, w: int, seed: int = 0, glass_from: int | None = None, r: int = 6, n: int | None = None):
    """Pink tissue with purple nuclei (discs of radius r, some touching) and, from column `glass_from`
    on, white glass: (rgb uint8, truth labels)."""
    rng = np.random.default_rng(seed)
    tissue_w = w if glass_from is None else glass_from
    n = n or h * tissue_w // 900
    centres = list(zip(rng.integers(r, h - r, n), rng.integers(r, max(r + 1, tissue_w - r), n)))
    truth = discs((h, w), centres, r)
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[...] = PINK
    rgb[truth > 0] = PURPLE
    if glass_from is not None:
        rgb[:, glass_from:] = GLASS
    noise = rng.integers(-4, 5, rgb.shape)
    return np.clip(rgb.astype(int) + noise, 0, 255).astype(np.uint8), truth


def write_slide(path, rgb, mpp=0.25, min_size=512):
    from qmed.io.pyramid import write_pyramid

    write_pyramid(
        path,
        rgb.shape,
        np.uint8,
        lambda y, x, h, w: rgb[y : y + h, x : x + w],
        tile=256,
        kind="image",
        mpp=mpp,
        min_size=min_size,
        compression="zlib",
    )
    return path


def dark_nuclei(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: dark pixels are nuclei. Pointwise, so every window arrangement gives the same map."""
    return torch.sigmoid(20 * (0.55 - x.mean(dim=1, keepdim=True)))


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    from qmed.config import load_preset
    from qmed.segment.slide import Predictor

    cfg = load_preset("tiny")
    cfg.predict.tile, cfg.predict.object_diameter = 256, 12.0
    model = tmp_path_factory.mktemp("model") / "stand_in.bin"
    model.write_bytes(b"dark pixels are nuclei")  # the job's key hashes the model file
    return model, Predictor(dark_nuclei, cfg)


@pytest.fixture(scope="module")
def slide_1536(tmp_path_factory):
    rgb, truth = tissue_image(1536, 1536, seed=3, glass_from=1200)
    return write_slide(tmp_path_factory.mktemp("slide") / "s1536.ome.tif", rgb), truth


def read_level0(path):
    import tifffile

    return tifffile.imread(path)


def objects_csv(path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_block_sizes_1024_and_2048_give_the_same_objects(stand_in, slide_1536, tmp_path):
    """The same slide in 4 blocks of 1024 and in one of 2048: the same foreground, the same count, and
    one-to-one the same objects. Not always pixel for pixel: skimage's watershed breaks a tie between
    two fronts by the order pixels entered its queue, which another crop changes, so a touching pair's
    border may move by a pixel or two (anywhere, not only at seams)."""
    from qmed.evaluate.metrics import match_objects

    model, pred = stand_in
    slide, truth = slide_1536
    metas, labels = {}, {}
    for block in (1024, 2048):
        metas[block] = predict_slide_quiet(model, slide, tmp_path / f"b{block}", pred, block=block, instances=True)
        labels[block] = read_level0(tmp_path / f"b{block}" / "labels.ome.tif")
    assert metas[1024]["counts"]["blocks_run"] == 4 and metas[2048]["counts"]["blocks_run"] == 1
    a, b = labels[1024], labels[2048]
    n = len(np.unique(a)) - 1
    assert n == metas[1024]["counts"]["objects"] == metas[2048]["counts"]["objects"] == len(np.unique(b)) - 1 > 1000
    assert np.array_equal(a > 0, b > 0)
    assert len(match_objects(a, b, 0.5)) == n  # every object has its twin
    assert len(match_objects(a, b, 0.9)) >= 0.995 * n  # ... and all but a tie or two are pixel for pixel or nearly
    assert np.array_equal(np.unique(a), np.arange(n + 1))  # ids 1..n, each once
    ra = objects_csv(tmp_path / "b1024" / "objects.csv")
    assert [r["id"] for r in ra] == list(range(1, n + 1))
    assert sum(r["area"] for r in ra) == (a > 0).sum()  # every pixel of the label map belongs to one row's object


def window_context(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network whose every output depends on its whole window, as SCSE's channel squeeze
    makes a real one: dark pixels are nuclei, shifted by the window's mean brightness."""
    g = x.mean(dim=1, keepdim=True)
    return torch.sigmoid(20 * (0.55 - g) + 30 * (g.mean(dim=(2, 3), keepdim=True) - 0.75))


@pytest.mark.parametrize("block, scale", [(256, 1.0), (384, 1.0), (1024, 1.0), (256, 0.8), (256, 1.3)])
def test_blocks_blend_the_whole_images_windows(stand_in, tmp_path, block, scale):
    """Every tissue block's probabilities over its read region equal the whole image's through
    predict_at_scale (the windows of one grid, blended), to float rounding, at any scale (a block
    resizes its crop with cv2.resize's own weights for the whole level). A block's own window grid
    (Predictor.maps on the region) differs by far more: the point of the grid."""
    from qmed.segment.predict import predict_at_scale
    from qmed.segment.slide import Predictor, block_maps, plan_slide, run_block, window_plan

    model, pred = stand_in
    pred = Predictor(window_context, pred.cfg)
    rgb, _ = tissue_image(700, 900, seed=7, glass_from=620)
    slide = write_slide(tmp_path / "c.ome.tif", rgb)
    job = plan_slide(
        model,
        slide,
        tmp_path / "o",
        block=block,
        halo=32,
        predictor=pred,
        **({} if scale == 1.0 else {"mpp": 0.25 / scale}),
    )
    assert job.scale == pytest.approx(scale) and 0 < len(job.blocks) <= job.n_blocks
    whole = predict_at_scale(
        window_context,
        pred.model_input(rgb, job.stats()),
        job.scale,
        tile=job.tile,
        overlap=job.overlap,
        batch_size=2,
        amp=False,
        channels=True,
    )
    plan = window_plan(job)
    assert sorted(w for ws in plan.owned.values() for w in ws) == sorted(
        set(w for ws in plan.owned.values() for w in ws)
    )
    tol = 1e-5
    worst_local = 0.0
    for i in job.blocks:
        x0, y0, x1, y1 = job.read_region(i)
        got = block_maps(job, i, pred)
        assert got.shape == (1, y1 - y0, x1 - x0)
        assert np.abs(got - whole[:, y0:y1, x0:x1]).max() < tol, i
        worst_local = max(worst_local, float(np.abs(pred.maps(rgb[y0:y1, x0:x1], job) - whole[:, y0:y1, x0:x1]).max()))
        run_block(job, i, pred)
    if block < 1024:
        assert worst_local > 0.1
    assert not list((tmp_path / "o" / "blocks").glob("*.windows.npy"))  # every stored sum was released


@pytest.mark.parametrize(
    "n_src, n_dst, mode",
    [
        (50, 40, "area"),
        (100, 50, "area"),
        (37, 29, "area"),
        (50, 65, "linear"),
        (40, 50, "cubic"),
        (41, 29, "cubic"),
        (7, 7, "linear"),
    ],
)
def test_resize_matrix_is_cv2_resize_and_crops_agree(n_src, n_dst, mode):
    import cv2

    from qmed.segment.slide import resize_crop, resize_matrix

    img = np.random.default_rng(n_src).random((n_src, n_src + 3, 2)).astype(np.float32)
    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}[mode]
    ref = cv2.resize(img, (round((n_src + 3) * n_dst / n_src), n_dst), interpolation=flag)
    ax = resize_matrix(n_src + 3, ref.shape[1], 0, ref.shape[1], 0, n_src + 3, mode)
    assert np.abs(resize_crop(img, resize_matrix(n_src, n_dst, 0, n_dst, 0, n_src, mode), ax) - ref).max() < 1e-5
    # rows 3..n_dst-2 of the resized image from source rows 2.. only, when they do not reach row 0 or 1
    if n_dst > 8:
        ay = resize_matrix(n_src, n_dst, 4, n_dst - 2, 2, n_src, mode)
        assert np.abs(resize_crop(img[2:], ay, ax) - ref[4 : n_dst - 2]).max() < 1e-5
    # by hand: 4 px to 2 by area averages pairs; 2 px to 4 linearly puts 0.25 / 0.75 weights
    assert np.allclose(resize_matrix(4, 2, 0, 2, 0, 4, "area").toarray(), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    assert np.allclose(
        resize_matrix(2, 4, 0, 4, 0, 2, "linear").toarray(), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    )


def predict_slide_quiet(model, slide, out, pred, **kw):
    from qmed.segment.slide import predict_slide

    return predict_slide(model, slide, out, predictor=pred, quiet=True, **kw)


def test_tissue_mask_skips_the_glass_and_no_tissue_mask_runs_it(stand_in, tmp_path):
    """A 1024 x 768 slide, tissue in x < 400, glass right of it; blocks of 256: the blocks whose
    cores lie past x = 512 (+ one thumbnail px of margin) never run, have no marker, and read 0 in the
    mask; the objects are those of --no-tissue-mask (the glass has none)."""
    model, pred = stand_in
    rgb, _ = tissue_image(768, 1024, seed=5, glass_from=400)
    slide = write_slide(tmp_path / "half.ome.tif", rgb)
    meta = predict_slide_quiet(model, slide, tmp_path / "t", pred, block=256, halo=32, keep_blocks=True)
    assert meta["counts"]["blocks"] == 12 and meta["counts"]["blocks_run"] == 6  # columns 0 and 1 of 4, 3 rows
    assert meta["tissue"]["channel"] == "saturation" and 0.35 < meta["tissue"]["tissue_fraction"] < 0.42
    markers = [p.stem for p in (tmp_path / "t" / "blocks").glob("*.json") if not p.stem.endswith(".windows")]
    assert sorted(markers) == [f"{i:06d}" for i in (0, 1, 4, 5, 8, 9)]
    mask = read_level0(tmp_path / "t" / "mask.ome.tif")
    assert not mask[:, 512:].any() and mask[:, :400].any()
    off = predict_slide_quiet(model, slide, tmp_path / "all", pred, block=256, halo=32, tissue=False)
    assert off["counts"]["blocks_run"] == 12 and off["tissue"]["used"] is False
    assert objects_csv(tmp_path / "t" / "objects.csv") == objects_csv(tmp_path / "all" / "objects.csv")
    from PIL import Image

    thumb = np.asarray(Image.open(tmp_path / "t" / "tissue.png"))
    assert thumb.shape == (768, 1024, 3)  # a slide this small is its own thumbnail


def test_an_empty_slide_runs_no_block_and_writes_empty_outputs(stand_in, tmp_path):
    model, pred = stand_in
    slide = write_slide(tmp_path / "glass.ome.tif", np.full((512, 640, 3), 246, np.uint8))
    meta = predict_slide_quiet(model, slide, tmp_path / "e", pred, block=256, instances=True)
    assert meta["counts"] == {
        "blocks": 6,
        "blocks_run": 0,
        "objects": 0,
        "cut_objects": 0,
        "windows": 0,
        "pixels_run": 0,
        "pixels_read": 0,
    }
    assert (
        not read_level0(tmp_path / "e" / "labels.ome.tif").any()
        and not read_level0(tmp_path / "e" / "mask.ome.tif").any()
    )
    assert objects_csv(tmp_path / "e" / "objects.csv") == []
    assert json.loads((tmp_path / "e" / "objects.geojson").read_text())["features"] == []


def test_mpp_picks_the_level_and_coordinates_stay_level_0(stand_in, tmp_path):
    """A 0.25 um/px slide with levels of 1024, 512 and 256 px: --mpp 0.5 reads level 1 as it is, --mpp
    0.6 reads level 1 resized by 0.5/0.6, --level 2 reads level 2; objects.csv is in level-0 px."""
    model, pred = stand_in
    rgb, truth = tissue_image(1024, 1024, seed=7, r=10, n=300)
    slide = write_slide(tmp_path / "lv.ome.tif", rgb, min_size=256)
    m0 = predict_slide_quiet(model, slide, tmp_path / "l0", pred, block=512, instances=False)
    m1 = predict_slide_quiet(model, slide, tmp_path / "l1", pred, block=512, instances=False, mpp=0.5)
    m6 = predict_slide_quiet(model, slide, tmp_path / "l6", pred, block=512, instances=False, mpp=0.6)
    m2 = predict_slide_quiet(model, slide, tmp_path / "l2", pred, block=256, instances=False, level=2)
    assert (m0["level"], m0["mpp"], m0["downsample"], m0["size"], m0["scale"]) == (0, 0.25, 1.0, [1024, 1024], 1.0)
    assert (m1["level"], m1["mpp"], m1["downsample"], m1["size"], m1["scale"]) == (1, 0.5, 2.0, [512, 512], 1.0)
    assert (m6["level"], m6["mpp"]) == (1, 0.5) and abs(m6["scale"] - 0.5 / 0.6) < 1e-9
    assert (m2["level"], m2["mpp"], m2["downsample"], m2["size"]) == (2, 1.0, 4.0, [256, 256])
    assert read_level0(tmp_path / "l1" / "mask.ome.tif").shape == (512, 512)
    r0, r1 = objects_csv(tmp_path / "l0" / "objects.csv"), objects_csv(tmp_path / "l1" / "objects.csv")
    assert len(r0) == len(r1) > 100
    from scipy.spatial import cKDTree

    c0 = np.array([(r["centroid_y"], r["centroid_x"]) for r in r0])
    c1 = np.array([(r["centroid_y"], r["centroid_x"]) for r in r1])
    dist, _ = cKDTree(c1).query(c0)
    assert dist.max() < 1.0  # level-1 centroids mapped back to level-0 px: the same points, to a fraction of a pixel
    a0 = np.array(sorted(r["area"] for r in r0))
    a1 = np.array(sorted(r["area"] for r in r1))
    assert abs(a1.sum() / a0.sum() - 1) < 0.1  # areas in level-0 px (level-1 px x 4)


def test_geojson_is_qupath_detections_one_per_labelled_object(stand_in, slide_1536, tmp_path):
    from shapely.geometry import Polygon

    model, pred = stand_in
    slide, _ = slide_1536
    meta = predict_slide_quiet(model, slide, tmp_path / "g", pred, block=1024, instances=True, gzip=True)
    import gzip

    doc = json.loads(gzip.open(tmp_path / "g" / "objects.geojson.gz", "rt").read())
    labels = read_level0(tmp_path / "g" / "labels.ome.tif")
    n = len(np.unique(labels)) - 1
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == n == meta["counts"]["objects"]
    rows = {int(r["id"]): r for r in objects_csv(tmp_path / "g" / "objects.csv")}
    for f in doc["features"][:: max(1, n // 200)]:
        p = f["properties"]
        assert p["objectType"] == "detection" and p["classification"]["name"] == "Nucleus"
        assert set(p["measurements"]) >= {"area_px", "mean_probability"} and "area_um2" in p["measurements"]
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4
        poly = Polygon(ring)
        assert poly.is_valid
        oid = int(p["name"])
        row = rows[oid]
        assert abs(poly.area - row["area"]) <= 0.25 * row["area"] + 4  # pixel edges vs pixel count
        assert poly.contains(poly.representative_point())
        ys, xs = np.nonzero(labels == oid)
        assert abs(poly.centroid.x - (xs.mean() + 0.5)) < 1.5 and abs(poly.centroid.y - (ys.mean() + 0.5)) < 1.5


def test_out_folder_rules(stand_in, tmp_path):
    """Same job: the finished result is returned, nothing recomputed. Other settings: refused without
    --force, replaced with it. A folder qmed did not write: refused even with --force. Output inside
    the slide's folder is fine, over the slide itself is not."""
    from qmed.errors import QmedInputError

    model, pred = stand_in
    rgb, _ = tissue_image(512, 512, seed=2)
    slide = write_slide(tmp_path / "small.ome.tif", rgb)
    out = tmp_path / "o"
    first = predict_slide_quiet(model, slide, out, pred, block=256)
    again = predict_slide_quiet(model, slide, out, pred, block=256)
    assert again == first  # returned from predict.json
    with pytest.raises(QmedInputError, match="another model, slide or settings.*--force"):
        predict_slide_quiet(model, slide, out, pred, block=512)
    other = predict_slide_quiet(model, slide, out, pred, block=512, force=True)
    assert other["block"] == 512 and other["key"] != first["key"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(QmedInputError):
            predict_slide_quiet(model, slide, mine, pred, block=256, force=force)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    with pytest.raises(QmedInputError, match="input"):
        predict_slide_quiet(model, slide, slide, pred, force=True)
    assert slide.is_file()


def test_block_and_halo_are_checked(stand_in, tmp_path):
    from qmed.errors import QmedInputError

    model, pred = stand_in
    slide = write_slide(tmp_path / "x.ome.tif", tissue_image(256, 256)[0])
    for kw in ({"block": 100}, {"block": 250}, {"block": 256, "halo": 256}, {"block": 256, "halo": -1}):
        with pytest.raises(QmedInputError):
            predict_slide_quiet(model, slide, tmp_path / "o", pred, **kw)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# the real path: a tiny untrained network, the CLI, kill -9 and resume, ONNX


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny-preset checkpoint straight from initialisation, with a recorded object diameter (so the
    plan measures none) and 128 px windows."""
    from qmed.config import load_preset
    from qmed.io.checkpoints import save
    from qmed.models.segmenter import build

    torch.manual_seed(0)
    cfg = load_preset("tiny")
    cfg.predict.object_diameter = 12.0
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save(path, {"config": cfg.model_dump(), "model": build(cfg.model, pretrained=False).state_dict()})
    return path


def qmed_cli(*args, timeout=600):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "qmed.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def outputs_equal(a, b) -> None:
    for name in ("objects.csv", "objects.geojson"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name in ("mask.ome.tif", "labels.ome.tif"):
        assert np.array_equal(read_level0(a / name), read_level0(b / name)), name


def test_kill_mid_slide_then_resume_gives_the_uninterrupted_outputs(tiny_model, tmp_path):
    """`qmed predict` on a 768 x 768 slide in 9 blocks, killed with SIGKILL after its first block; the
    same command again finishes the other blocks only, and the outputs equal those of a run that was
    never interrupted. Nothing hidden is left behind, in OUT or beside it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    rgb, _ = tissue_image(768, 768, seed=11)
    slide = write_slide(tmp_path / "k.ome.tif", rgb)
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = [
        "predict",
        "--model",
        tiny_model,
        "--input",
        slide,
        "--block",
        "256",
        "--halo",
        "32",
        "--instances",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmed.cli", *map(str, args), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def markers():  # NNNNNN.json; not an atomic write's hidden temporary (.NNNNNN.qmed-tmp-....json)
        return [p for p in (out / "blocks").glob("[0-9]*.json") if not p.stem.endswith(".windows")]

    deadline = time.time() + 300
    while time.time() < deadline and not markers():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(markers())
    assert 1 <= done_before < 9 and not (out / "predict.json").exists()
    res = qmed_cli(*args, "--out", out)
    assert res.returncode == 0, res.stdout + res.stderr
    meta = json.loads((out / "predict.json").read_text())
    assert meta["seconds"]["blocks_this_run"] == 9 - done_before
    res = qmed_cli(*args, "--out", ref)
    assert res.returncode == 0, res.stdout + res.stderr
    outputs_equal(out, ref)
    assert meta["counts"] == json.loads((ref / "predict.json").read_text())["counts"]
    hidden = [
        p.name
        for p in list(out.iterdir()) + list(tmp_path.iterdir())
        if p.name.startswith(".") and p.name != ".qmed-output.json"
    ]
    assert hidden == [] and not (out / "blocks").exists()


def test_truncated_slide_is_one_line_and_no_output(tiny_model, tmp_path):
    rgb, _ = tissue_image(1024, 1024, seed=1)
    slide = write_slide(tmp_path / "cut.ome.tif", rgb)
    data = slide.read_bytes()
    slide.write_bytes(data[: len(data) // 2])
    res = qmed_cli("predict", "--model", tiny_model, "--input", slide, "--out", tmp_path / "o", "--quiet")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "cut.ome.tif" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_onnx_backend_runs_the_same_path(tiny_model, tmp_path):
    """The exported model through ONNX Runtime gives the torch path's objects (the edge channel takes
    each window's scale in the ONNX graph, the slide's in torch: near-identical maps, not identical)."""
    pytest.importorskip("onnxruntime")
    from qmed.evaluate.metrics import object_detection
    from qmed.segment.export import export_onnx
    from qmed.segment.slide import predict_slide

    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(tiny_model, onnx_path)
    rgb, _ = tissue_image(512, 512, seed=4)
    slide = write_slide(tmp_path / "o.ome.tif", rgb)
    m_onnx = predict_slide(onnx_path, slide, tmp_path / "onnx", block=256, halo=32, instances=True, quiet=True)
    m_torch = predict_slide(tiny_model, slide, tmp_path / "torch", block=256, halo=32, instances=True, quiet=True)
    assert m_onnx["backend"] == "onnxruntime" and m_torch["backend"] == "torch"
    assert "per window" in m_onnx["statistics"]["sources"]["edge_scale"]
    a, b = read_level0(tmp_path / "onnx" / "labels.ome.tif"), read_level0(tmp_path / "torch" / "labels.ome.tif")
    assert a.max() > 0 and object_detection(a, b, 0.5)["f1"] > 0.8
