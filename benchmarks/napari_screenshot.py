"""A screenshot of `qmed predict --input SLIDE --instances` as napari shows it: objects over the slide.

Usage (napari and a Qt binding are not qmed dependencies: `pip install napari pyqt5`; headless, under Xvfb):
  xvfb-run -a python benchmarks/napari_screenshot.py --slide SLIDE.ome.tif --pred PRED_DIR --out shot.png
      [--center X,Y] [--region 400] [--canvas 800]

Opens the three outputs the way a user would, each straight from its file:
- the slide's pyramid as a multiscale RGB image layer (tifffile's zarr store over the tiles, every level);
- PRED_DIR/labels.ome.tif, qmed's pyramidal OME-TIFF, as a multiscale labels layer (filled, translucent);
- PRED_DIR/objects.geojson, qmed's QuPath detections, as a shapes layer (polygon edges only);
and cyan lines on the block seams (predict.json's block size), so objects across a seam show as whole.
The view is a square of --region level-0 px around --center (default: the point on a block seam with
the most objects within the region, from objects.csv), drawn at --canvas px square; the PNG is that square of
the canvas (viewer.screenshot(canvas_only=True), no window frame or panels), in 256 colours.

Coordinates: napari puts pixel (r, c)'s centre at (r, c); qmed's polygons follow pixel edges (pixel
(r, c) is the square [c, c+1] x [r, r+1] in level-0 px), so they are shifted by -0.5 px. The label map
lies at the working level: it is scaled by predict.json's downsample.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from pathlib import Path

import numpy as np


def pyramid(path: Path) -> list:
    """Every level of a (pyramidal) TIFF's first series as zarr arrays, level 0 first (nothing is read)."""
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True)
    node = zarr.open(store, mode="r")
    if hasattr(node, "keys"):  # a group "0", "1", ...: a pyramid
        return [node[k] for k in sorted(node.keys(), key=int)]
    return [node]


