"""Segmentation metrics: plain functions on numpy arrays (MONAI style), with explicit conventions.

Every function states what it returns for empty inputs, because that choice changes the headline
numbers: a set with many empty images scores very differently under "empty vs empty = 1" than
under "only images with foreground". So a set is always described by three Dice figures side by
side (never one unlabeled "Dice"):

- ``dice_mean_empty1``: mean of per-image Dice, empty prediction on empty truth counts 1 (the
  paper's convention);
- ``dice_mean_fg``: mean of per-image Dice over images whose truth has foreground (nnU-Net/MONAI);
- ``dice_pooled``: 2·ΣTP / (2·ΣTP + ΣFP + ΣFN) over all pixels of the set;

plus ``fp_rate_empty``, how often an empty image gets a false detection, which the Dice figures
over foreground images cannot see.

Pixel arrays are HxW bool (foreground); instance label maps are int arrays with 0 = background.
Distances are in pixels unless ``spacing`` is given.

Instance figures (DSB2018 mean AP over IoU 0.5:0.05:0.95, panoptic quality, count error) share
the one overlap table and the one-to-one matching (`_overlaps`, `_match`) with object F1 and AJI.
Unlike AJI, mean AP and PQ score an image with no object on either side as 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from qmed.data.objects import label_components
from qmed.evaluate.stats import bootstrap_ci

NAN = float("nan")
BF1_TOL = 3  # px; the paper judges boundaries to within +-3 px
SMALL_MAX_SIZE = 50  # px; "small object" = fewer than this many pixels
OBJ_IOU_THR = 0.5

# What each summary key means; written into the evaluation JSON beside the numbers.
CONVENTIONS: dict[str, str] = {
    "dice_mean_empty1": "mean of per-image Dice; an image with empty truth and empty prediction scores 1 (paper convention)",
    "dice_mean_fg": "mean of per-image Dice over images whose ground truth has foreground (nnU-Net/MONAI convention)",
    "dice_pooled": "2*sum(TP) / (2*sum(TP) + sum(FP) + sum(FN)) over all pixels of the set; NaN if the whole set is empty",
    "iou_mean_fg": "mean of per-image IoU over images whose ground truth has foreground",
    "iou_mean_empty1": "mean of per-image IoU; empty truth and empty prediction scores 1",
    "precision": "mean of per-image pixel precision; empty prediction scores 1 on empty truth and is excluded (undefined) on non-empty truth",
    "recall": "mean of per-image pixel recall over images whose ground truth has foreground",
    "hd95": "95th percentile of the pooled symmetric distances between prediction and truth boundaries (px); 0 when both are empty; undefined (excluded, counted in n_undefined) when exactly one is empty",
    "boundary_f1": f"boundary F-score with a {BF1_TOL} px tolerance, mean over all images; both empty = 1, exactly one empty = 0",
    "object_recall": f"matched truth objects / truth objects, pooled over the set; a match is a one-to-one pair with IoU >= {OBJ_IOU_THR}",
    "object_precision": "matched predicted objects / predicted objects (connected components, 8-connectivity), pooled over the set",
    "object_f1": "2*TP / (2*TP + FP + FN) of the object matches, pooled over the set",
    "small_object_recall": f"truth objects smaller than {SMALL_MAX_SIZE} px that some predicted component overlaps with IoU >= {OBJ_IOU_THR}, pooled over the set",
    "aji": "Aggregated Jaccard Index (Kumar et al. 2017, hover-net get_fast_aji), mean over images where it is defined (not both empty)",
    "fp_rate_empty": "fraction of images with empty ground truth on which anything is predicted; NaN if the set has no empty images",
    "map_dsb": "DSB2018 score: per image, TP/(TP+FP+FN) of one-to-one object matches at each IoU threshold 0.50, 0.55, ..., 0.95 (a match needs IoU >= t), averaged over the thresholds; then the mean over images. An image with no object in truth or prediction scores 1, one with objects on one side only 0",
    "ap50": "TP/(TP+FP+FN) at IoU >= 0.5 per image (both empty = 1), mean over images",
    "ap75": "TP/(TP+FP+FN) at IoU >= 0.75 per image (both empty = 1), mean over images",
    "pq": "panoptic quality per image (Kirillov et al. 2019; binary PQ as PanNuke/HoVer-Net): sum of matched IoUs / (TP + FP/2 + FN/2) = DQ x SQ, matches one-to-one at IoU >= 0.5; both empty = 1 (as DQ); mean over images",
    "dq": "detection quality TP / (TP + FP/2 + FN/2) at IoU >= 0.5 per image (the per-image object F1; both empty = 1), mean over images",
    "sq": "segmentation quality: mean IoU of the matched pairs (IoU >= 0.5) per image, mean over images that have a match (undefined without one)",
    "count_error": "predicted objects minus truth objects per image (signed), mean over images",
    "count_abs_error": "|predicted objects - truth objects| per image, mean over images",
    "instance_objects": "with instances on, predicted objects are the prediction's own labels when it is a label map, else the 8-connected components of the binary prediction",
    "ci": "95% percentile bootstrap over images (seeded); std is the sample standard deviation (ddof=1)",
}


# --------------------------------------------------------------------------------------------
# Pixel level


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of two same-shaped binary arrays."""
    p, t = _as_bool_pair(pred, truth)
    tp = int(np.count_nonzero(p & t))
    n_p, n_t = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    fp, fn = n_p - tp, n_t - tp
    return tp, fp, fn, p.size - tp - fp - fn


