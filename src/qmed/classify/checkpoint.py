"""Classifier checkpoints: the weights with the config (`ClassifyConfig.model_dump()`), the classes
and the channel count, written atomically; read back into a model for evaluation and prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qmed.classify.data import ClassData
from qmed.config import ClassifyConfig
from qmed.errors import QmedInputError
from qmed.io.checkpoints import read, resolve_checkpoint
from qmed.io.files import atomic_path

CKPT_FORMAT = "qmed-classifier-1"


def save_checkpoint(
    path: Path, model: torch.nn.Module, cfg: ClassifyConfig, data: ClassData, extra: dict[str, Any]
) -> None:
    state = {
        "format": CKPT_FORMAT,
        "config": cfg.model_dump(),
        "classes": data.classes,
        "source_classes": data.source_classes,
        "channels": int(data.images.shape[1]),
        "model": model.state_dict(),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    return read(path, CKPT_FORMAT, "qmed classifier checkpoint (written by qmed classify train)")


def load_classifier(model_path: str | Path, device: str | torch.device = "cpu"):
    """A run directory (checkpoints/best.pt, else last.pt) or a checkpoint file -> (model, config, state)."""
    from qmed.models.classifier import build_classifier

    p = resolve_checkpoint(model_path)
    state = read_checkpoint(p)
    cfg = ClassifyConfig.from_dict(state["config"], p)
    model = build_classifier(cfg.model, len(state["classes"]), None, cfg.pqc_config(), cfg.dropout)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise QmedInputError(
            p, f"weights do not fit the model in its config ({str(exc).splitlines()[0][:120]})"
        ) from None
    return model.to(device).eval(), cfg, state
