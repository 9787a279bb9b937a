"""Scoring a classifier on a labelled set: metrics with bootstrap CIs (`qmed.evaluate.classification`),
figures, and the per-image predictions; `qmed classify evaluate` on a saved run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qmed.classify.checkpoint import load_classifier
from qmed.classify.data import ClassData, default_eval_split, load_dataset
from qmed.classify.figures import write_figures
from qmed.classify.predict import predict_proba, write_predictions
from qmed.errors import QmedInputError
from qmed.evaluate.classification import bootstrap_metrics
from qmed.io.files import write_json
from qmed.runtime import pick_device


def evaluate_model(
    model,
    data: ClassData,
    threshold: float,
    out: Path | None,
    n_boot: int = 1000,
    seed: int = 0,
    device=None,
    title: str = "",
) -> dict[str, Any]:
    """Metrics (and, with `out`, metrics.json, predictions.csv and figures/) of `model` on `data`."""
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    prob = predict_proba(model, data.images, dev)
    y = data.labels.numpy()
    metrics, boots = bootstrap_metrics(y, prob, threshold, n_boot=n_boot, seed=seed)
    res: dict[str, Any] = {
        "source": data.source,
        "n": len(data),
        "counts": dict(zip(data.classes, data.counts())),
        "classes": data.classes,
        "threshold": threshold,
        "n_boot": n_boot,
        "seed": seed,
        "metrics": metrics,
        "conventions": {
            "ci": "95% percentile bootstrap over cases (seeded); resamples where a metric is undefined are dropped",
            "binary": "positive = classes[1]; predicted positive when its probability >= threshold",
            "multiclass": "arg-max prediction; macro averages; AUC one-vs-rest macro",
        },
        "figures": {},
    }
    if out is not None:
        out = Path(out)
        res["figures"] = write_figures(y, prob, data.classes, boots, out / "figures", threshold, title)
        write_json(out / "metrics.json", res)
        write_predictions(out / "predictions.csv", data.names, prob, data.classes, threshold, y)
    return res


def evaluate_run(
    model_path,
    data_spec,
    out: Path | None = None,
    n_boot: int | None = None,
    seed: int | None = None,
    threshold: float | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """A saved run (or checkpoint) on a labelled set; None settings come from the run's config."""
    dev = pick_device(device)
    model, cfg, state = load_classifier(model_path, dev)
    data = load_dataset(
        data_spec,
        cfg.image_size,
        cfg.positive,
        source_classes=state["source_classes"],
        default_split=default_eval_split(data_spec),
    )
    if data.images.shape[1] != state.get("channels", data.images.shape[1]) and data.images.shape[1] == 1:
        data.images = data.images.expand(-1, 3, -1, -1).contiguous()
    if data.classes != state["classes"]:
        raise QmedInputError(data_spec, f"classes {data.classes} do not match the model's {state['classes']}")
    return evaluate_model(
        model,
        data,
        cfg.threshold if threshold is None else threshold,
        out,
        n_boot=cfg.n_boot if n_boot is None else n_boot,
        seed=cfg.seed if seed is None else seed,
        device=dev,
        title=cfg.method,
    )
