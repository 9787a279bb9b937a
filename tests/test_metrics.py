"""Hand-computed cases for qmed.evaluate.metrics (each expected number is worked out in a comment)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qmed.evaluate import metrics as M

nan = float("nan")


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def grid(*rows: str) -> np.ndarray:
    """'#' = foreground, digits = instance labels, '.' = background."""
    return np.array([[0 if c == "." else 1 if c == "#" else int(c) for c in r] for r in rows], dtype=np.int32)


E4 = grid("....", "....", "....", "....")
SQ = grid("##..", "##..", "....", "....")  # 4 px top-left
ROW = grid("###.", "....", "....", "....")  # 3 px; vs SQ: tp=2 fp=1 fn=2 tn=11


# ------------------------------------------------------------------ pixel level


@pytest.mark.parametrize(
    "pred, truth, counts, d, j, p, r",
    [
        (E4, E4, (0, 0, 0, 16), nan, nan, 1.0, nan),  # nothing to find, nothing claimed
        (E4, SQ, (0, 0, 4, 12), 0.0, 0.0, nan, 0.0),  # missed all; precision undefined
        (SQ, E4, (0, 4, 0, 12), 0.0, 0.0, 0.0, nan),  # false alarm; recall undefined
        (SQ, SQ, (4, 0, 0, 12), 1.0, 1.0, 1.0, 1.0),
        (ROW, SQ, (2, 1, 2, 11), 4 / 7, 2 / 5, 2 / 3, 1 / 2),  # 2*2/(4+1+2), 2/(2+1+2)
    ],
    ids=["empty-empty", "empty-pred", "empty-truth", "perfect", "partial"],
)
def test_pixel_metrics(pred, truth, counts, d, j, p, r):
    assert M.confusion(pred, truth) == counts
    assert same(M.dice(pred, truth), d)
    assert same(M.iou(pred, truth), j)
    assert same(M.precision(pred, truth), p)
    assert same(M.recall(pred, truth), r)


def test_empty_value():
    assert M.dice(E4, E4, empty_value=1.0) == 1.0
    assert M.iou(E4, E4, empty_value=1.0) == 1.0
    assert M.dice(SQ, E4, empty_value=1.0) == 0.0  # only both-empty uses empty_value


def test_against_sklearn():
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(3)
    for _ in range(5):
        t = rng.random((20, 30)) < 0.3
        p = t ^ (rng.random((20, 30)) < 0.2)
        assert M.dice(p, t) == pytest.approx(f1_score(t.ravel(), p.ravel()))
        assert M.iou(p, t) == pytest.approx(jaccard_score(t.ravel(), p.ravel()))


# ------------------------------------------------------------------ the three Dice figures

# img1: tp=2 fp=2 fn=2 -> Dice 4/8 = 1/2;  img2: empty vs empty;  img3: tp=4 fp=0 fn=4 -> 8/12 = 2/3
IMG1 = (grid("##..", "....", "##..", "...."), grid("##..", "##..", "....", "...."))
IMG2 = (E4, E4)
IMG3 = (grid("##..", "##..", "....", "...."), grid("####", "####", "....", "...."))
SET3 = [M.confusion(p, t) for p, t in (IMG1, IMG2, IMG3)]


def test_three_dice_figures():
    assert M.dice_mean_empty1(SET3) == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)  # 13/18
    assert M.dice_mean_fg(SET3) == pytest.approx((1 / 2 + 2 / 3) / 2)  # 7/12
    assert M.dice_pooled(SET3) == pytest.approx(12 / 20)  # 2*6 / (2*6 + 2 + 6)


@pytest.mark.parametrize(
    "images, rate, frac, n_empty",
    [
        ([IMG1, IMG3], nan, nan, 0),  # no empty-truth images: undefined
        ([IMG2], 0.0, 0.0, 1),
        ([IMG1, IMG2, (ROW, E4)], 0.5, (0 + 3 / 16) / 2, 2),  # one of two empty images has 3 FP px
    ],
)
def test_fp_rate_empty(images, rate, frac, n_empty):
    out = M.fp_rate_empty([M.confusion(p, t) for p, t in images])
    assert same(out["rate"], rate) and same(out["mean_fp_fraction"], frac) and out["n_empty"] == n_empty


def test_set_figures_all_empty():
    c = [M.confusion(E4, E4)] * 2
    assert M.dice_mean_empty1(c) == 1.0
    assert math.isnan(M.dice_mean_fg(c)) and math.isnan(M.dice_pooled(c))


# ------------------------------------------------------------------ bootstrap


def test_mean_std_ci():
    v = [0.2, 0.9, 0.5, nan, 0.7, 0.4, 1.0, 0.0]
    a = M.mean_std_ci(v, n_boot=500, seed=1)
    assert a == M.mean_std_ci(v, n_boot=500, seed=1)  # deterministic with the seed
    assert a["n"] == 7  # NaN dropped
    assert a["mean"] == pytest.approx(np.nanmean(v))
    assert a["std"] == pytest.approx(np.nanstd(v, ddof=1))
    assert a["ci_low"] < a["mean"] < a["ci_high"]
    assert M.mean_std_ci(v, n_boot=500, seed=2) != a
    assert M.mean_std_ci([nan, None])["n"] == 0 and math.isnan(M.mean_std_ci([])["mean"])
    one = M.mean_std_ci([0.3])
    assert (one["mean"], one["std"], one["ci_low"], one["ci_high"]) == (0.3, 0.0, 0.3, 0.3)


# ------------------------------------------------------------------ boundaries


def dot(shape, *points):
    m = np.zeros(shape, dtype=bool)
    for r, c in points:
        m[r, c] = True
    return m


SQUARE = np.zeros((20, 40), dtype=bool)
SQUARE[5:15, 5:15] = True  # 10x10, boundary = 36-pixel ring
SQUARE_OUT = SQUARE.copy()
SQUARE_OUT[10, 30] = True  # stray pixel 16 px from the ring (col 30 vs col 14)
BLOCK_A = np.zeros((8, 10), dtype=bool)
BLOCK_A[2:4, 0:2] = True  # 2x2: every pixel is boundary
BLOCK_B = np.roll(BLOCK_A, 3, axis=1)  # shifted 3 px right


@pytest.mark.parametrize(
    "pred, truth, spacing, expected",
    [
        (dot((8, 8), (2, 2)), dot((8, 8), (2, 5)), 1.0, 3.0),  # single pixels 3 px apart
        (dot((8, 8), (2, 2)), dot((8, 8), (2, 5)), 2.0, 6.0),  # ... at 2 units per px
        (BLOCK_A, BLOCK_B, 1.0, 3.0),  # distances {2,2,3,3} each way; 95th pct of pooled 8 -> 3
        (SQUARE, SQUARE, 1.0, 0.0),
        (SQUARE_OUT, SQUARE, 1.0, 0.0),  # 72 zeros + one 16: the 95th percentile ignores it
        (np.zeros((5, 5), bool), np.zeros((5, 5), bool), 1.0, 0.0),  # both empty
        (np.zeros((5, 5), bool), dot((5, 5), (1, 1)), 1.0, nan),  # one empty: undefined
        (dot((5, 5), (1, 1)), np.zeros((5, 5), bool), 1.0, nan),
    ],
)
def test_hd95(pred, truth, spacing, expected):
    assert same(M.hd95(pred, truth, spacing=spacing), expected)


def test_hd95_image_border_is_outside():
    full = np.ones((6, 6), dtype=bool)  # whole image: boundary is the outer ring
    inner = np.zeros((6, 6), dtype=bool)
    inner[1:5, 1:5] = True  # its ring is 1 px inside
    # 12 inner-ring px at 1; outer ring: 16 px at 1, 4 corners at sqrt(2). 95th pct of 32 -> sqrt(2)
    assert M.hd95(full, inner) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize(
    "pred, truth, tol, expected",
    [
        (SQUARE, SQUARE, 3, 1.0),
        (dot((8, 8), (2, 2)), dot((8, 8), (2, 5)), 3, 1.0),  # 3 px off: within tolerance
        (dot((8, 8), (2, 2)), dot((8, 8), (2, 6)), 3, 0.0),  # 4 px off: outside
        (SQUARE_OUT, SQUARE, 3, 72 / 73),  # P = 36/37, R = 1 -> 2PR/(P+R) = 72/73
        (np.zeros((5, 5), bool), np.zeros((5, 5), bool), 3, 1.0),
        (np.zeros((5, 5), bool), dot((5, 5), (1, 1)), 3, 0.0),
        (dot((5, 5), (1, 1)), np.zeros((5, 5), bool), 3, 0.0),
    ],
)
def test_boundary_f1(pred, truth, tol, expected):
    assert M.boundary_f1(pred, truth, tol=tol) == pytest.approx(expected)


def test_boundary_metrics_against_brute_force():
    """Full pairwise distances between boundary pixels (no distance transform, no cropping)."""
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    def ring(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0))

    rng = np.random.default_rng(1)
    for _ in range(10):
        t = ndimage.binary_opening(rng.random((30, 40)) < 0.5)
        p = ndimage.binary_dilation(t) if rng.random() < 0.5 else ndimage.binary_opening(rng.random((30, 40)) < 0.5)
        if rng.random() < 0.5:  # small masks in a larger image: exercises the bounding-box crop
            p, t = (np.pad(a, ((7, 20), (0, 33))) for a in (p, t))
        d = cdist(ring(p), ring(t))
        d1, d2 = d.min(axis=1), d.min(axis=0)
        assert M.hd95(p, t) == pytest.approx(np.percentile(np.concatenate([d1, d2]), 95))
        bp, br = np.mean(d1 <= 3), np.mean(d2 <= 3)
        assert M.boundary_f1(p, t) == pytest.approx(2 * bp * br / (bp + br))


# ------------------------------------------------------------------ objects

# truth 1 (4 px) predicted exactly by A=1; truth 2 (6 px) covered 4/6 by B=2 (IoU 4/6);
# truth 3 (1 px) missed; pred C=3 (2 px) is a false positive.
T_OBJ = grid(
    "11..222.",
    "11..222.",
    "........",
    ".......3",
)
P_OBJ = grid(
    "11..22..",
    "11..22..",
    "........",
    "33......",
)
# one pred spanning two truths: IoU 2/5 with each -> no match; AJI (2+2)/(5+5) (pred counted twice)
T_MERGE, P_MERGE = grid("11.22"), grid("11111")
# two preds halving one truth: IoU exactly 0.5 each -> one match (one-to-one), the other is FP
T_TIE, P_TIE = grid("1111"), grid("1122")


@pytest.mark.parametrize(
    "pred, truth, det, small, aji",
    [
        (P_OBJ, T_OBJ, (2, 1, 1), (3, 2), 8 / 13),  # I = 4+4; U = 4+6 + 1 (truth 3) + 2 (pred C)
        (P_MERGE, T_MERGE, (0, 1, 2), (2, 0), 4 / 10),
        (P_TIE, T_TIE, (1, 1, 0), (1, 1), 2 / 6),  # truth picks pred 1 (first max): I=2, U=4 + unused pred 2
        (T_OBJ, T_OBJ, (3, 0, 0), (3, 3), 1.0),
        (np.zeros_like(T_OBJ), T_OBJ, (0, 0, 3), (3, 0), 0.0),
        (P_OBJ, np.zeros_like(P_OBJ), (0, 3, 0), (0, 0), 0.0),
        (np.zeros((3, 3), np.int32), np.zeros((3, 3), np.int32), (0, 0, 0), (0, 0), nan),
    ],
    ids=["mixed", "merge", "tie", "perfect", "empty-pred", "empty-truth", "both-empty"],
)
def test_objects(pred, truth, det, small, aji):
    d = M.object_detection(pred, truth)
    assert (d["tp"], d["fp"], d["fn"]) == det
    tp, fp, fn = det
    assert same(d["recall"], tp / (tp + fn) if tp + fn else nan)
    assert same(d["precision"], tp / (tp + fp) if tp + fp else nan)
    s = M.small_object_recall(pred, truth)
    assert (s["n_small"], s["n_small_detected"]) == small
    assert same(s["recall"], small[1] / small[0] if small[0] else nan)
    assert same(M.aji(pred, truth), aji)


def test_match_objects_ids_and_iou():
    # original label values come back, not internal indices
    t = np.where(T_OBJ > 0, T_OBJ * 100, 0)
    p = np.where(P_OBJ > 0, P_OBJ + 7, 0)
    assert M.match_objects(p, t) == [(8, 100, 1.0), (9, 200, pytest.approx(4 / 6))]
    assert M.object_detection(p, t)["f1"] == pytest.approx(2 / 3)  # 2*2 / (4 + 1 + 1)


def test_small_object_size_limit():
    t = np.zeros((20, 20), np.int32)
    t[0:7, 0:7] = 1  # 49 px: small
    t[10:18, 10:17] = 2  # 56 px: not small
    s = M.small_object_recall(t, t, max_size=50)
    assert (s["n_small"], s["n_small_detected"], s["recall"]) == (1, 1, 1.0)


def _aji_reference(pred, truth):
    """hover-net get_fast_aji written with per-object masks (slow but obviously right)."""
    t_ids, p_ids = [i for i in np.unique(truth) if i], [i for i in np.unique(pred) if i]
    inter = np.array([[np.sum((truth == t) & (pred == p)) for p in p_ids] for t in t_ids], float).reshape(
        len(t_ids), len(p_ids)
    )
    union = np.array([[np.sum((truth == t) | (pred == p)) for p in p_ids] for t in t_ids], float).reshape(
        len(t_ids), len(p_ids)
    )
    iou = inter / np.maximum(union, 1)
    c = u = 0.0
    used = set()
    for i, t in enumerate(t_ids):
        j = int(np.argmax(iou[i])) if p_ids else -1
        if j >= 0 and iou[i, j] > 0:
            c, u = c + inter[i, j], u + union[i, j]
            used.add(j)
        else:
            u += np.sum(truth == t)
    u += sum(np.sum(pred == p) for j, p in enumerate(p_ids) if j not in used)
    return c / u


def test_aji_and_matching_against_reference():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(10):
        truth, _ = ndimage.label(ndimage.binary_opening(rng.random((40, 40)) < 0.45))
        pred = M.label_components(truth > 0 if rng.random() < 0.3 else (truth > 0) ^ (rng.random((40, 40)) < 0.1))
        assert M.aji(pred, truth) == pytest.approx(_aji_reference(pred, truth))
        for p, t, v in M.match_objects(pred, truth):
            inter, uni = np.sum((pred == p) & (truth == t)), np.sum((pred == p) | (truth == t))
            assert v == pytest.approx(inter / uni) and v >= 0.5


def test_label_components_8_connected():
    lab = M.label_components(grid("#...", ".#..", "...#"))
    assert lab.dtype == np.int32 and lab.max() == 2  # diagonal neighbours join


# ------------------------------------------------------------------ score_image / summarize


def test_score_image_and_summarize():
    prob = np.where(P_OBJ > 0, 0.9, 0.1).astype(np.float32)
    row = M.score_image(prob, T_OBJ > 0, T_OBJ)
    # pixels: tp = 4 + 4, fp = 2, fn = 2 + 1
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (8, 2, 3, 32 - 13)
    assert row["dice"] == pytest.approx(16 / 21) and row["dice_empty1"] == row["dice"]
    assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (2, 1, 1)
    assert row["aji"] == pytest.approx(8 / 13)
    assert not row["truth_empty"] and not row["pred_empty"]
    assert row["fg_fraction_truth"] == pytest.approx(11 / 32)
    # score_image derives truth labels when not given
    assert M.score_image(prob, T_OBJ > 0)["n_small"] == 3

    rows = [M.score_image(p.astype(bool), t.astype(bool)) for p, t in (IMG1, IMG2, IMG3)]
    s = M.summarize(rows, n_boot=200)
    assert (s["n_images"], s["n_fg_images"], s["n_empty_truth"]) == (3, 2, 1)
    assert s["dice_mean_empty1"]["mean"] == pytest.approx(13 / 18) and s["dice_mean_empty1"]["n"] == 3
    assert s["dice_mean_fg"]["mean"] == pytest.approx(7 / 12) and s["dice_mean_fg"]["n"] == 2
    assert s["dice_pooled"] == pytest.approx(0.6)
    assert s["fp_rate_empty"] == 0.0 and s["fp_empty_counts"]["n_empty"] == 1
    assert s["hd95"]["n"] == 3 and s["hd95"]["n_undefined"] == 0
    required = {
        "dice_mean_empty1",
        "dice_mean_fg",
        "dice_pooled",
        "iou_mean_fg",
        "precision",
        "recall",
        "hd95",
        "boundary_f1",
        "object_recall",
        "object_precision",
        "object_f1",
        "small_object_recall",
        "aji",
        "fp_rate_empty",
        "n_images",
        "n_fg_images",
        "n_empty_truth",
    }
    assert required <= set(s)
    assert set(M.CONVENTIONS) >= required - {"n_images", "n_fg_images", "n_empty_truth"}


def test_summarize_hd95_undefined_counted():
    rows = [M.score_image(E4 > 0, SQ > 0), M.score_image(SQ > 0, SQ > 0)]
    s = M.summarize(rows, n_boot=100)
    assert s["hd95"]["n_undefined"] == 1 and s["hd95"]["n"] == 1 and s["hd95"]["mean"] == 0.0
    assert s["dice_mean_fg"]["mean"] == 0.5


# ------------------------------------------------------------------ instance figures (issue 20)

# An IoU of exactly 3/5: pred covers 3 of the truth's 5 px -> meets t = 0.50, 0.55, 0.60 only.
T_60, P_60 = grid("11111"), grid("111..")
E3 = np.zeros((3, 3), np.int32)


@pytest.mark.parametrize(
    "pred, truth, m_ap, ap50, ap75, pq, dq, sq, count",
    [
        # IoUs 1 and 4/6: tp = 2 at t <= 0.65 (4 thresholds): 2/(2+1+1) = 1/2; tp = 1 above (6): 1/(1+2+2) = 1/5
        # -> mAP (4/2 + 6/5)/10 = 0.32. PQ: (1 + 2/3) / (2 + 1/2 + 1/2) = 5/9 = DQ 2/3 x SQ 5/6.
        (P_OBJ, T_OBJ, 0.32, 1 / 2, 1 / 5, 5 / 9, 2 / 3, 5 / 6, 0),
        (P_MERGE, T_MERGE, 0.0, 0.0, 0.0, 0.0, 0.0, nan, -1),  # IoUs 2/5: no match; 1 pred for 2 truths
        # IoU exactly 0.5 twice: one match at t = 0.5 only: 1/(1+1+0); above: 0/(0+2+1) -> mAP 0.05.
        # PQ 0.5 / (1 + 1/2) = 1/3, DQ 2/3, SQ 1/2.
        (P_TIE, T_TIE, 0.05, 1 / 2, 0.0, 1 / 3, 2 / 3, 1 / 2, +1),
        (P_60, T_60, 0.3, 1.0, 0.0, 0.6, 1.0, 0.6, 0),  # 3 of 10 thresholds matched (0.6 itself included)
        (T_OBJ, T_OBJ, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0),
        (np.zeros_like(T_OBJ), T_OBJ, 0.0, 0.0, 0.0, 0.0, 0.0, nan, -3),  # nothing predicted
        (P_OBJ, np.zeros_like(P_OBJ), 0.0, 0.0, 0.0, 0.0, 0.0, nan, +3),  # nothing there
        (E3, E3, 1.0, 1.0, 1.0, 1.0, 1.0, nan, 0),  # both empty: nothing to find, nothing claimed = 1
    ],
    ids=["mixed", "merge", "tie", "iou-0.6", "perfect", "empty-pred", "empty-truth", "both-empty"],
)
def test_instance_figures(pred, truth, m_ap, ap50, ap75, pq, dq, sq, count):
    assert M.mean_average_precision(pred, truth) == pytest.approx(m_ap)
    ap = M.average_precision(pred, truth)
    assert ap.shape == (10,) and ap[0] == pytest.approx(ap50) and ap[5] == pytest.approx(ap75)
    q = M.panoptic_quality(pred, truth)
    assert same(q["pq"], pq) and same(q["dq"], dq) and same(q["sq"], sq)
    if not math.isnan(sq):
        assert q["pq"] == pytest.approx(q["dq"] * q["sq"])
    c = M.count_error(pred, truth)
    assert c["error"] == count and c["abs_error"] == abs(count) and c["n_pred"] - c["n_truth"] == count
    row = M.instance_scores(pred, truth)
    assert set(row) == set(M.INSTANCE_KEYS)
    assert row["map_dsb"] == pytest.approx(m_ap) and same(row["pq"], pq) and row["count_error"] == count


def test_dsb_thresholds():
    assert M.DSB_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    # A custom threshold list: the pair of IoU 4/6 in P_OBJ counts at 0.5 and not at 0.7.
    assert list(M.average_precision(P_OBJ, T_OBJ, thresholds=(0.5, 0.7))) == pytest.approx([1 / 2, 1 / 5])


def test_mean_ap_and_pq_against_brute_force():
    """Per-object masks, every pair's IoU, and a match = IoU >= t (unique above 0.5)."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    for _ in range(8):
        truth, _ = ndimage.label(ndimage.binary_opening(rng.random((40, 40)) < 0.45))
        noisy = (truth > 0) ^ (rng.random((40, 40)) < 0.08)
        pred = M.label_components(noisy)
        tid, pid = [i for i in np.unique(truth) if i], [i for i in np.unique(pred) if i]
        iou = np.array(
            [[np.sum((truth == t) & (pred == p)) / np.sum((truth == t) | (pred == p)) for p in pid] for t in tid]
        )
        aps = []
        for thr in M.DSB_IOU_THRESHOLDS:
            tp = int(np.sum(iou >= thr)) if thr > 0.5 else len(M.match_objects(pred, truth, thr))
            aps.append(tp / (len(pid) + len(tid) - tp))
        assert M.mean_average_precision(pred, truth) == pytest.approx(np.mean(aps))
        matched = np.array(
            [v for _, _, v in M.match_objects(pred, truth, 0.5)]
        )  # IoU > 0.5, plus exact-0.5 ties resolved
        assert np.sort(matched[matched > 0.5]) == pytest.approx(np.sort(iou[iou > 0.5]))
        q = M.panoptic_quality(pred, truth)
        assert q["pq"] == pytest.approx(
            matched.sum() / (matched.size + 0.5 * (len(pid) - matched.size) + 0.5 * (len(tid) - matched.size))
        )