def _div(num: float, den: float, empty: float) -> float:
    return float(num) / float(den) if den > 0 else float(empty)


def dice(pred: np.ndarray, truth: np.ndarray, empty_value: float = NAN) -> float:
    """2·TP / (2·TP + FP + FN). Both empty: `empty_value` (NaN by default; the paper uses 1.0).
    Exactly one empty: 0."""
    tp, fp, fn, _ = confusion(pred, truth)
    return _div(2 * tp, 2 * tp + fp + fn, empty_value)


def iou(pred: np.ndarray, truth: np.ndarray, empty_value: float = NAN) -> float:
    """TP / (TP + FP + FN) (Jaccard). Both empty: `empty_value` (NaN by default). One empty: 0."""
    tp, fp, fn, _ = confusion(pred, truth)
    return _div(tp, tp + fp + fn, empty_value)


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FP). Nothing predicted: 1.0 if the truth is empty too (nothing was claimed and
    nothing was there), else NaN (undefined; the miss shows up in recall)."""
    tp, fp, fn, _ = confusion(pred, truth)
    return _precision(tp, fp, fn)


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FN). Empty truth: NaN (nothing to find)."""
    tp, _, fn, _ = confusion(pred, truth)
    return _div(tp, tp + fn, NAN)


def _precision(tp: int, fp: int, fn: int) -> float:
    if tp + fp == 0:
        return 1.0 if fn == 0 else NAN
    return tp / (tp + fp)


# --------------------------------------------------------------------------------------------
# Set level from per-image confusion counts [(tp, fp, fn, tn), ...]


def _counts(counts: Iterable[Sequence[int]]) -> np.ndarray:
    return np.asarray(list(counts), dtype=np.int64).reshape(-1, 4)


def dice_mean_empty1(counts: Iterable[Sequence[int]]) -> float:
    """Mean per-image Dice, empty vs empty = 1 (paper). `counts`: per-image (tp, fp, fn, tn).
    NaN for an empty set."""
    c = _counts(counts)
    if len(c) == 0:
        return NAN
    den = 2 * c[:, 0] + c[:, 1] + c[:, 2]
    per = np.where(den > 0, 2 * c[:, 0] / np.maximum(den, 1), 1.0)
    return float(per.mean())


def dice_mean_fg(counts: Iterable[Sequence[int]]) -> float:
    """Mean per-image Dice over images whose truth has foreground (tp + fn > 0) (nnU-Net/MONAI).
    NaN if there are none."""
    c = _counts(counts)
    c = c[c[:, 0] + c[:, 2] > 0]
    if len(c) == 0:
        return NAN
    return float(np.mean(2 * c[:, 0] / (2 * c[:, 0] + c[:, 1] + c[:, 2])))


