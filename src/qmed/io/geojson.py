"""Objects as a GeoJSON FeatureCollection that QuPath imports as detections (File > Import objects).

Each object is a Feature: a Polygon (one closed outer ring, level-0 pixel coordinates, origin at the slide's
top-left corner, x right, y down) and QuPath's properties: `objectType: "detection"`, a `classification`
(name and colour), a `measurements` map of numbers and `name` (the object's id as text). The Feature's `id`
is a UUID made from the object's integer id (QuPath reads Feature ids as UUIDs): 7 becomes
00000000-0000-0000-0000-000000000007, so the id is readable in both.

The writer streams: features go to disk as they are added (a slide's million objects are never held), into
`.NAME.tmp` beside the output, renamed into place only when the `with` block ends without an error (a failed
run leaves no half-written file and removes its temporary one). `.gz` output is gzip-compressed.

Polygons come from label maps through `label_polygons`: each object's outer boundary traced by OpenCV
through the centres of its edge pixels, then pushed out by half a pixel (shapely mitre buffer), so a
polygon follows the pixel edges: a 3 x 3 square of pixels becomes the 3 x 3 square ring around them, of area
9 (a boundary through pixel centres would have area 4). Diagonal steps are cut straight rather than as
staircases.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

# QuPath's default class colours for the names qmed writes; others get a stable colour from their name
_COLORS = {
    "Nucleus": [200, 0, 0],
    "Tumor": [200, 0, 0],
    "Stroma": [150, 200, 150],
    "Immune cells": [160, 90, 160],
    "Other": [255, 200, 0],
}


def _color(name: str) -> list[int]:
    if name in _COLORS:
        return list(_COLORS[name])
    h = uuid.uuid5(uuid.NAMESPACE_OID, name).bytes
    return [int(h[0]), int(h[1]), int(h[2])]


def _number(v):
    """A JSON number for a measurement (NaN/inf become null, which QuPath reads as missing)."""
    v = float(v)
    if not math.isfinite(v):
        return None
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


class GeoJSONWriter:
    """Stream QuPath detections into a GeoJSON FeatureCollection; use as a context manager.

    `gzip`: compress (default: when the path ends in `.gz`)."""

    def __init__(self, path: str | Path, gzip: bool | None = None):
        self.path = Path(path)
        self.gzip = self.path.suffix.lower() == ".gz" if gzip is None else bool(gzip)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.count = 0
        self._fh = None

    def __enter__(self) -> GeoJSONWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            self.tmp.unlink()  # left by a killed run
        self._fh = (
            gzip_module.open(self.tmp, "wt", encoding="utf-8", compresslevel=6)
            if self.gzip
            else open(self.tmp, "w", encoding="utf-8")
        )
        self._fh.write('{"type": "FeatureCollection", "features": [')
        return self

    def add(
        self,
        object_id: int,
        polygon_xy: Sequence[Sequence[float]],
        measurements: dict | None = None,
        classification: str = "Nucleus",
        color: Sequence[int] | None = None,
    ) -> None:
        """One detection. `polygon_xy`: the outer ring as (x, y) in level-0 pixels, closed or not (it is closed
        here); fewer than 3 distinct points is refused."""
        if self._fh is None:
            raise RuntimeError("GeoJSONWriter.add outside its `with` block")
        ring = [[_number(x), _number(y)] for x, y in polygon_xy]
        if ring and ring[0] != ring[-1]:
            ring.append(list(ring[0]))
        if len(ring) < 4:
            raise ValueError(f"object {object_id}: a polygon needs at least 3 points, got {len(polygon_xy)}")
        oid = int(object_id)
        feature = {
            "type": "Feature",
            "id": str(uuid.UUID(int=oid)),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "detection",
                "name": str(oid),
                "classification": {
                    "name": classification,
                    "color": list(color) if color is not None else _color(classification),
                },
                "measurements": {str(k): _number(v) for k, v in (measurements or {}).items()},
            },
        }
        self._fh.write(("\n" if self.count == 0 else ",\n") + json.dumps(feature, separators=(",", ":")))
        self.count += 1

    def add_many(
        self, items: Iterable[tuple[int, Sequence[Sequence[float]], dict]], classification: str = "Nucleus"
    ) -> None:
        for object_id, ring, measurements in items:
            self.add(object_id, ring, measurements, classification)

    def __exit__(self, exc_type, exc, tb) -> None:
        fh, self._fh = self._fh, None
        try:
            if exc_type is None:
                fh.write("\n]}\n")
            fh.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def label_polygons(
    labels: np.ndarray, offset_xy: tuple[float, float] = (0, 0), scale: float = 1.0, ids: Iterable[int] | None = None
) -> Iterator[tuple[int, list[tuple[float, float]]]]:
    """(id, outer ring) for each object of an integer label map (0 = background), in increasing id order.

    The ring follows the object's pixel edges (pixel (row r, column c) is the square [c, c+1] x [r, r+1]),
    is closed (first point == last), valid (shapely), counter-clockwise by its coordinate values (RFC 7946's
    rule for outer rings), without holes; an object in several pieces keeps its largest piece. Coordinates are
    `offset_xy + scale * (x, y)`, e.g. scale = the level's downsample and offset = the block's level-0 origin.
    `ids`: only these objects (others are skipped; ids absent from the map yield nothing)."""
    import cv2
    from scipy import ndimage
    from shapely.geometry import LineString, MultiPoint, Point, Polygon
    from shapely.geometry.polygon import orient

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.size == 0:
        return
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    top = int(labels.max())
    if top <= 0:
        return
    if top <= 4 * labels.size + (1 << 20):
        # one pass (find_objects' table has an entry per id up to the largest)
        keys, slices = (
            labels,
            ndimage.find_objects(labels.astype(np.int64, copy=False) if labels.dtype == np.uint64 else labels),
        )
        present = {i + 1: i + 1 for i, sl in enumerate(slices) if sl is not None}
    else:  # sparse huge ids (slide-unique): renumber 1..n first
        fg = labels > 0
        values = np.unique(labels[fg])
        keys = np.where(fg, np.searchsorted(values, labels) + 1, 0).astype(np.int32)
        slices = ndimage.find_objects(keys)
        present = {int(v): i + 1 for i, v in enumerate(values)}
    wanted = sorted(present) if ids is None else sorted({int(i) for i in ids} & set(present))
    ox, oy = float(offset_xy[0]), float(offset_xy[1])
    for oid in wanted:
        key = present[oid]
        sl = slices[key - 1]
        if sl is None:
            continue
        r0, c0 = sl[0].start, sl[1].start
        crop = np.pad((keys[sl] == key).astype(np.uint8), 1)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        best = None
        for contour in contours:
            pts = contour[:, 0, :].astype(np.float64)  # (x, y) pixel centres in the padded crop
            geom = Point(pts[0]) if len(pts) == 1 else (LineString(pts) if len(pts) == 2 else Polygon(pts))
            if geom.geom_type == "Polygon" and not geom.is_valid:
                geom = MultiPoint(pts).convex_hull if geom.area == 0 else geom.buffer(0)
            grown = geom.buffer(0.5, join_style="mitre", cap_style="square", mitre_limit=2.0)
            pieces = list(grown.geoms) if hasattr(grown, "geoms") else [grown]
            for piece in pieces:
                if piece.geom_type == "Polygon" and (best is None or piece.area > best.area):
                    best = piece
        if best is None or best.is_empty:
            continue
        ring = orient(Polygon(best.exterior), sign=1.0).exterior.coords
        # padded-crop centre coordinates -> pixel-edge coordinates of the full map: -1 (pad) + 0.5 (centre)
        dx, dy = c0 - 0.5, r0 - 0.5
        yield oid, [(ox + scale * (x + dx), oy + scale * (y + dy)) for x, y in ring]
