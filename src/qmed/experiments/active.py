"""MC-Dropout active learning: the "MC-Dropout active learning" rung of Table II (SPEC S13).

Uncertainty (Gal & Ghahramani, 2016): with the model in eval mode except its dropout layers
(BatchNorm keeps its running statistics), T stochastic forward passes give foreground
probabilities p_1..p_T at every pixel. An image's score is the mean over its pixels of the
predictive variance Var_t(p_t) (population variance over the T passes, in probability units, so
scores lie in [0, 0.25]). Pixels the model is sure of, whatever the class, add ~0; the score is
high where masks disagree between passes. The T passes run as one batch of T copies of the image
(each copy draws its own dropout masks), seeded, on a centre crop of `data.crop` px (the training
crop size) so a pool of large images costs T crop-sized passes per image.

Simulated labelling (`run_active_learning`): the training folder's masks are held back; a seeded
`start` fraction of its images is "labelled", a model is trained on them, the `step` fraction of
the pool with the highest scores is "annotated" (its masks added), and the model is retrained
from scratch on the larger set, for `rounds` trainings in all. The rung's time budget is split
evenly over the rounds' training loops (each fitted like `qmed benchmark quality`'s runs); the
scoring passes are selection, reported in the history and in the total time, not the budget. The
last round's model is the rung's model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qmed.errors import QmedInputError


def enable_mc_dropout(model: nn.Module) -> int:
    """Eval mode for everything but dropout layers (left stochastic); returns how many there are."""
    model.eval()
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    for m in drops:
        m.train()
    return len(drops)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y : y + size, x : x + size]


@torch.no_grad()
def mc_dropout_scores(
    model: nn.Module,
    images: list[np.ndarray],
    passes: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    crop: int | None = None,
) -> np.ndarray:
    """Mean per-pixel predictive variance over `passes` dropout samples, one score per HxWx3 image."""
    from qmed.segment.predict import pad_multiple

    if passes < 2:
        raise QmedInputError(None, f"MC-Dropout needs at least 2 passes, got {passes}")
    device = torch.device(device)
    was_training = model.training
    if enable_mc_dropout(model) == 0:
        model.train(was_training)
        raise QmedInputError(
            None, "MC-Dropout needs a model with dropout: set model.dropout > 0 (attention_unet, ms_attention_unet)"
        )
    scores = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for img in images:
                img = centre_crop(img, crop) if crop else img
                x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]
                h, w = x.shape[-2:]
                xp, _ = pad_multiple(x)
                p = torch.sigmoid(model(xp.expand(passes, -1, -1, -1).to(device)).float())[:, 0, :h, :w]
                scores.append(float(p.var(dim=0, unbiased=False).mean()))
    finally:
        model.train(was_training)
    return np.asarray(scores, dtype=np.float64)


def select_most_uncertain(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, highest first (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[: max(0, k)]]


def run_active_learning(
    cfg,
    train_dir: Path,
    val_dir: Path,
    out: Path,
    budget_s: float,
    device: str | None,
    tta_views: list[bool],
    say: Callable = print,
    start: float = 0.4,
    step: float = 0.2,
    rounds: int = 3,
    passes: int = 8,
    seed: int = 0,
) -> dict:
    """The simulated labelling loop (module docstring). Returns `train_to_budget`'s dict for the last
    round (predictions of VAL for `tta_views`) plus "active_learning": the rounds' history."""
    from qmed.data.batches import LoadedPairs
    from qmed.data.dataset import find_pairs, write_pairs_csv
    from qmed.experiments.common import train_to_budget
    from qmed.runtime import pick_device
    from qmed.segment.checkpoint import load_model

    if not (0 < start <= 1 and 0 < step <= 1 and rounds >= 1):
        raise QmedInputError(
            None, f"active learning: need 0 < start <= 1, 0 < step <= 1 and rounds >= 1 (got {start}, {step}, {rounds})"
        )
    pairs = find_pairs(train_dir)
    n = len(pairs)
    order = np.random.default_rng(seed).permutation(n)
    labelled = [int(i) for i in order[: max(1, round(start * n))]]
    pool = [int(i) for i in order[len(labelled) :]]
    k = max(1, round(step * n))
    history, train_s = [], 0.0
    for r in range(rounds):
        last = r == rounds - 1 or not pool
        d = out / f"round{r + 1}"
        listing = write_pairs_csv(d / "labelled.csv", [pairs[i] for i in sorted(labelled)])
        say(f"  active learning round {r + 1}/{rounds}: {len(labelled)} of {n} images labelled")
        res = train_to_budget(cfg, listing, val_dir, d, budget_s / rounds, device, tta_views if last else [], say)
        train_s += res["train_seconds"]
        entry = {"round": r + 1, "n_labelled": len(labelled), "train_seconds": res["train_seconds"]}
        history.append(entry)
        if last:
            break
        t0 = time.time()
        model, mcfg, _ = load_model(res["run"], pick_device(device))
        pool_data = LoadedPairs([pairs[i] for i in pool], mcfg, cache=False)
        scores = mc_dropout_scores(
            model,
            [pool_data[j][0] for j in range(len(pool))],
            passes=passes,
            device=pick_device(device),
            seed=seed + r,
            crop=mcfg.data.crop,
        )
        picked = [pool[j] for j in select_most_uncertain(scores, k)]
        entry.update(
            {
                "selected": [pairs[i].name for i in picked],
                "selected_scores": sorted(scores.tolist(), reverse=True)[:k],
                "pool_score_median": float(np.median(scores)),
                "selection_seconds": round(time.time() - t0, 1),
            }
        )
        labelled += picked
        pool = [i for i in pool if i not in picked]
    res = dict(res)
    res["train_seconds"] = round(train_s, 1)
    res["work"] = (
        f"{len(history)} rounds, {history[0]['n_labelled']}->{history[-1]['n_labelled']} of {n} labels; last: {res['work']}"
    )
    res["active_learning"] = {
        "start": start,
        "step": step,
        "rounds": rounds,
        "passes": passes,
        "seed": seed,
        "history": history,
        "n_pool": n,
        "labelled_fraction": history[-1]["n_labelled"] / n if n else math.nan,
    }
    return res