def dice_pooled(counts: Iterable[Sequence[int]]) -> float:
    """2·ΣTP / (2·ΣTP + ΣFP + ΣFN) over all pixels of the set. NaN if prediction and truth are
    empty on every image."""
    tp, fp, fn, _ = _counts(counts).sum(axis=0)
    return _div(2 * tp, 2 * tp + fp + fn, NAN)


def fp_rate_empty(counts: Iterable[Sequence[int]]) -> dict:
    """Over images with empty truth: `rate` = fraction with any predicted foreground pixel,
    `mean_fp_fraction` = mean fraction of their pixels predicted foreground, plus `n_empty` and
    `n_with_fp`. Both fractions NaN when the set has no empty-truth images."""
    c = _counts(counts)
    e = c[c[:, 0] + c[:, 2] == 0]
    if len(e) == 0:
        return {"rate": NAN, "mean_fp_fraction": NAN, "n_empty": 0, "n_with_fp": 0}
    n_with = int(np.count_nonzero(e[:, 1] > 0))
    frac = e[:, 1] / np.maximum(e.sum(axis=1), 1)
    return {"rate": n_with / len(e), "mean_fp_fraction": float(frac.mean()), "n_empty": len(e), "n_with_fp": n_with}


def mean_std_ci(values: Iterable[float], n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """{mean, std, ci_low, ci_high, n} of `values` with NaNs (and None) dropped.

    std is the sample standard deviation (ddof=1; 0 for one value). The CI is a percentile
    bootstrap of the mean, resampling images with replacement `n_boot` times from a generator
    seeded with `seed`, so the same inputs always give the same interval. n = 0: all NaN."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": NAN, "std": NAN, "ci_low": NAN, "ci_high": NAN, "n": 0}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    if n == 1 or n_boot <= 0 or std == 0.0:
        return {"mean": mean, "std": std, "ci_low": mean, "ci_high": mean, "n": n}
    lo, hi = bootstrap_ci(v, n_boot, seed, ci)
    return {"mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "n": n}


# --------------------------------------------------------------------------------------------
# Boundaries


def _boundary(mask: np.ndarray) -> np.ndarray:
    # Pixels with a 4-neighbour outside the mask; the image border counts as outside.
    return mask ^ ndimage.binary_erosion(mask, border_value=0)


def _surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances pred-boundary -> truth-boundary and truth-boundary -> pred-boundary (both
    masks non-empty)."""
    both = pred | truth
    # Crop to the masks' bounding box + 1 px: all boundary pixels (the only places we query and
    # the only zeros of the distance maps) lie inside, so the distances are exact, and the
    # transforms cost a fraction of a full 696x520 image.
    box = []
    for ax in range(both.ndim):
        idx = np.flatnonzero(np.any(both, axis=tuple(a for a in range(both.ndim) if a != ax)))
        box.append(slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2))
    box = tuple(box)
    bp, bt = _boundary(pred[box]), _boundary(truth[box])
    dt_t = ndimage.distance_transform_edt(~bt, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~bp, sampling=spacing)
    return dt_t[bp], dt_p[bt]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] = 1.0) -> float:
    """95th percentile symmetric Hausdorff distance between the masks' boundaries (as medpy's
    hd95: distances from each pred boundary pixel to the nearest truth boundary pixel and vice
    versa, pooled). Boundary = mask XOR binary_erosion(mask), image border counting as outside.
    Both empty: 0.0. Exactly one empty: NaN (undefined; aggregates exclude and count it)."""
    p, t = _as_bool_pair(pred, truth)
    return _hd95(p, t, spacing)


def _hd95(p: np.ndarray, t: np.ndarray, spacing, dists=None) -> float:
    ep, et = not p.any(), not t.any()
    if ep and et:
        return 0.0
    if ep or et:
        return NAN
    d1, d2 = dists if dists is not None else _surface_distances(p, t, spacing)
    return float(np.percentile(np.concatenate([d1, d2]), 95))


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tol: float = BF1_TOL) -> float:
    """Boundary F-score: precision = fraction of pred boundary pixels within `tol` px of the truth
    boundary, recall = the same the other way, F = 2PR / (P + R) (0 if P + R = 0).
    Both empty: 1.0. Exactly one empty: 0.0."""
    p, t = _as_bool_pair(pred, truth)
    return _bf1(p, t, tol)


