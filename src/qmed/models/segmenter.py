"""build(config) -> the segmenter: [edge channel] -> [4->3 projection] -> encoder/decoder.

The model takes RGB in [0, 1] (gray repeated to 3 channels) and computes the Gabor edge channel
itself, on its own device, after augmentation; so training, validation and prediction all see the
same input path and nothing is cached that augmentation could invalidate.
"""

from __future__ import annotations

import logging

import segmentation_models_pytorch as smp
import torch
from torch import nn

from qmed.config import ModelConfig
from qmed.errors import QmedInputError
from qmed.models.common import register_imagenet_stats
from qmed.models.edge import GaborEdge
from qmed.models.hq_unet import attach_bottleneck
from qmed.models.ladder import LADDER_ARCHS, LadderUNet
from qmed.models.projection import EdgeProjection
from qmed.models.weights import encoder_input_stats, load_encoder_file, resolve_weights

log = logging.getLogger("qmed")

# smp model classes; hq_unet is smp's Unet with qmed's bottleneck layer attached.
ARCHS = {"unetplusplus": "UnetPlusPlus", "unet": "Unet", "hq_unet": "Unet"}


class Segmenter(nn.Module):
    def __init__(self, cfg: ModelConfig, net: nn.Module):
        super().__init__()
        self.input_mode = cfg.input_mode
        e = cfg.edge
        self.edge = None if cfg.input_mode == "none" else GaborEdge(
            ksize=e.ksize, sigma=e.sigma, gamma=e.gamma, psi=e.psi,
            thetas_deg=tuple(180.0 * i / e.n_orientations for i in range(e.n_orientations)), lambdas=tuple(e.wavelengths),
        )
        self.projection = EdgeProjection(cfg.projection_mid) if cfg.input_mode == "projection" else None
        self.net = net
        register_imagenet_stats(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_mode == "none":
            return self.net((x - self.mean) / self.std)
        edge = self.edge(x)
        if self.input_mode == "projection":
            z = self.projection(torch.cat([x, edge], dim=1))
            return self.net((z - self.mean) / self.std)
        # smp's own 4-channel stem: the edge channel, centred like the normalised RGB ones.
        return self.net(torch.cat([(x - self.mean) / self.std, (edge - 0.5) / 0.25], dim=1))


def build(cfg: ModelConfig, pretrained: bool = True) -> Segmenter:
    """Build the segmenter. `pretrained=False` skips weight loading (e.g. before a checkpoint load).

    Every arch goes through the same front end (edge channel, projection / stem4 / none) and uses
    smp's encoder `cfg.encoder`; unetplusplus and unet are smp's whole models, attention_unet and
    ms_attention_unet smp's encoder with `qmed.models.ladder`'s decoders, hq_unet smp's unet with
    `qmed.models.hq_unet`'s bottleneck layer."""
    hub_name, local = resolve_weights(cfg.encoder_weights, cfg.encoder) if pretrained else (None, None)
    if len(cfg.decoder_channels) != 5:
        raise QmedInputError(None, f"model.decoder_channels needs 5 values (one per decoder stage), got {cfg.decoder_channels}")
    if cfg.dropout > 0 and cfg.arch not in LADDER_ARCHS:
        raise QmedInputError(None, f"model.dropout applies to {' and '.join(LADDER_ARCHS)} only, not arch {cfg.arch!r}; set it to 0")
    if hub_name is not None and cfg.encoder.startswith("tu-"):
        hub_name = True  # timm encoders take a bool; the variant is part of the name

    def make() -> nn.Module:
        if cfg.arch in LADDER_ARCHS:
            encoder = smp.encoders.get_encoder(cfg.encoder, in_channels=3, depth=5, weights=hub_name)
            return LadderUNet(encoder, cfg.decoder_channels, dropout=cfg.dropout, **LADDER_ARCHS[cfg.arch])
        return getattr(smp, ARCHS[cfg.arch])(encoder_name=cfg.encoder, encoder_weights=hub_name, in_channels=3, classes=1,
                                             decoder_channels=list(cfg.decoder_channels), decoder_attention_type=cfg.attention)

    net = _fetch(make, cfg.encoder, hub_name)
    if cfg.arch == "hq_unet":
        attach_bottleneck(net, cfg.hq)
    if local is not None:
        load_encoder_file(net.encoder, local)
    if cfg.input_mode == "stem4":
        # smp re-uses the pretrained RGB kernels for the new channel (cycled and rescaled).
        net.encoder.set_in_channels(4, pretrained=hub_name is not None or local is not None)
    seg = Segmenter(cfg, net)
    stats = encoder_input_stats(cfg.encoder)
    if stats is not None:  # e.g. EfficientNet-Lite's (x - 0.5) / 0.5 instead of ImageNet's mean and std
        seg.mean.copy_(torch.tensor(stats[0]).view(1, 3, 1, 1))
        seg.std.copy_(torch.tensor(stats[1]).view(1, 3, 1, 1))
    return seg


def _fetch(make, encoder: str, hub_name):
    """make() with smp's errors for an unknown encoder or unreachable hub weights as one-line messages."""
    try:
        return make()
    except KeyError:
        raise QmedInputError(None, f"unknown encoder {encoder!r} (see segmentation_models_pytorch's encoder list)") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if hub_name is None:
            raise
        raise QmedInputError(
            None,
            f"could not fetch {hub_name!r} weights for encoder {encoder!r} ({type(exc).__name__}); offline? "
            "pass a local file with --set model.encoder_weights=/path/to/weights.pth, or null for random init",
        ) from None