def test_score_image_with_predicted_labels():
    # Two touching truth objects. As a label map the prediction keeps them apart: 2 matches.
    # As a binary mask its one connected component covers both (IoU 2/4 each): 1 match at 0.5.
    truth = grid("1122")
    row = M.score_image(None, truth > 0, truth, pred_labels=truth)
    assert (row["obj_tp"], row["map_dsb"], row["pq"], row["n_pred"]) == (2, 1.0, 1.0, 2)
    assert row["dice"] == 1.0  # the pixel figures use labels > 0
    cc = M.score_image(truth > 0, truth > 0, truth, instances=True)
    assert (cc["obj_tp"], cc["n_pred"], cc["count_error"]) == (1, 1, -1)
    assert cc["map_dsb"] == pytest.approx(0.05)  # 1/(1+0+1) at t = 0.5 only
    assert "map_dsb" not in M.score_image(truth > 0, truth > 0, truth)  # off unless asked


def test_summarize_instance_figures():
    rows = [
        M.score_image(None, T_OBJ > 0, T_OBJ, pred_labels=P_OBJ),  # mAP 0.32, PQ 5/9, count 0
        M.score_image(None, T_MERGE > 0, T_MERGE, pred_labels=P_MERGE),  # 0, 0, -1
        M.score_image(None, E3 > 0, E3, pred_labels=E3),
    ]  # both empty: 1, 1, 0
    s = M.summarize(rows, n_boot=100)
    assert s["map_dsb"]["mean"] == pytest.approx((0.32 + 0 + 1) / 3) and s["map_dsb"]["n"] == 3
    assert s["pq"]["mean"] == pytest.approx((5 / 9 + 0 + 1) / 3)
    assert s["sq"]["n"] == 1 and s["sq"]["mean"] == pytest.approx(5 / 6)  # only the first image has a match
    assert s["count_error"]["mean"] == pytest.approx(-1 / 3) and s["count_abs_error"]["mean"] == pytest.approx(1 / 3)
    assert s["instance_counts"] == {"n_pred": 4, "n_truth": 5}
    assert {"map_dsb", "pq", "dq", "sq", "count_error", "count_abs_error"} <= set(M.CONVENTIONS)
    assert "map_dsb" not in M.summarize([M.score_image(E3 > 0, E3 > 0)], n_boot=10)