def _bf1(p: np.ndarray, t: np.ndarray, tol: float, dists=None) -> float:
    ep, et = not p.any(), not t.any()
    if ep and et:
        return 1.0
    if ep or et:
        return 0.0
    d1, d2 = dists if dists is not None else _surface_distances(p, t)
    bp, br = float(np.mean(d1 <= tol)), float(np.mean(d2 <= tol))
    return 2 * bp * br / (bp + br) if bp + br > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Objects (instance label maps)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels renumbered 1..K in order of value, original ids [K], areas [K])."""
    flat = np.asarray(labels).ravel()
    if not np.issubdtype(flat.dtype, np.integer):
        if flat.dtype != np.bool_:
            raise ValueError(f"label map must be integer, got {flat.dtype}")
        flat = flat.astype(np.int64)
    if flat.size == 0 or flat.max() <= 0:
        if flat.size and flat.min() < 0:
            raise ValueError("label map has negative values")
        return np.zeros(flat.size, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if flat.min() < 0:
        raise ValueError("label map has negative values")
    mx = int(flat.max())
    if mx <= 4 * flat.size + 1024:  # bincount is O(pixels + max label): the fast path
        areas = np.bincount(flat, minlength=mx + 1)
        ids = np.flatnonzero(areas)
        ids = ids[ids > 0]
        lut = np.zeros(mx + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids, areas[ids]
    uniq, inv, cnt = np.unique(flat, return_inverse=True, return_counts=True)  # huge label values
    if uniq[0] == 0:
        return inv.astype(np.int64), uniq[1:], cnt[1:]
    return inv.astype(np.int64) + 1, uniq, cnt


class _Overlap(NamedTuple):
    ids_p: np.ndarray  # original ids of pred objects
    ids_t: np.ndarray
    area_p: np.ndarray
    area_t: np.ndarray
    pi: np.ndarray  # 0-based pred index of each overlapping (pred, truth) pair
    ti: np.ndarray
    inter: np.ndarray
    iou: np.ndarray


def _overlaps(pred_labels: np.ndarray, truth_labels: np.ndarray) -> _Overlap:
    """All overlapping (pred, truth) object pairs with intersection and IoU, from one joint
    histogram of the two label maps (no per-object pixel masks)."""
    pred_labels, truth_labels = np.asarray(pred_labels), np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise ValueError(f"label maps differ in shape: {pred_labels.shape} vs {truth_labels.shape}")
    cp, ids_p, area_p = _compact(pred_labels)
    ct, ids_t, area_t = _compact(truth_labels)
    npr, ntr = ids_p.size, ids_t.size
    if npr == 0 or ntr == 0:
        e = np.zeros(0, np.int64)
        return _Overlap(ids_p, ids_t, area_p, area_t, e, e, e, np.zeros(0))
    both = (cp > 0) & (ct > 0)
    key = (cp[both] - 1) * ntr + (ct[both] - 1)
    if npr * ntr <= 4_000_000:
        hist = np.bincount(key, minlength=npr * ntr)
        keys = np.flatnonzero(hist)
        inter = hist[keys]
    else:  # too many objects for a dense pred x truth table
        keys, inter = np.unique(key, return_counts=True)
    pi, ti = keys // ntr, keys % ntr
    iou_v = inter / (area_p[pi] + area_t[ti] - inter)
    return _Overlap(ids_p, ids_t, area_p, area_t, pi, ti, inter, iou_v)


def _match(ov: _Overlap, iou_thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches (pred idx, truth idx, iou) among pairs with IoU >= iou_thr, greedily by
    descending IoU (ties: lower ids first). For iou_thr > 0.5 every candidate is already unique;
    the greedy pass only resolves exact-0.5 ties and thresholds below 0.5."""
    sel = np.flatnonzero(ov.iou >= iou_thr)
    pi, ti, iv = ov.pi[sel], ov.ti[sel], ov.iou[sel]
    if np.unique(pi).size == pi.size and np.unique(ti).size == ti.size:
        return pi, ti, iv
    keep, used_p, used_t = [], set(), set()
    for k in np.lexsort((ti, pi, -iv)):
        if pi[k] not in used_p and ti[k] not in used_t:
            keep.append(k)
            used_p.add(pi[k])
            used_t.add(ti[k])
    keep = np.sort(np.asarray(keep, dtype=np.int64))
    return pi[keep], ti[keep], iv[keep]


