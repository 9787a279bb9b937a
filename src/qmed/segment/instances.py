"""Instances from a foreground probability map: marker-controlled watershed on the distance
transform of the thresholded mask (issue 20; the classical post-processing of the DSB2018 entries,
without a learned boundary channel).

1. foreground = probability > threshold; its 8-connected components are the starting objects;
2. the Euclidean distance transform of the foreground peaks at the nuclei's centres and dips
   where two touching nuclei meet;
3. markers are the h-maxima of the distance map (the regional maxima of its reconstruction from
   distance - h): peaks that rise at least h px above every path to a higher or equal one, with
   h = max(H_MIN, H_FRACTION x the objects' diameter). Two touching discs of radius r dip by
   about r at their contact, an elongated nucleus's ridge not at all, so one marker per nucleus;
4. a watershed of the negated distance map from the markers, inside the foreground, with
   8-connectivity, so every foreground pixel gets a label: the semantic mask is unchanged (labels
   > 0 is exactly the thresholded mask, no gap is carved between touching objects).

The diameter is each image's own: the median equivalent diameter of its foreground components
(`qmed.data.objects.object_diameter`). Measured on dsb2018-fluo val with the truth's own
foreground as the "prediction" (so only the splitting is judged; benchmarks/watershed_on_truth.py), h = max(1, 0.05 d) lifts the
DSB mean AP from 0.781 (connected components) to 0.901 and AJI from 0.793 to 0.924; h from the
training set's one recorded diameter (predict.object_diameter, 17 px) gives 0.885 / 0.919, because
val images' nuclei range from 9 to 52 px; larger fractions (0.1: 0.890, 0.2: 0.841) merge more.
With a learned contact channel (model.instance_head=contact), steps 2-4 run on the core,
foreground minus contact (contact probability > `CONTACT_THRESHOLD`): the distance transform is
the distance to background *or* to a predicted contact, so the dip between two nuclei deepens
where the network saw them meet (a pair of flattened nuclei pressed together has no dip of its
own), and is still found where the head saw nothing; the flood from its h-maxima runs along the
contact ridge (distance 0). `seeds="components"` is the DSB2018 winners' plain recipe instead:
markers are the core's 8-connected components (those under `MARKER_FRACTION` of a disc of the
object diameter dropped as speckle), flooding the contact probability. Measured on dsb2018-fluo
val, the same head model's TTA maps (docs/benchmarks.md 13b): mean AP 0.636 with both cues
against 0.599 with components and 0.609 with the distance transform alone. With the contact map
the marker height is h = max(H_MIN, H_FRACTION_CONTACT x d), 0.1 d: re-splitting the head models'
saved val maps (13d), 0.1 d against 0.05 d gained mean AP +0.023 [+0.010, +0.039] on dsb2018-histo
and +0.010 [+0.003, +0.017] on MoNuSeg, and was level on dsb2018-fluo (+0.003 [-0.003, +0.010]).
Instances are computed on the stitched full-image probability map, so an object cut by a
sliding-window seam is never split by the seam.
Memory: a few arrays of the image's size (float32 distance map and its reconstruction, int32
labels, the watershed's queue), about 50 bytes per pixel at peak; time about 0.2 us per pixel on
one CPU core (a slide block's split, objects table and spill: 0.89 s for 4.7 Mpx, against 6.28 s
before `reconstruct` replaced skimage's reconstruction, whose two sorts of every pixel dominated;
docs/benchmarks 15c, benchmarks/block_stages.py).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from qmed.data.objects import label_components, object_diameter

log = logging.getLogger("qmed")

H_FRACTION = 0.05  # h-maxima height as a fraction of the object diameter ...
# ... with a contact map (seeds="distance"): the contact already deepens the dips, so a higher h
# merges the false peaks of ragged stained nuclei without losing touching pairs (docs 13d).
H_FRACTION_CONTACT = 0.1
H_MIN = 1.0  # ... and at least this many px (below it, boundary pixels' staircase makes maxima)
OBJECT_COLUMNS = (
    "id",
    "area",
    "centroid_y",
    "centroid_x",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "mean_probability",
)
PNG_MAX_LABEL = 65535
INSTANCES_DIR = "instances"  # qmed predict --instances: OUT/instances/NAME.png + NAME.csv
CONTACT_THRESHOLD = 0.5
MARKER_FRACTION = 0.1  # markers under this share of a disc of the object diameter are speckle
CONTACT_SEEDS = ("components", "distance")  # split_instances' markers with a contact map


def split_instances(
    prob: np.ndarray,
    threshold: float = 0.5,
    diameter: float | None = None,
    h: float | None = None,
    contact: np.ndarray | None = None,
    seeds: str = "distance",
) -> np.ndarray:
    """Foreground probability HxW (or a bool mask) -> int32 instance labels 1..N, 0 = background.

    `diameter`: the objects' typical diameter in px (None: measured on this mask's components);
    `h`: the marker height in px (None: max(H_MIN, H_FRACTION x diameter), or H_FRACTION_CONTACT
    with a contact map and seeds="distance"); `contact`: the contact
    probability HxW of an instance head (None: the distance transform's markers); `seeds`, with a
    contact map: "distance" (h-maxima of the distance to background or contact, the default) or
    "components" (the components of foreground minus contact).
    labels > 0 equals `prob > threshold` (a bool mask: itself) pixel for pixel."""
    from scipy import ndimage

    if seeds not in CONTACT_SEEDS:
        raise ValueError(f"seeds must be one of {CONTACT_SEEDS}, got {seeds!r}")
    p = np.asarray(prob)
    fg = p if p.dtype == np.bool_ else p > threshold
    cc = label_components(fg)
    n_cc = int(cc.max())
    if n_cc == 0:
        return cc
    d = diameter if diameter or (h is not None and contact is None) else object_diameter(cc)
    if h is None and not d:  # only speckle: nothing to split
        return cc
    if h is None:
        frac = H_FRACTION_CONTACT if contact is not None and seeds == "distance" else H_FRACTION
        h = max(H_MIN, frac * float(d))
    if contact is not None:
        c = np.asarray(contact, dtype=np.float32)
        if c.shape != fg.shape:
            raise ValueError(f"contact map is {c.shape}, the probability map {fg.shape}")
        core = fg & (c <= CONTACT_THRESHOLD)
        if seeds == "distance":
            # Both cues: the distance to background or to a predicted contact, so the dip between
            # two nuclei is deepened where the head saw them meet and still found where it did not.
            dist = ndimage.distance_transform_edt(core).astype(np.float32)
            return _flood(cc, n_cc, fg, label_components(_h_maxima(dist, h) & core), -dist)
        min_px = MARKER_FRACTION * np.pi * (float(d) / 2) ** 2 if d else 0.0
        markers = label_components(core)
        # By hand, not skimage's remove_small_objects: its size keyword changed in 0.26 (min_size
        # deprecated for max_size) and qmed supports scikit-image >= 0.21.
        small = np.bincount(markers.ravel()) < min_px
        small[0] = False
        markers[small[markers]] = 0
        return _flood(cc, n_cc, fg, markers, c)
    dist = ndimage.distance_transform_edt(fg).astype(np.float32)
    return _flood(cc, n_cc, fg, label_components(_h_maxima(dist, h) & fg), -dist)


def _h_maxima(dist: np.ndarray, h: float) -> np.ndarray:
    """The h-maxima transform: the regional maxima of the reconstruction of dist - h under dist
    (skimage's h_maxima marks the tops instead, which leaves two equal peaks joined by a dip < h
    as two markers; on the reconstruction they are one plateau, so one marker)."""
    from skimage.morphology import local_maxima

    rec = reconstruct(dist - np.float32(h), dist)
    return local_maxima(rec, connectivity=2, allow_borders=True).astype(bool)


def reconstruct(seed: np.ndarray, mask: np.ndarray, tile: int = 128) -> np.ndarray:
    """Grayscale reconstruction by dilation (8-connected) of `seed` under `mask` (float32, seed <=
    mask, mask >= 0 as a distance map is): skimage.morphology.reconstruction's result exactly, without
    its two sorts of every pixel, which dominated the instance split of a slide block (docs 14b).

    The reconstruction is the limit of geodesic dilations (dilate by 3x3, clip under the mask) from
    any start between the seed and it. Where some seed pixel is >= 0 and the mask is >= 0 everywhere,
    that value reaches every pixel, so the reconstruction is >= 0 everywhere: starting from
    max(seed, 0) skips the hundreds of steps in which the background's plateau would fill pixel by
    pixel. Whole-array steps run while many pixels change, then tiles with a change (and their
    neighbours) iterate alone to convergence."""
    import cv2

    seed = np.asarray(seed, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if seed.ndim != 2 or seed.shape != mask.shape:
        raise ValueError(f"reconstruct takes two 2-D arrays of one shape, got {seed.shape} and {mask.shape}")
    if seed.size == 0:
        return seed.copy()
    k = np.ones((3, 3), np.uint8)
    start = np.maximum(seed, 0) if seed.max() >= 0 and mask.min() >= 0 else seed
    rec = np.minimum(start, mask)
    H, W = rec.shape
    while True:
        nxt = cv2.dilate(rec, k, borderType=cv2.BORDER_REPLICATE)  # replicate: the border adds no new value
        np.minimum(nxt, mask, out=nxt)
        changed = nxt != rec
        rec = nxt
        n = int(np.count_nonzero(changed))
        if n == 0:
            return rec
        if n < 0.01 * rec.size:
            break
    ty, tx = -(-H // tile), -(-W // tile)
    grid = np.zeros((ty * tile, tx * tile), bool)
    grid[:H, :W] = changed
    active = cv2.dilate(grid.reshape(ty, tile, tx, tile).any(axis=(1, 3)).astype(np.uint8), k).astype(bool)
    while active.any():
        again = np.zeros_like(active)
        for iy, ix in zip(*np.nonzero(active)):
            y0, x0 = iy * tile, ix * tile
            y1, x1 = min(H, y0 + tile), min(W, x0 + tile)
            ry0, rx0, ry1, rx1 = max(0, y0 - 1), max(0, x0 - 1), min(H, y1 + 1), min(W, x1 + 1)
            sub = rec[ry0:ry1, rx0:rx1].copy()  # the tile and a frame of its neighbours' current values
            m = mask[ry0:ry1, rx0:rx1]
            inner = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
            moved = False
            while True:
                d = cv2.dilate(sub, k, borderType=cv2.BORDER_REPLICATE)
                np.minimum(d, m, out=d)
                if np.array_equal(d[inner], sub[inner]):
                    break
                sub[inner] = d[inner]
                moved = True
            if moved:
                rec[y0:y1, x0:x1] = sub[inner]
                again[max(0, iy - 1) : iy + 2, max(0, ix - 1) : ix + 2] = True
        active = again
    return rec


def _flood(cc: np.ndarray, n_cc: int, fg: np.ndarray, markers: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    """Watershed of `elevation` from `markers` inside `fg` (8-connected); a component of `cc`
    without a marker stays one object, so labels > 0 is exactly fg."""
    from skimage.segmentation import relabel_sequential, watershed

    # Distance markers: every component holds a regional maximum of the reconstruction (one lower
    # than h is one plateau, whole). Contact markers: a component may be all contact or speckle.
    # Either way a component without a marker becomes one object.
    has = np.zeros(n_cc + 1, dtype=bool)
    has[cc[markers > 0]] = True
    lonely = ~has[cc] & fg
    if lonely.any():
        markers[lonely] = cc[lonely] + int(markers.max())
    labels = watershed(elevation, markers, mask=fg, connectivity=2)
    left = fg & (labels == 0)  # none with a marker in every component; the mask is kept whatever happens
    if left.any():
        labels[left] = cc[left] + int(labels.max())
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def object_table(labels: np.ndarray, prob: np.ndarray) -> list[dict]:
    """One row per object, in label order: OBJECT_COLUMNS (bbox max exclusive, as skimage and
    numpy slices; mean_probability over the object's pixels)."""
    from skimage.measure import regionprops_table

    if not labels.any():
        return []
    t = regionprops_table(
        labels,
        intensity_image=np.asarray(prob, dtype=np.float32),
        properties=("label", "area", "centroid", "bbox", "intensity_mean"),
    )
    return [
        {
            "id": int(t["label"][i]),
            "area": int(t["area"][i]),
            "centroid_y": round(float(t["centroid-0"][i]), 2),
            "centroid_x": round(float(t["centroid-1"][i]), 2),
            "bbox_min_row": int(t["bbox-0"][i]),
            "bbox_min_col": int(t["bbox-1"][i]),
            "bbox_max_row": int(t["bbox-2"][i]),
            "bbox_max_col": int(t["bbox-3"][i]),
            "mean_probability": round(float(t["intensity_mean"][i]), 4),
        }
        for i in range(len(t["label"]))
    ]


def write_instances(
    folder: str | Path,
    name: str,
    prob: np.ndarray,
    threshold: float = 0.5,
    diameter: float | None = None,
    contact: np.ndarray | None = None,
) -> int:
    """Split `prob` (with an instance head's `contact` map, if given) into instances and write FOLDER/NAME.png (16-bit label map; a 32-bit NAME.tif,
    with a warning, past 65535 objects) and FOLDER/NAME.csv (OBJECT_COLUMNS), each atomically.
    Returns the number of objects."""
    from qmed.io.files import write_text
    from qmed.io.images import write_labels

    folder = Path(folder)
    labels = split_instances(prob, threshold, diameter, contact=contact)
    n = int(labels.max())
    suffix = ".png"
    if n > PNG_MAX_LABEL:
        suffix = ".tif"
        log.warning("%s: %d objects do not fit a 16-bit PNG; wrote a 32-bit TIFF label map", folder / f"{name}.png", n)
    write_labels(folder / f"{name}{suffix}", labels)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=OBJECT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(object_table(labels, prob))
    write_text(folder / f"{name}.csv", buf.getvalue())
    return n
