"""build(config) -> the segmenter: [edge channel] -> [4->3 projection] -> encoder/decoder.

The model takes RGB in [0, 1] (gray repeated to 3 channels) and computes the Gabor edge channel
itself, on its own device, after augmentation; so training, validation and prediction all see the
same input path and nothing is cached that augmentation could invalidate.
"""

from __future__ import annotations

import logging

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
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
        self.edge = (
            None
            if cfg.input_mode == "none"
            else GaborEdge(
                ksize=e.ksize,
                sigma=e.sigma,
                gamma=e.gamma,
                psi=e.psi,
                thetas_deg=tuple(180.0 * i / e.n_orientations for i in range(e.n_orientations)),
                lambdas=tuple(e.wavelengths),
            )
        )
        self.projection = EdgeProjection(cfg.projection_mid) if cfg.input_mode == "projection" else None
        self.net = net
        # model.deep_supervision: one 1x1 conv head per supervised nested node (`nested_nodes`);
        # absent otherwise, so the default model's state dict is the one it always was.
        self.aux_nodes = nested_nodes(net) if cfg.deep_supervision else ()
        if self.aux_nodes:
            self.aux_heads = nn.ModuleList(
                nn.Conv2d(net.decoder.blocks[n].out_channels, 1, kernel_size=1) for n in self.aux_nodes
            )
        register_imagenet_stats(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits (B, C, H, W): C = 1 (foreground), 2 with model.instance_head=contact (foreground,
        contact). With deep supervision, in training mode only: the tuple (main logits,
        then one auxiliary logit map per `aux_nodes` entry, each upsampled to H x W)."""
        if not (self.aux_nodes and self.training):
            return self._forward(x)
        # Hooks for this call only: nothing persists on the blocks (a deepcopy, e.g. the weight
        # EMA's AveragedModel, would otherwise carry hooks that write into this module).
        feats: dict[str, torch.Tensor] = {}
        blocks = self.net.decoder.blocks
        handles = [
            blocks[n].register_forward_hook(lambda _m, _a, out, n=n: feats.__setitem__(n, out)) for n in self.aux_nodes
        ]
        try:
            main = self._forward(x)
        finally:
            for h in handles:
                h.remove()
        size = main.shape[-2:]
        aux = []
        for n, head in zip(self.aux_nodes, self.aux_heads):
            a = head(feats[n])
            aux.append(a if a.shape[-2:] == size else F.interpolate(a, size=size, mode="bilinear", align_corners=False))
        return (main, *aux)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
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


def nested_nodes(net: nn.Module) -> tuple[str, ...]:
    """The names, in smp's UnetPlusPlusDecoder.blocks, of the nested nodes UNet++'s deep supervision
    (Zhou et al. 2018) puts heads on besides the main output, nearest the main output first.

    smp names a node x_{d}_{l}: l is its resolution (the top decoder level, half the input size, is
    l = depth - 1) and the nodes of that level are x_{depth-1}_{depth-1}, ..., x_0_{depth-1} in the
    order the decoder fills them. So the paper's X^{0,1}, X^{0,2}, X^{0,3} (the top-level outputs of
    the 1-, 2- and 3-deep sub-networks) are x_3_3, x_2_3 and x_1_3 for smp's depth 4, and X^{0,4}
    is x_0_3, which smp's extra block x_0_4 upsamples to the input size for the segmentation head
    (the main output). smp's x_0_1, x_0_2 are lower-resolution nodes of the main path, not these.
    Returned as (X^{0,3}, X^{0,2}, X^{0,1}) = ("x_1_3", "x_2_3", "x_3_3")."""
    depth = net.decoder.depth
    return tuple(f"x_{d}_{depth - 1}" for d in range(1, depth))


def build(cfg: ModelConfig, pretrained: bool = True) -> Segmenter:
    """Build the segmenter. `pretrained=False` skips weight loading (e.g. before a checkpoint load).

    Every arch goes through the same front end (edge channel, projection / stem4 / none) and uses
    smp's encoder `cfg.encoder`; unetplusplus and unet are smp's whole models, attention_unet and
    ms_attention_unet smp's encoder with `qmed.models.ladder`'s decoders, hq_unet smp's unet with
    `qmed.models.hq_unet`'s bottleneck layer."""
    hub_name, local = resolve_weights(cfg.encoder_weights, cfg.encoder) if pretrained else (None, None)
    if len(cfg.decoder_channels) != 5:
        raise QmedInputError(
            None, f"model.decoder_channels needs 5 values (one per decoder stage), got {cfg.decoder_channels}"
        )
    if cfg.dropout > 0 and cfg.arch not in LADDER_ARCHS:
        raise QmedInputError(
            None, f"model.dropout applies to {' and '.join(LADDER_ARCHS)} only, not arch {cfg.arch!r}; set it to 0"
        )
    if hub_name is not None and cfg.encoder.startswith("tu-"):
        hub_name = True  # timm encoders take a bool; the variant is part of the name

    def make() -> nn.Module:
        if cfg.arch in LADDER_ARCHS:
            encoder = smp.encoders.get_encoder(cfg.encoder, in_channels=3, depth=5, weights=hub_name)
            return LadderUNet(encoder, cfg.decoder_channels, dropout=cfg.dropout, **LADDER_ARCHS[cfg.arch])
        return getattr(smp, ARCHS[cfg.arch])(
            encoder_name=cfg.encoder,
            encoder_weights=hub_name,
            in_channels=3,
            classes=cfg.out_channels,
            decoder_channels=list(cfg.decoder_channels),
            decoder_attention_type=cfg.attention,
        )

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
        raise QmedInputError(
            None, f"unknown encoder {encoder!r} (see segmentation_models_pytorch's encoder list)"
        ) from None
    except (OSError, RuntimeError, ValueError) as exc:
        if hub_name is None:
            raise
        raise QmedInputError(
            None,
            f"could not fetch {hub_name!r} weights for encoder {encoder!r} ({type(exc).__name__}); offline? "
            "pass a local file with --set model.encoder_weights=/path/to/weights.pth, or null for random init",
        ) from None