def match_objects(
    pred_labels: np.ndarray, truth_labels: np.ndarray, iou_thr: float = OBJ_IOU_THR
) -> list[tuple[int, int, float]]:
    """One-to-one (pred_id, truth_id, iou) matches with IoU >= `iou_thr`, sorted by pred id.

    With a threshold above 0.5 matching is unique by construction (an object cannot overlap two
    disjoint objects by more than half); at exactly 0.5 ties are resolved greedily."""
    ov = _overlaps(pred_labels, truth_labels)
    pi, ti, iv = _match(ov, iou_thr)
    return [(int(ov.ids_p[a]), int(ov.ids_t[b]), float(c)) for a, b, c in zip(pi, ti, iv)]


def _detection(ov: _Overlap, iou_thr: float) -> dict:
    tp = int(_match(ov, iou_thr)[0].size)
    fp, fn = int(ov.ids_p.size) - tp, int(ov.ids_t.size) - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "recall": _div(tp, tp + fn, NAN),
        "precision": _div(tp, tp + fp, NAN),
        "f1": _div(2 * tp, 2 * tp + fp + fn, NAN),
    }


def object_detection(pred_labels: np.ndarray, truth_labels: np.ndarray, iou_thr: float = OBJ_IOU_THR) -> dict:
    """{tp, fp, fn, recall, precision, f1} of one-to-one object matches at IoU >= `iou_thr`.
    recall NaN without truth objects, precision NaN without predicted objects, f1 NaN if both."""
    return _detection(_overlaps(pred_labels, truth_labels), iou_thr)


def _small(ov: _Overlap, max_size: int, iou_thr: float) -> dict:
    small = ov.area_t < max_size
    hit = np.zeros(ov.ids_t.size, dtype=bool)
    hit[ov.ti[ov.iou >= iou_thr]] = True
    n_small, n_det = int(small.sum()), int((small & hit).sum())
    return {"recall": _div(n_det, n_small, NAN), "n_small": n_small, "n_small_detected": n_det}


def small_object_recall(
    pred_labels: np.ndarray, truth_labels: np.ndarray, max_size: int = SMALL_MAX_SIZE, iou_thr: float = OBJ_IOU_THR
) -> dict:
    """Among truth objects with fewer than `max_size` pixels, the fraction that some predicted
    object overlaps with IoU >= `iou_thr`: {recall, n_small, n_small_detected}. recall is NaN
    without small objects; pool the counts (not the ratios) over a set."""
    return _small(_overlaps(pred_labels, truth_labels), max_size, iou_thr)


def _aji(ov: _Overlap) -> float:
    if ov.ids_p.size == 0 and ov.ids_t.size == 0:
        return NAN
    inter_sum = union_sum = 0
    used_p = np.zeros(ov.ids_p.size, dtype=bool)
    paired_t = np.zeros(ov.ids_t.size, dtype=bool)
    if ov.pi.size:
        # For each truth object its max-IoU pred object (ties: lowest id, like np.argmax).
        order = np.lexsort((ov.pi, -ov.iou, ov.ti))
        first = np.ones(order.size, dtype=bool)
        first[1:] = ov.ti[order][1:] != ov.ti[order][:-1]
        best = order[first]
        p, t, i = ov.pi[best], ov.ti[best], ov.inter[best]
        inter_sum = int(i.sum())
        union_sum = int((ov.area_p[p] + ov.area_t[t] - i).sum())
        used_p[p] = True
        paired_t[t] = True
    union_sum += int(ov.area_t[~paired_t].sum()) + int(ov.area_p[~used_p].sum())
    return inter_sum / union_sum


