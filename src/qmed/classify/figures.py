"""A classifier's figures: ROC curve, confusion matrix and the bootstrap distributions of its metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qmed.evaluate.classification import METRICS, predictions
from qmed.io.figures import pyplot, save_figure


def write_figures(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    boots: dict[str, np.ndarray],
    out: Path,
    threshold: float = 0.5,
    title: str = "",
) -> dict[str, str]:
    """ROC curve, confusion matrix and bootstrap violin plot as PNGs under `out`."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    k = prob.shape[1]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    targets = [(1, classes[1])] if k == 2 else list(enumerate(classes))
    for c, name in targets:
        yc = (y == c).astype(int)
        if 0 < yc.sum() < len(yc):
            fpr, tpr, _ = roc_curve(yc, prob[:, c])
            from sklearn.metrics import auc as _auc

            ax.plot(fpr, tpr, label=f"{name} (AUC {_auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity (FPR)")
    ax.set_ylabel("sensitivity (TPR)")
    ax.set_title(f"ROC {title}".strip())
    ax.legend(loc="lower right", fontsize=8)
    paths["roc"] = str(out / "roc.png")
    save_figure(fig, out / "roc.png", dpi=110, tight=True)

    pred = predictions(prob, threshold)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y, pred):
        cm[t, p] += 1
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_xticks(range(k), classes, rotation=30)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion {title}".strip())
    paths["confusion"] = str(out / "confusion.png")
    save_figure(fig, out / "confusion.png", dpi=110, tight=True)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [m for m in METRICS if boots.get(m) is not None and len(boots[m]) > 1]
    if names:
        ax.violinplot([boots[m] for m in names], showmedians=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"bootstrap distributions ({max((len(boots[m]) for m in names), default=0)} resamples) {title}".strip()
    )
    paths["violin"] = str(out / "bootstrap_violin.png")
    save_figure(fig, out / "bootstrap_violin.png", dpi=110, tight=True)
    return paths