def seam_center(
    objects: list[tuple[float, float]], block: int, width: int, height: int, region: int
) -> tuple[float, float]:
    """The point on a block seam (every region/4 px along each seam) with the most object centroids
    within region/2 of it on both axes; the slide's centre when the slide is one block."""
    xy = np.asarray(objects, dtype=np.float64).reshape(-1, 2)
    step = max(1, region // 4)
    candidates = []
    for s in range(block, width, block):  # vertical seams
        candidates += [(s, y) for y in range(region // 2, max(region // 2 + 1, height - region // 2), step)]
    for s in range(block, height, block):  # horizontal seams
        candidates += [(x, s) for x in range(region // 2, max(region // 2 + 1, width - region // 2), step)]
    if not candidates or not len(xy):
        return width / 2, height / 2
    half = region / 2
    counts = [int(((np.abs(xy[:, 0] - cx) < half) & (np.abs(xy[:, 1] - cy) < half)).sum()) for cx, cy in candidates]
    return candidates[int(np.argmax(counts))]


def read_polygons(path: Path, box: tuple[float, float, float, float]) -> list[np.ndarray]:
    """The GeoJSON's polygons (outer rings) that touch the level-0 box (x0, y0, x1, y1), as (N, 2) (row, col)
    arrays in napari's pixel-centre coordinates."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        features = json.load(fh)["features"]
    x0, y0, x1, y1 = box
    out = []
    for f in features:
        ring = np.asarray(f["geometry"]["coordinates"][0], dtype=np.float64)
        if ring[:, 0].max() < x0 or ring[:, 0].min() > x1 or ring[:, 1].max() < y0 or ring[:, 1].min() > y1:
            continue
        out.append(ring[:-1, ::-1] - 0.5)  # open ring, (x, y) -> (row, col), edges -> centres
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--slide", type=Path, required=True, help="the slide given to qmed predict (a tifffile-readable TIFF)"
    )
    ap.add_argument("--pred", type=Path, required=True, help="qmed predict's --out folder (run with --instances)")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument(
        "--center", default=None, help="X,Y of the view's centre in level-0 px (default: a busy block seam)"
    )
    ap.add_argument("--region", type=int, default=400, help="side of the view in level-0 px")
    ap.add_argument("--canvas", type=int, default=800, help="side of the canvas (and the PNG) in screen px")
    args = ap.parse_args(argv)

    import napari

    meta = json.loads((args.pred / "predict.json").read_text())
    ds = float(meta["downsample"])
    width0, height0 = meta["slide_size_level0"]
    geo = next((p for p in (args.pred / "objects.geojson", args.pred / "objects.geojson.gz") if p.is_file()), None)
    if args.center:
        cx, cy = (float(v) for v in args.center.split(","))
    else:
        with open(args.pred / "objects.csv", newline="") as fh:
            cents = [(float(r["centroid_x"]), float(r["centroid_y"])) for r in csv.DictReader(fh)]
        block0 = int(round(meta["block"] * ds))
        cx, cy = seam_center(cents, block0, width0, height0, args.region)
    half = args.region / 2
    box = (cx - half, cy - half, cx + half, cy + half)

    viewer = napari.Viewer(show=True)
    slide = pyramid(args.slide)
    viewer.add_image(slide, multiscale=len(slide) > 1, rgb=True, name="slide")
    labels = pyramid(args.pred / "labels.ome.tif")
    # working-level pixel i covers level-0 [i ds, (i + 1) ds): its centre sits at level-0 (i + 0.5) ds - 0.5
    viewer.add_labels(
        labels,
        multiscale=len(labels) > 1,
        name="labels.ome.tif",
        opacity=0.3,
        scale=(ds, ds),
        translate=((ds - 1) / 2, (ds - 1) / 2),
    )
    n_poly = 0
    if geo is not None:
        polys = read_polygons(geo, box)
        n_poly = len(polys)
        if polys:
            viewer.add_shapes(
                polys,
                shape_type="polygon",
                edge_color="yellow",
                face_color="transparent",
                edge_width=1.5,
                name=geo.name,
            )
    block0 = meta["block"] * ds  # seams at multiples of the block, level-0 px (pixel edges: -0.5 below)
    seams = [np.array([[box[1], s], [box[3], s]]) for s in np.arange(block0, width0, block0) if box[0] <= s <= box[2]]
    seams += [np.array([[s, box[0]], [s, box[2]]]) for s in np.arange(block0, height0, block0) if box[1] <= s <= box[3]]
    if seams:
        viewer.add_shapes(
            [s - 0.5 for s in seams], shape_type="line", edge_color="cyan", edge_width=2, name="block seams"
        )

    viewer.window.resize(args.canvas + 700, args.canvas + 300)  # room for the layer panels beside the canvas
    napari.qt.get_qapp().processEvents()
    canvas_hw = viewer.screenshot(canvas_only=True, flash=False).shape[:2]  # the canvas as laid out
    if min(canvas_hw) < args.canvas:
        raise SystemExit(f"the canvas is {canvas_hw[1]} x {canvas_hw[0]} px, smaller than --canvas {args.canvas}")
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 / older
    camera.center = (cy, cx)
    camera.zoom = args.canvas / args.region  # screen px per level-0 px
    full = viewer.screenshot(canvas_only=True, flash=False)
    top, left = (full.shape[0] - args.canvas) // 2, (full.shape[1] - args.canvas) // 2
    img = full[top : top + args.canvas, left : left + args.canvas, :3]  # the view's square, centred on (cx, cy)
    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette (octree, dithered): a third of the RGB PNG's bytes, no visible loss at this zoom
    pal = Image.fromarray(np.ascontiguousarray(img)).quantize(
        256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG
    )
    pal.save(args.out, optimize=True)
    print(
        f"{args.out}: {img.shape[1]} x {img.shape[0]} px; view {args.region} px around x={cx:.0f}, y={cy:.0f} "
        f"(level 0); {n_poly} GeoJSON polygons in view; slide levels {[tuple(a.shape[:2]) for a in slide]}, "
        f"labels levels {[tuple(a.shape) for a in labels]}"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