def aji(pred_labels: np.ndarray, truth_labels: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017; as hover-net's get_fast_aji): each truth
    object is paired with the pred object of maximal IoU (a pred may serve several truths); AJI =
    Σ|G∩S| / (Σ|G∪S| + unpaired truth areas + areas of pred objects never picked).
    Both empty: NaN. Exactly one empty: 0."""
    return _aji(_overlaps(pred_labels, truth_labels))


# DSB2018's IoU thresholds 0.5:0.05:0.95, rounded so that e.g. an IoU of exactly 3/5 meets 0.6.
DSB_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def _ap(ov: _Overlap, thresholds: Sequence[float]) -> np.ndarray:
    n_p, n_t = ov.ids_p.size, ov.ids_t.size
    if n_p == 0 and n_t == 0:
        return np.ones(len(thresholds))
    tp = np.asarray([_match(ov, t)[0].size for t in thresholds], dtype=np.float64)
    return tp / (n_p + n_t - tp)  # TP / (TP + FP + FN), FP = n_p - TP, FN = n_t - TP


def average_precision(
    pred_labels: np.ndarray, truth_labels: np.ndarray, thresholds: Sequence[float] = DSB_IOU_THRESHOLDS
) -> np.ndarray:
    """DSB2018's per-threshold score TP/(TP+FP+FN) of one-to-one matches with IoU >= t, one value
    per threshold. No object in truth nor in prediction: 1 at every threshold (nothing to find,
    nothing claimed; the DSB formula is 0/0 there). Objects on one side only: 0."""
    return _ap(_overlaps(pred_labels, truth_labels), thresholds)


def mean_average_precision(
    pred_labels: np.ndarray, truth_labels: np.ndarray, thresholds: Sequence[float] = DSB_IOU_THRESHOLDS
) -> float:
    """DSB2018's image score: `average_precision` averaged over the IoU thresholds 0.5:0.05:0.95
    (both empty: 1; one side empty: 0). A set's score is the mean over its images."""
    return float(_ap(_overlaps(pred_labels, truth_labels), thresholds).mean())


def _pq(ov: _Overlap, iou_thr: float) -> dict:
    pi, _, iv = _match(ov, iou_thr)
    tp = int(pi.size)
    fp, fn = int(ov.ids_p.size) - tp, int(ov.ids_t.size) - tp
    if tp + fp + fn == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": NAN, "tp": 0, "fp": 0, "fn": 0}
    den = tp + 0.5 * fp + 0.5 * fn
    return {
        "pq": float(iv.sum()) / den,
        "dq": tp / den,
        "sq": float(iv.mean()) if tp else NAN,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def panoptic_quality(pred_labels: np.ndarray, truth_labels: np.ndarray, iou_thr: float = OBJ_IOU_THR) -> dict:
    """Binary panoptic quality (Kirillov et al. 2019; PanNuke's bPQ): {pq, dq, sq, tp, fp, fn}.

    Matches are one-to-one at IoU >= `iou_thr` (0.5). DQ = TP / (TP + FP/2 + FN/2) (the object
    F1), SQ = mean IoU of the matched pairs, PQ = sum of matched IoUs / (TP + FP/2 + FN/2) = DQ x SQ.
    No match: SQ NaN (undefined), PQ = DQ = 0 if there are objects. No object on either side:
    PQ = DQ = 1 (as the mean AP), SQ NaN."""
    return _pq(_overlaps(pred_labels, truth_labels), iou_thr)


def count_error(pred_labels: np.ndarray, truth_labels: np.ndarray) -> dict:
    """{n_pred, n_truth, error (n_pred - n_truth, signed), abs_error} of two label maps (objects =
    distinct non-zero labels)."""
    n_p = int(_compact(pred_labels)[1].size)
    n_t = int(_compact(truth_labels)[1].size)
    return {"n_pred": n_p, "n_truth": n_t, "error": n_p - n_t, "abs_error": abs(n_p - n_t)}


def _instance_row(ov: _Overlap) -> dict:
    ap = _ap(ov, DSB_IOU_THRESHOLDS)
    pq = _pq(ov, OBJ_IOU_THR)
    n_p, n_t = int(ov.ids_p.size), int(ov.ids_t.size)
    return {
        "map_dsb": float(ap.mean()),
        "ap50": float(ap[DSB_IOU_THRESHOLDS.index(0.5)]),
        "ap75": float(ap[DSB_IOU_THRESHOLDS.index(0.75)]),
        "pq": pq["pq"],
        "dq": pq["dq"],
        "sq": pq["sq"],
        "n_pred": n_p,
        "n_truth": n_t,
        "count_error": n_p - n_t,
    }


def instance_scores(pred_labels: np.ndarray, truth_labels: np.ndarray) -> dict:
    """The instance figures of one image from one overlap table: map_dsb, ap50, ap75, pq, dq (the
    per-image object F1 at IoU >= 0.5, 1 when both are empty), sq, n_pred, n_truth, count_error
    (n_pred - n_truth)."""
    return _instance_row(_overlaps(pred_labels, truth_labels))


# Keys score_image adds with instances on (and summarize aggregates when the rows carry them).
INSTANCE_KEYS = ("map_dsb", "ap50", "ap75", "pq", "dq", "sq", "n_pred", "n_truth", "count_error")


# --------------------------------------------------------------------------------------------
# One image, and a set


def score_image(
    prob_or_mask: np.ndarray | None,
    truth_fg: np.ndarray,
    truth_labels: np.ndarray | None = None,
    threshold: float = 0.5,
    pred_labels: np.ndarray | None = None,
    instances: bool = False,
) -> dict:
    """All per-image figures. `prob_or_mask`: a bool mask (used as is) or numbers where
    foreground = value > `threshold` (a [0, 1] probability map, or a 0/1 or 0/255 mask).
    `truth_labels`: instance labels (connected components of `truth_fg` if None). Predicted
    objects are the 8-connected components of the thresholded prediction, or `pred_labels`, a
    predicted instance label map (its foreground = labels > 0; `prob_or_mask` may then be None).

    Keys: tp, fp, fn, tn, dice (NaN if both empty), dice_empty1, iou (NaN if both empty),
    precision, recall, hd95, boundary_f1, obj_tp, obj_fp, obj_fn, n_small, n_small_detected, aji,
    truth_empty, pred_empty, fg_fraction_truth; with `instances` (or `pred_labels`) also the
    INSTANCE_KEYS of instance_scores."""
    if pred_labels is not None:
        pred_labels = np.asarray(pred_labels)
        pred = pred_labels > 0
    else:
        a = np.asarray(prob_or_mask)
        pred = a if a.dtype == np.bool_ else a > threshold
    truth = np.asarray(truth_fg, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if truth_labels is None:
        truth_labels = label_components(truth)
    tp, fp, fn, tn = confusion(pred, truth)
    t_empty, p_empty = tp + fn == 0, tp + fp == 0
    dists = None if (t_empty or p_empty) else _surface_distances(pred, truth)
    ov = _overlaps(label_components(pred) if pred_labels is None else pred_labels, truth_labels)
    det = _detection(ov, OBJ_IOU_THR)
    sm = _small(ov, SMALL_MAX_SIZE, OBJ_IOU_THR)
    den = 2 * tp + fp + fn
    extra = _instance_row(ov) if instances or pred_labels is not None else {}
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "dice": _div(2 * tp, den, NAN),
        "dice_empty1": _div(2 * tp, den, 1.0),
        "iou": _div(tp, tp + fp + fn, NAN),
        "precision": _precision(tp, fp, fn),
        "recall": _div(tp, tp + fn, NAN),
        "hd95": _hd95(pred, truth, 1.0, dists),
        "boundary_f1": _bf1(pred, truth, BF1_TOL, dists),
        "obj_tp": det["tp"],
        "obj_fp": det["fp"],
        "obj_fn": det["fn"],
        "n_small": sm["n_small"],
        "n_small_detected": sm["n_small_detected"],
        "aji": _aji(ov),
        "truth_empty": bool(t_empty),
        "pred_empty": bool(p_empty),
        "fg_fraction_truth": (tp + fn) / truth.size,
        **extra,
    }


def summarize(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Set-level figures from score_image rows (NaN or None = undefined).

    Keys (stable; see CONVENTIONS):
      n_images, n_fg_images, n_empty_truth: ints.
      Per-image aggregates, each {mean, std, ci_low, ci_high, n} (bootstrap over images):
        dice_mean_empty1, dice_mean_fg, iou_mean_fg, iou_mean_empty1, precision, recall,
        hd95 (+ n_undefined: images where exactly one mask is empty), boundary_f1, aji.
      Pooled floats: dice_pooled, object_recall, object_precision, object_f1,
        small_object_recall, fp_rate_empty.
      Counts: object_counts {tp, fp, fn}, small_object_counts {n_small, n_small_detected},
        fp_empty_counts {n_empty, n_with_fp, mean_fp_fraction}.
      When the rows carry the instance figures (score_image with instances): map_dsb, ap50, ap75,
        pq, dq, sq, count_error (signed), count_abs_error, each per-image aggregated, and
        instance_counts {n_pred, n_truth}.
    """

    def col(key: str, where: np.ndarray | None = None) -> np.ndarray:
        v = np.asarray([np.nan if r.get(key) is None else r[key] for r in rows], dtype=np.float64)
        return v if where is None else v[where]

    def agg(values: np.ndarray) -> dict:
        return mean_std_ci(values, n_boot=n_boot, seed=seed)

    counts = np.asarray([[r["tp"], r["fp"], r["fn"], r["tn"]] for r in rows], dtype=np.int64).reshape(-1, 4)
    fg = counts[:, 0] + counts[:, 2] > 0
    iou_v, hd = col("iou"), col("hd95")
    otp, ofp, ofn = (int(col(k).sum()) for k in ("obj_tp", "obj_fp", "obj_fn"))
    n_small, n_small_det = int(col("n_small").sum()), int(col("n_small_detected").sum())
    fpe = fp_rate_empty(counts)
    inst = {}
    if rows and all("map_dsb" in r for r in rows):
        err = col("count_error")
        inst = {k: agg(col(k)) for k in ("map_dsb", "ap50", "ap75", "pq", "dq", "sq")}
        inst.update(
            count_error=agg(err),
            count_abs_error=agg(np.abs(err)),
            instance_counts={"n_pred": int(col("n_pred").sum()), "n_truth": int(col("n_truth").sum())},
        )
    return {
        "n_images": len(rows),
        "n_fg_images": int(fg.sum()),
        "n_empty_truth": int((~fg).sum()),
        "dice_mean_empty1": agg(col("dice_empty1")),
        "dice_mean_fg": agg(col("dice", fg)),
        "dice_pooled": dice_pooled(counts),
        "iou_mean_fg": agg(col("iou", fg)),
        "iou_mean_empty1": agg(np.where(np.isnan(iou_v), 1.0, iou_v)),
        "precision": agg(col("precision")),
        "recall": agg(col("recall", fg)),
        "hd95": {**agg(hd), "n_undefined": int(np.isnan(hd).sum())},
        "boundary_f1": agg(col("boundary_f1")),
        "object_recall": _div(otp, otp + ofn, NAN),
        "object_precision": _div(otp, otp + ofp, NAN),
        "object_f1": _div(2 * otp, 2 * otp + ofp + ofn, NAN),
        "object_counts": {"tp": otp, "fp": ofp, "fn": ofn},
        "small_object_recall": _div(n_small_det, n_small, NAN),
        "small_object_counts": {"n_small": n_small, "n_small_detected": n_small_det},
        "aji": agg(col("aji")),
        "fp_rate_empty": fpe["rate"],
        "fp_empty_counts": {k: fpe[k] for k in ("n_empty", "n_with_fp", "mean_fp_fraction")},
        **inst,
    }


def _as_bool_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred).astype(bool, copy=False), np.asarray(truth).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    return p, t
