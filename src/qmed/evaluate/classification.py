"""Classification metrics: plain functions of labels (N,) and class probabilities (N, K).

Binary (K = 2; threshold on the positive class's probability, default 0.5): accuracy, balanced
accuracy, ROC AUC (sklearn), F1, sensitivity (recall of positives), specificity (recall of
negatives). Multi-class: accuracy, balanced accuracy (= macro recall = sensitivity), macro
one-vs-rest AUC, macro F1, macro specificity; predictions are the arg-max. A metric is NaN where
it is undefined (e.g. AUC with one class present).

`bootstrap_metrics` adds a 95 % percentile bootstrap CI over cases (`qmed.evaluate.stats`, 1000
resamples, seeded); resamples where a metric is undefined are left out and counted.
`metric_rows` scores many resamples at once (vectorised).
"""

from __future__ import annotations

import numpy as np

from qmed.evaluate.stats import bootstrap_indices, percentile_interval

METRICS = ("auc", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity")


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def auc_rows(pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each row (Mann-Whitney U with average ranks for ties; equals sklearn's
    roc_auc_score). pos: (B, n) bool, score: (B, n). NaN for a row with one class only."""
    from scipy.stats import rankdata

    r = rankdata(score, axis=1)
    n_pos = pos.sum(axis=1).astype(np.float64)
    n_neg = pos.shape[1] - n_pos
    u = (r * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return _div(u, n_pos * n_neg)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(a, axis=axis)


def metric_rows(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Metrics of B sets at once: y (B, n) int, prob (B, n, K) -> {metric: (B,)}; NaN where undefined."""
    k = prob.shape[2]
    pred = (prob[..., 1] >= threshold).astype(np.int64) if k == 2 else prob.argmax(axis=2)
    out = {"accuracy": _div((pred == y).sum(axis=1), np.full(len(y), y.shape[1]))}
    if k == 2:
        p, t = pred == 1, y == 1
        tp, fp = (p & t).sum(1), (p & ~t).sum(1)
        fn, tn = (~p & t).sum(1), (~p & ~t).sum(1)
        sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
        out.update(
            sensitivity=sens,
            specificity=spec,
            balanced_accuracy=(sens + spec) / 2,
            f1=_div(2 * tp, 2 * tp + fp + fn),
            auc=auc_rows(t, prob[..., 1]),
        )
        return out
    rec, spc, f1s, aucs = [], [], [], []
    for c in range(k):
        p, t = pred == c, y == c
        tp, fp = (p & t).sum(1), (p & ~t).sum(1)
        fn, tn = (~p & t).sum(1), (~p & ~t).sum(1)
        rec.append(_div(tp, tp + fn))
        spc.append(_div(tn, tn + fp))
        f1s.append(_div(2 * tp, 2 * tp + fp + fn))
        aucs.append(auc_rows(t, prob[..., c]))
    rec_m = _nanmean(np.stack(rec, 1), 1)
    # macro one-vs-rest AUC is defined only when every class occurs (as in sklearn)
    out.update(
        sensitivity=rec_m,
        balanced_accuracy=rec_m,
        specificity=_nanmean(np.stack(spc, 1), 1),
        f1=_nanmean(np.stack(f1s, 1), 1),
        auc=np.stack(aucs, 1).mean(axis=1),
    )
    return out


def predictions(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    if prob.shape[1] == 2:
        return (prob[:, 1] >= threshold).astype(np.int64)
    return prob.argmax(axis=1)


def classification_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Point metrics of labels `y` (N,) and class probabilities `prob` (N, K); NaN where undefined.
    AUC is sklearn's roc_auc_score (binary: on the positive class's probability; multi-class:
    one-vs-rest, macro), NaN when a class is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    rows = metric_rows(y[None], prob[None], threshold)
    out = {m: float(v[0]) for m, v in rows.items()}
    k = prob.shape[1]
    if len(np.unique(y)) == k and len(y) > 0:
        out["auc"] = float(
            roc_auc_score(y, prob[:, 1])
            if k == 2
            else roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(k)))
        )
    else:
        out["auc"] = float("nan")
    return {m: out[m] for m in METRICS}


def bootstrap_metrics(
    y: np.ndarray, prob: np.ndarray, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """-> ({metric: {value, ci_low, ci_high, n_boot}}, {metric: bootstrap values}).

    Percentile bootstrap over cases: `n_boot` resamples with replacement from a generator seeded
    with `seed`; resamples where a metric is undefined (e.g. AUC of a resample with one class)
    are dropped, and n_boot counts the rest."""
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    point = classification_metrics(y, prob, threshold)
    n = len(y)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for idx in bootstrap_indices(n, n_boot if n > 1 else 0, seed, max_elements=4_000_000 // max(1, prob.shape[1])):
        for m, v in metric_rows(y[idx], prob[idx], threshold).items():
            parts[m].append(v)
    summary, arrays = {}, {}
    for m in METRICS:
        b = np.concatenate(parts[m]) if parts[m] else np.zeros(0)
        arrays[m] = b[np.isfinite(b)]
        lo, hi = percentile_interval(b, ci)
        summary[m] = {"value": point[m], "ci_low": lo, "ci_high": hi, "n_boot": int(arrays[m].size)}
    return summary, arrays
