"""Whole-slide I/O (issue 42): reading slides, pyramidal OME-TIFF writing, QuPath GeoJSON, the mosaic builder.

Expected values are worked out by hand on tiny arrays: pyramid levels are every other pixel (labels) or 2x2
means (probabilities), polygons of pixel squares follow the pixel edges, and so on.
"""

import gzip
import json
import os
import pickle
import shutil
import tracemalloc

import numpy as np
import pytest
import tifffile
from PIL import Image
from shapely.geometry import Polygon

from qmed.data.mosaic import build_slide
from qmed.errors import QmedInputError
from qmed.io.geojson import GeoJSONWriter, label_polygons
from qmed.io.pyramid import level_shapes, write_pyramid
from qmed.io.slides import OpenSlideReader, TiffSlideReader, is_slide, open_slide, pick_level


def _tiles_of(arr):
    return lambda y, x, h, w: arr[y : y + h, x : x + w]


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _levels(path):
    with tifffile.TiffFile(path) as tif:
        return [lv.asarray() for lv in tif.series[0].levels]


def _write_rgb_slide(path, rgb, *, tile=16, min_size=16, mpp=0.25, compression="zlib"):
    write_pyramid(
        path,
        rgb.shape,
        np.uint8,
        _tiles_of(rgb),
        tile=tile,
        kind="image",
        mpp=mpp,
        min_size=min_size,
        compression=compression,
    )


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- pyramid writing


def test_level_shapes_halve_rounding_up_until_min_size():
    assert level_shapes(40, 24, 8) == [(40, 24), (20, 12), (10, 6), (5, 3)]
    assert level_shapes(8, 8, 8) == [(8, 8)]
    assert level_shapes(1000, 3, 512) == [(1000, 3), (500, 2)]


@pytest.mark.parametrize("h, w", [(40, 24), (33, 17), (5, 7)])
def test_label_pyramid_reads_back_equal_with_nearest_neighbour_levels(tmp_path, h, w):
    labels = np.arange(1, h * w + 1, dtype=np.uint32).reshape(h, w) * 1000  # every pixel its own id
    out = tmp_path / "labels.ome.tif"
    write_pyramid(out, (h, w), np.uint32, _tiles_of(labels), tile=16, kind="labels", min_size=8)
    levels = _levels(out)
    assert [lv.shape for lv in levels] == level_shapes(h, w, 8)
    for k, lv in enumerate(levels):
        assert lv.dtype == np.uint32
        np.testing.assert_array_equal(lv, labels[:: 2**k, :: 2**k])  # level k = every 2**k-th pixel
    assert _leftovers(tmp_path) == []


def test_label_pyramid_small_case_by_hand(tmp_path):
    labels = np.array([[1, 1, 2, 2, 3], [1, 1, 2, 2, 3], [4, 4, 0, 0, 5]], dtype=np.uint32)
    write_pyramid(tmp_path / "l.tif", labels.shape, np.uint32, _tiles_of(labels), tile=16, kind="labels", min_size=2)
    levels = _levels(tmp_path / "l.tif")
    np.testing.assert_array_equal(levels[1], [[1, 2, 3], [4, 0, 5]])
    np.testing.assert_array_equal(levels[2], [[1, 3]])
    assert len(levels) == 3


def test_probability_pyramid_takes_2x2_means_odd_edges_with_themselves(tmp_path):
    prob = (np.arange(9, dtype=np.float32).reshape(3, 3)) / 8
    write_pyramid(tmp_path / "p.tif", prob.shape, np.float32, _tiles_of(prob), tile=16, kind="probability", min_size=2)
    levels = _levels(tmp_path / "p.tif")
    # [[0 1 2] [3 4 5] [6 7 8]] / 8: means of (0,1,3,4), (2,2,5,5), (6,7,6,7), (8,8,8,8)
    np.testing.assert_allclose(levels[1], np.array([[2, 3.5], [6.5, 8]]) / 8, rtol=1e-6)
    assert len(levels) == 2


