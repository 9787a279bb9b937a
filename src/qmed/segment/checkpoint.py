"""Segmentation checkpoints load back into a model: the resolved config they carry rebuilds the
network, and the EMA weights are preferred when the run kept them."""

from __future__ import annotations

from pathlib import Path

import torch

from qmed.config import QmedConfig, config_from_dict
from qmed.errors import QmedInputError
from qmed.io.checkpoints import read, resolve_checkpoint


def load_model(model_path: str | Path, device: str | torch.device = "cpu"):
    """-> (model in eval mode, config, checkpoint path)."""
    from qmed.models.segmenter import build

    ckpt_path = resolve_checkpoint(model_path)
    state = read(ckpt_path)
    cfg: QmedConfig = config_from_dict(state["config"], ckpt_path)
    model = build(cfg.model, pretrained=False)
    weights = state.get("ema_model") or state["model"]
    if state.get("ema_model"):
        weights = {k[len("module.") :]: v for k, v in weights.items() if k.startswith("module.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise QmedInputError(
            ckpt_path, f"weights do not fit the architecture in its config ({str(exc).splitlines()[0][:120]})"
        ) from None
    return model.to(device).eval(), cfg, ckpt_path
