"""Score a model on whole validation images with the section-3 metrics."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qmed.config import QmedConfig
from qmed.data.batches import LoadedPairs
from qmed.evaluate.metrics import score_image, summarize
from qmed.segment.predict import predict_image


def validate(
    model: nn.Module,
    data: LoadedPairs,
    cfg: QmedConfig,
    device: torch.device,
    tta: int = 1,
    n_boot: int = 0,
    keep_probs: bool = False,
    cpu_bf16: bool = False,
):
    """-> (summary dict, per-image rows[, probabilities CxHxW float16: the foreground, then an
    instance head's contact map]). Scored on the foreground channel."""
    rows, probs = [], []
    for i in range(len(data)):
        img, fg, labels = data[i]
        maps, _ = predict_image(
            model, img, cfg, tta=tta, device=device, rescale=False, cpu_bf16=cpu_bf16, channels=keep_probs
        )
        prob = maps[0] if keep_probs else maps
        row = score_image(prob, fg, labels, threshold=cfg.predict.threshold)
        row["name"] = data.pairs[i].name
        rows.append(row)
        if keep_probs:
            probs.append(maps.astype(np.float16))
    summary = summarize(rows, n_boot=n_boot, seed=cfg.train.seed)
    return (summary, rows, probs) if keep_probs else (summary, rows)