def test_tiles_are_read_once_each_row_by_row_and_memory_stays_at_a_few_tiles(tmp_path):
    import zarr  # noqa: F401  (imported before measuring: its module objects are not image data)

    h, w = 512, 8192  # level 0 of uint32 is 16 MB, one row of tiles 4 MB; a tile is 256 KB
    calls = []

    def read_tile(y, x, th, tw):
        calls.append((y, x))
        return np.full((th, tw), 1 + (y // 256) * 32 + x // 256, np.uint32)

    write_pyramid(
        tmp_path / "warm.tif", (32, 32), np.uint32, lambda y, x, th, tw: np.zeros((th, tw), np.uint32), tile=16
    )
    tracemalloc.start()
    write_pyramid(tmp_path / "big.tif", (h, w), np.uint32, read_tile, tile=256, kind="labels", maxworkers=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert calls == [(y, x) for y in range(0, h, 256) for x in range(0, w, 256)]
    assert peak < 3 * 2**20, f"peak {peak / 2**20:.1f} MB: more than a few tiles (a row of tiles is 4 MB)"
    levels = _levels(tmp_path / "big.tif")
    assert [lv.shape for lv in levels] == [(512, 8192), (256, 4096), (128, 2048), (64, 1024), (32, 512)]
    # level 4 pixel (r, c) is level 0's (16 r, 16 c): tile row 16r // 256, tile column 16c // 256
    assert levels[4][0, 0] == 1 and levels[4][31, 511] == 1 + 32 + 31 and levels[1][128, 128] == 1 + 32 + 1


def test_pyramid_is_atomic_a_failing_tile_leaves_the_old_file_and_no_temporaries(tmp_path):
    out = tmp_path / "mask.ome.tif"
    out.write_bytes(b"previous result")

    def read_tile(y, x, h, w):
        if y >= 32:
            raise RuntimeError("model crashed")
        return np.zeros((h, w), np.uint8)

    with pytest.raises(RuntimeError, match="model crashed"):
        write_pyramid(out, (64, 64), np.uint8, read_tile, tile=16, kind="mask", min_size=16)
    assert out.read_bytes() == b"previous result"
    assert _leftovers(tmp_path) == []


def test_pyramid_removes_a_killed_runs_leftovers(tmp_path):
    (tmp_path / ".m.tif.tmp").write_bytes(b"half a file")
    (tmp_path / ".m.tif.levels.tmp").mkdir()
    write_pyramid(
        tmp_path / "m.tif", (16, 16), np.uint8, lambda y, x, h, w: np.ones((h, w), np.uint8), tile=16, kind="mask"
    )
    assert _leftovers(tmp_path) == []


def test_pyramid_wrong_tile_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="returned shape"):
        write_pyramid(
            tmp_path / "x.tif",
            (32, 32),
            np.uint8,
            lambda y, x, h, w: np.zeros((16, 16), np.uint8),
            tile=32,
            kind="mask",
        )
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramid(tmp_path / "x.tif", (32, 32), np.uint8, _tiles_of(np.zeros((32, 32), np.uint8)), tile=24)


# ---------------------------------------------------------------- reading slides


def test_tiff_slide_metadata_and_regions(tmp_path):
    rgb = _rgb(100, 70)
    path = tmp_path / "slide.ome.tif"
    _write_rgb_slide(path, rgb, mpp=0.5)
    with open_slide(path) as r:
        assert isinstance(r, TiffSlideReader) and r.backend == "tifffile"
        assert r.dimensions == [(70, 100), (35, 50), (18, 25), (9, 13)]  # until the larger side <= 16
        assert r.downsamples == [1.0, 2.0, 70 / 18, 70 / 9]
        assert r.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(r.read(0, 0, 0, 70, 100), rgb)
        np.testing.assert_array_equal(r.read(0, 10, 20, 5, 3), rgb[20:23, 10:15])
        # level 1 = 2x2 means rounded half up; the first pixel by hand
        q = rgb[:2, :2].astype(int).sum(axis=(0, 1))
        np.testing.assert_array_equal(r.read(1, 0, 0, 1, 1)[0, 0], (q + 2) // 4)
        # outside the slide is white; a region half outside keeps the inside
        assert (r.read(0, 70, 100, 4, 4) == 255).all()
        part = r.read(0, -2, -1, 4, 3)
        assert (part[0] == 255).all() and (part[:, :2] == 255).all()
        np.testing.assert_array_equal(part[1:, 2:], rgb[:2, :2])
        assert r.read(0, 5, 5, 0, 0).shape == (0, 0, 3)


def test_gray_slide_reads_as_rgb(tmp_path):
    gray = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    write_pyramid(tmp_path / "g.tif", gray.shape, np.uint8, _tiles_of(gray), tile=16, kind="image")
    with open_slide(tmp_path / "g.tif") as r:
        region = r.read(0, 0, 0, 32, 32)
        assert region.shape == (32, 32, 3)
        np.testing.assert_array_equal(region[..., 1], gray)
        assert r.mpp is None  # written without a pixel size


def test_planar_ome_tiff_reads_as_rgb(tmp_path):
    planes = _rgb(40, 50, seed=6).transpose(2, 0, 1).copy()  # (3, H, W): samples stored plane by plane
    tifffile.imwrite(
        tmp_path / "planar.ome.tif",
        planes,
        photometric="rgb",
        planarconfig="separate",
        tile=(16, 16),
        metadata={"axes": "SYX"},
    )
    with open_slide(tmp_path / "planar.ome.tif") as r:
        assert r.dimensions == [(50, 40)]
        np.testing.assert_array_equal(r.read(0, 5, 6, 20, 10), planes.transpose(1, 2, 0)[6:16, 5:25])


def test_reader_pickles_small_and_reopens_lazily(tmp_path):
    rgb = _rgb(40, 40, seed=1)
    _write_rgb_slide(tmp_path / "s.tif", rgb)
    r = open_slide(tmp_path / "s.tif")
    blob = pickle.dumps(r)
    assert len(blob) < 2000
    r2 = pickle.loads(blob)
    assert r2._handle is None and r2.dimensions == r.dimensions and r2.mpp == r.mpp
    np.testing.assert_array_equal(r2.read(0, 3, 4, 10, 10), rgb[4:14, 3:13])
    r.close()
    r2.close()


def test_is_slide(tmp_path):
    _write_rgb_slide(tmp_path / "tiled.tif", _rgb(32, 32))
    Image.fromarray(_rgb(32, 32)).save(tmp_path / "plain.tif")
    Image.fromarray(_rgb(32, 32)).save(tmp_path / "plain.png")
    (tmp_path / "x.svs").write_bytes(b"not really")
    assert is_slide(tmp_path / "tiled.tif")
    assert not is_slide(tmp_path / "plain.tif")  # a strip TIFF is an ordinary image
    assert not is_slide(tmp_path / "plain.png")
    assert is_slide(tmp_path / "x.svs")  # by its suffix; opening it then says what is wrong
    assert not is_slide(tmp_path / "missing.svs")


def _aperio_svs(path, rgb):
    """A minimal Aperio SVS (the description OpenSlide's aperio driver keys on, levels as pages)."""
    desc = "Aperio Image Library v10.0.50\n{w}x{h} [0,0 {w}x{h}] (64x64) |AppMag = 40|MPP = 0.2500"
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            rgb,
            tile=(64, 64),
            photometric="rgb",
            compression="zlib",
            metadata=None,
            description=desc.format(w=rgb.shape[1], h=rgb.shape[0]),
        )
        tw.write(
            np.ascontiguousarray(rgb[::2, ::2]),
            tile=(64, 64),
            photometric="rgb",
            compression="zlib",
            metadata=None,
            description="Aperio Image Library v10.0.50\nlevel 1",
        )


def test_vendor_slide_through_openslide(tmp_path):
    rgb = _rgb(150, 200, seed=2)
    _aperio_svs(tmp_path / "a.svs", rgb)
    with open_slide(tmp_path / "a.svs") as r:
        assert isinstance(r, OpenSlideReader)
        assert r.dimensions == [(200, 150), (100, 75)] and r.downsamples == [1.0, 2.0]
        assert r.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(r.read(0, 0, 0, 200, 150), rgb)
        np.testing.assert_array_equal(r.read(1, 10, 5, 20, 30), rgb[::2, ::2][5:35, 10:30])
        corner = r.read(1, -1, -1, 2, 2)  # transparent outside -> white
        assert (corner[0] == 255).all() and (corner[:, 0] == 255).all()
        np.testing.assert_array_equal(corner[1, 1], rgb[0, 0])
        r2 = pickle.loads(pickle.dumps(r))
        np.testing.assert_array_equal(r2.read(0, 7, 9, 3, 3), rgb[9:12, 7:10])
        r2.close()


@pytest.mark.parametrize("keep", [0.5, 0.97, 0.01, 0.001])
def test_truncated_slide_is_one_line_naming_the_file(tmp_path, keep):
    src = tmp_path / "whole.tif"
    _write_rgb_slide(src, _rgb(96, 96, seed=3), tile=16, min_size=16)
    bad = tmp_path / "cut.tif"
    shutil.copy(src, bad)
    os.truncate(bad, int(src.stat().st_size * keep))
    with pytest.raises(QmedInputError) as info:
        r = open_slide(bad)
        for level in range(r.level_count):  # whichever part is missing, some read must say so
            r.read(level, 0, 0, *r.dimensions[level])
    msg = str(info.value)
    assert "cut.tif" in msg and "\n" not in msg and ("truncated" in msg or "corrupt" in msg)


def test_truncated_svs_is_one_line(tmp_path):
    _aperio_svs(tmp_path / "a.svs", _rgb(150, 200))
    os.truncate(tmp_path / "a.svs", (tmp_path / "a.svs").stat().st_size // 2)
    with pytest.raises(QmedInputError, match="a.svs") as info:
        r = open_slide(tmp_path / "a.svs")
        for level in range(r.level_count):
            r.read(level, 0, 0, *r.dimensions[level])
    assert "\n" not in str(info.value)


def test_a_corrupt_tile_is_one_line_at_read_time(tmp_path):
    path = tmp_path / "s.tif"
    rgb = _rgb(64, 64, seed=4)
    _write_rgb_slide(path, rgb, tile=16, min_size=64)
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        offset, count = int(page.dataoffsets[5]), int(page.databytecounts[5])
    with open(path, "r+b") as fh:  # scribble over one deflate tile: same size, so the file is not short
        fh.seek(offset)
        fh.write(bytes(range(256)) * (count // 256) + b"\x00" * (count % 256))
    r = open_slide(path)
    np.testing.assert_array_equal(r.read(0, 0, 0, 16, 16), rgb[:16, :16])  # other tiles still read
    with pytest.raises(QmedInputError, match="s.tif.*level 0") as info:
        r.read(0, 16, 16, 16, 16)  # tile 5 of a 4 x 4 grid
    assert "\n" not in str(info.value)


def test_not_a_slide(tmp_path):
    (tmp_path / "empty.svs").write_bytes(b"")
    (tmp_path / "junk.ndpi").write_bytes(b"junk" * 100)
    (tmp_path / "notes.txt").write_text("hi")
    for name, problem in [
        ("empty.svs", "empty"),
        ("junk.ndpi", "cannot be opened as a slide"),
        ("notes.txt", "not a slide file type"),
        ("missing.tif", "does not exist"),
    ]:
        with pytest.raises(QmedInputError, match=problem) as info:
            open_slide(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_sixteen_bit_tiled_tiff_is_refused_with_its_dtype(tmp_path):
    data = np.zeros((32, 32), np.uint16)
    write_pyramid(tmp_path / "deep.tif", data.shape, np.uint16, _tiles_of(data), tile=16, kind="labels")
    with pytest.raises(QmedInputError, match="uint16"):
        open_slide(tmp_path / "deep.tif")


def test_read_refuses_a_level_that_does_not_exist(tmp_path):
    _write_rgb_slide(tmp_path / "s.tif", _rgb(32, 32))
    with open_slide(tmp_path / "s.tif") as r, pytest.raises(QmedInputError, match="level 5 does not exist"):
        r.read(5, 0, 0, 1, 1)


# ---------------------------------------------------------------- choosing the level


@pytest.fixture()
def four_level_slide(tmp_path):
    """128 px square at 0.25 um/px, levels at 0.25, 0.5, 1 and 2 um/px."""
    _write_rgb_slide(tmp_path / "s.tif", _rgb(128, 128), tile=16, min_size=16, mpp=0.25)
    with open_slide(tmp_path / "s.tif") as r:
        assert r.downsamples == [1.0, 2.0, 4.0, 8.0]
        yield r


@pytest.mark.parametrize(
    "mpp, level",
    [
        (0.5, 1),
        (0.25, 0),
        (1.0, 2),
        (2.0, 3),
        (0.6, 1),  # 0.5 and 1.0 are both within reach? 1.0 > 0.66 is too coarse: 0.5
        (0.95, 2),  # 1.0 <= 1.045 is allowed, and nearer (log) than 0.5
        (0.9, 1),  # 1.0 > 0.99: too coarse, so 0.5
        (0.1, 0),  # finer than any level: the finest there is
        (5.0, 3),  # coarser than any level: the coarsest
    ],
)
def test_pick_level_for_a_pixel_size(four_level_slide, mpp, level):
    assert pick_level(four_level_slide, mpp=mpp) == (level, pytest.approx(0.25 * 2**level))


def test_pick_level_by_number_and_its_errors(four_level_slide, tmp_path):
    r = four_level_slide
    assert pick_level(r) == (0, 0.25)
    assert pick_level(r, level=2) == (2, 1.0)
    for bad in (4, -1):
        with pytest.raises(QmedInputError, match=rf"level {bad} does not exist \(the slide has levels 0..3\)"):
            pick_level(r, level=bad)
    with pytest.raises(QmedInputError, match="not both"):
        pick_level(r, mpp=0.5, level=1)
    with pytest.raises(QmedInputError, match="positive"):
        pick_level(r, mpp=0)
    gray = np.zeros((32, 32), np.uint8)
    write_pyramid(tmp_path / "nompp.tif", gray.shape, np.uint8, _tiles_of(gray), tile=16, kind="image")
    with open_slide(tmp_path / "nompp.tif") as r2:
        assert pick_level(r2) == (0, None) and pick_level(r2, level=0) == (0, None)
        with pytest.raises(QmedInputError, match="does not record its pixel size"):
            pick_level(r2, mpp=0.5)


# ---------------------------------------------------------------- GeoJSON and polygons


def _same_ring(ring, expected):
    """Equal as closed rings, whatever the starting vertex."""
    assert ring[0] == ring[-1]
    a, b = [tuple(p) for p in ring[:-1]], [tuple(p) for p in expected]
    assert len(a) == len(b) and any(a[i:] + a[:i] == b for i in range(len(a))), (ring, expected)


def test_a_3x3_square_becomes_the_ring_around_its_pixels():
    labels = np.zeros((8, 9), np.int32)
    labels[2:5, 3:6] = 7  # rows 2..4, columns 3..5
    ((oid, ring),) = label_polygons(labels)
    assert oid == 7
    _same_ring(ring, [(3, 2), (6, 2), (6, 5), (3, 5)])  # counter-clockwise by its values
    poly = Polygon(ring)
    assert poly.is_valid and poly.area == 9 and poly.exterior.is_ccw
    ((_, ring2),) = label_polygons(labels, offset_xy=(100, 200), scale=2)  # level-0 px of a level-1 block at (100, 200)
    _same_ring(ring2, [(106, 204), (112, 204), (112, 210), (106, 210)])


def test_polygons_single_pixel_line_ids_and_pieces():
    labels = np.zeros((10, 10), np.int32)
    labels[6, 0] = 3  # one pixel
    labels[0, 5:9] = 9  # a 1 x 4 line
    labels[8:10, 0:2] = 4  # a 2 x 2 square ...
    labels[9, 9] = 4  # ... and a stray pixel of the same object: the larger piece is kept
    polys = dict(label_polygons(labels))
    assert sorted(polys) == [3, 4, 9]
    _same_ring(polys[3], [(1, 7), (0, 7), (0, 6), (1, 6)])
    assert Polygon(polys[9]).area == 4 and Polygon(polys[9]).bounds == (5, 0, 9, 1)
    assert Polygon(polys[4]).area == 4 and Polygon(polys[4]).bounds == (0, 8, 2, 10)
    assert [i for i, _ in label_polygons(labels, ids=[9, 42])] == [9]
    assert list(label_polygons(np.zeros((5, 5), np.int32))) == []
    assert list(label_polygons(np.zeros((0, 0), np.int32))) == []


def test_polygons_with_slide_unique_ids_far_above_the_map_size():
    labels = np.zeros((6, 6), np.uint32)
    labels[1:3, 1:3] = 4_000_000_000  # renumbered internally, reported as given
    labels[4, 4] = 3_999_999_999
    polys = list(label_polygons(labels))
    assert [i for i, _ in polys] == [3_999_999_999, 4_000_000_000]
    _same_ring(polys[1][1], [(1, 1), (3, 1), (3, 3), (1, 3)])
    assert [i for i, _ in label_polygons(labels, ids=[4_000_000_000])] == [4_000_000_000]


def test_polygons_of_real_shapes_are_valid_closed_and_near_the_pixel_count():
    yy, xx = np.mgrid[:40, :40]
    labels = np.zeros((40, 40), np.int32)
    labels[(yy - 12) ** 2 + (xx - 12) ** 2 <= 64] = 1  # a disk
    labels[25:35, 2:5] = 2
    labels[32:35, 2:15] = 2  # an L
    for i in range(8):
        labels[20 + i, 20 + i] = 3  # a diagonal line
    labels[22:38, 28:38] = 5
    labels[27:33, 31:35] = 0  # a ring (hole dropped)
    for oid, ring in label_polygons(labels):
        poly = Polygon(ring)
        assert ring[0] == ring[-1] and poly.is_valid and not poly.interiors
        if oid == 5:
            assert poly.area == 16 * 10
        elif oid != 3:  # diagonal steps are cut straight: a little more than the pixels, never less
            assert (labels == oid).sum() <= poly.area <= 1.05 * (labels == oid).sum()


def test_geojson_writer_schema_gzip_and_count(tmp_path):
    labels = np.zeros((20, 20), np.int32)
    labels[1:4, 1:4] = 1
    labels[10:15, 5:8] = 2
    labels[18, 18] = 3
    out = tmp_path / "objects.geojson.gz"
    with GeoJSONWriter(out) as w:
        for oid, ring in label_polygons(labels):
            w.add(
                oid,
                ring,
                {"area": int((labels == oid).sum()), "mean_probability": np.float32(0.75), "nan": float("nan")},
            )
    assert w.count == 3
    with gzip.open(out, "rt") as fh:
        doc = json.load(fh)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(np.unique(labels)) - 1
    f = doc["features"][0]
    assert f["type"] == "Feature" and f["id"] == "00000000-0000-0000-0000-000000000001"
    assert f["geometry"]["type"] == "Polygon"
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and Polygon(ring).is_valid and Polygon(ring).area == 9
    props = f["properties"]
    assert props["objectType"] == "detection" and props["name"] == "1"
    assert props["classification"] == {"name": "Nucleus", "color": [200, 0, 0]}
    assert props["measurements"] == {"area": 9, "mean_probability": 0.75, "nan": None}
    assert [g["properties"]["measurements"]["area"] for g in doc["features"]] == [9, 15, 1]
    assert _leftovers(tmp_path) == []


def test_geojson_plain_empty_and_unclosed_ring(tmp_path):
    with GeoJSONWriter(tmp_path / "none.geojson") as w:
        pass
    assert json.loads((tmp_path / "none.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    with GeoJSONWriter(tmp_path / "one.geojson", gzip=False) as w:
        w.add(5, [(0, 0), (2, 0), (2, 2)], {}, classification="Tumor", color=(1, 2, 3))  # closed by the writer
        with pytest.raises(ValueError, match="at least 3 points"):
            w.add(6, [(0, 0), (1, 1)], {})
    (f,) = json.loads((tmp_path / "one.geojson").read_text())["features"]
    assert f["geometry"]["coordinates"] == [[[0, 0], [2, 0], [2, 2], [0, 0]]]
    assert f["properties"]["classification"] == {"name": "Tumor", "color": [1, 2, 3]}


def test_geojson_is_atomic_an_error_keeps_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "objects.geojson"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with GeoJSONWriter(out) as w:
            w.add(1, [(0, 0), (1, 0), (1, 1)], {})
            raise RuntimeError("killed mid-slide")
    assert out.read_text() == "old"
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- the mosaic builder


def _tiny_dataset(root):
    """One 16 x 16 source tile with two objects (labels 5 and 9), as images/ + masks/."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img = _rgb(16, 16, seed=5)
    lab = np.zeros((16, 16), np.uint16)
    lab[2:6, 1:4] = 5
    lab[10:14, 9:15] = 9
    Image.fromarray(img).save(root / "images" / "t.png")
    Image.fromarray(lab).save(root / "masks" / "t.png")
    return img, lab


def _dihedral(a):
    out = []
    for flip in (False, True):
        b = a[:, ::-1] if flip else a
        out += [np.rot90(b, k) for k in range(4)]
    return out


def test_mosaic_of_one_tile_by_hand(tmp_path):
    img, lab = _tiny_dataset(tmp_path / "tiles")
    info = build_slide(
        tmp_path / "m.tif",
        (48, 16),
        tmp_path / "tiles",
        seed=3,
        tile=16,
        cell=16,
        blank=0,
        truth_path=tmp_path / "t.tif",
        compression="zlib",
    )
    assert info["objects"] == 6 and info["grid"] == [1, 3] and info["blank_cells"] == 0
    slide, truth = _levels(tmp_path / "m.tif")[0], _levels(tmp_path / "t.tif")[0]
    assert slide.shape == (16, 48, 3) and truth.shape == (16, 48) and truth.dtype == np.uint32
    for c in range(3):  # each cell is a flip/turn of the tile, its two objects numbered 2c+1, 2c+2
        cell_img, cell_lab = slide[:, 16 * c : 16 * c + 16], truth[:, 16 * c : 16 * c + 16]
        k = next(i for i, t in enumerate(_dihedral(img)) if np.array_equal(t, cell_img))
        src = _dihedral(lab)[k]
        assert sorted(np.unique(cell_lab)) == [0, 2 * c + 1, 2 * c + 2]
        np.testing.assert_array_equal(cell_lab == 2 * c + 1, src == 5)  # source order kept: 5 before 9
        np.testing.assert_array_equal(cell_lab == 2 * c + 2, src == 9)


def test_mosaic_crops_objects_at_the_slide_edge(tmp_path):
    _tiny_dataset(tmp_path / "tiles")
    info = build_slide(
        tmp_path / "m.tif",
        (20, 5),
        tmp_path / "tiles",
        seed=0,
        tile=16,
        cell=16,
        blank=0,
        truth_path=tmp_path / "t.tif",
        compression="zlib",
    )
    truth = _levels(tmp_path / "t.tif")[0]
    ids = np.unique(truth[truth > 0])
    assert info["objects"] == ids.size and list(ids) == list(range(1, ids.size + 1))


def test_synthetic_mosaic_blank_cells_ids_and_seed(tmp_path):
    kw = dict(seed=2, tile=64, cell=100, blank=0.4, compression="zlib")
    info = build_slide(tmp_path / "a.tif", (300, 200), None, truth_path=tmp_path / "at.tif", **kw)
    build_slide(tmp_path / "b.tif", (300, 200), None, **kw)
    slide, truth = _levels(tmp_path / "a.tif")[0], _levels(tmp_path / "at.tif")[0]
    np.testing.assert_array_equal(slide, _levels(tmp_path / "b.tif")[0])  # same seed, same slide
    ids = np.unique(truth[truth > 0])
    assert info["objects"] == ids.size > 0 and list(ids) == list(range(1, ids.size + 1))
    assert info["tissue_cells"] + info["blank_cells"] == 6
    blank = 0
    for r in range(2):
        for c in range(3):
            cell = (slice(100 * r, 100 * r + 100), slice(100 * c, 100 * c + 100))
            if (slide[cell] == 255).all():
                blank += 1
                assert (truth[cell] == 0).all()
    assert blank == info["blank_cells"] > 0


def test_mosaic_of_monuseg_reads_back_as_a_slide(shared_data, tmp_path):
    out, truth_path = tmp_path / "mono.ome.tif", tmp_path / "mono_truth.ome.tif"
    info = build_slide(
        out,
        (1024, 768),
        shared_data / "monuseg" / "train",
        seed=0,
        cell=256,
        blank=0.25,
        truth_path=truth_path,
        min_size=256,
    )
    assert info["sources"] == 30 and info["grid"] == [3, 4]
    with open_slide(out) as r:
        assert r.dimensions == [(1024, 768), (512, 384), (256, 192)] and r.mpp == pytest.approx(0.25)
        region = r.read(0, 0, 0, 1024, 768)
    truth = _levels(truth_path)[0]
    ids = np.unique(truth[truth > 0])
    assert info["objects"] == ids.size > 50 and ids.max() == ids.size
    # tissue where the truth has nuclei: nuclei (haematoxylin) are darker than the slide's white glass
    assert (
        region[truth > 0].mean() < 200
        and (region[truth == 0].mean(axis=-1) > 250).mean() > 0.1 * info["blank_cells"] / 12
    )


def test_mosaic_refuses_a_cell_larger_than_the_tiles(tmp_path):
    _tiny_dataset(tmp_path / "tiles")
    with pytest.raises(QmedInputError, match="cell side 32"):
        build_slide(tmp_path / "m.tif", 64, tmp_path / "tiles", cell=32)
