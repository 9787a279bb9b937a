"""What every network here shares: ImageNet input statistics and the parameter count."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_imagenet_stats(module: nn.Module) -> None:
    """`module.mean` / `module.std` as (1, 3, 1, 1) buffers; not persistent, so state-dict keys stay
    those of the network alone (checkpoints of earlier releases load unchanged)."""
    module.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
