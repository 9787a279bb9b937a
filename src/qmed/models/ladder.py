"""The Table II ladder's U-Nets: Attention U-Net and the multi-scale Attention U-Net (SPEC S13).

smp has no attention-gate or ASPP U-Net, so the decoders are written here; the encoder is smp's
(`model.encoder`, `model.encoder_weights` keep their meaning, ImageNet weights included), so the
ladder's rungs differ from smp's `unet` only in the parts the paper names.

* ``attention_unet`` (Oktay et al., 2018): smp's U-Net layout (5 decoder blocks: 2x upsample,
  concatenate the skip, two 3x3 conv-BN-ReLU) with an additive attention gate on every skip:
  x̂ = x · σ(ψ(ReLU(W_g g + W_x x))), g the upsampled decoder feature. Oktay computes the gate at
  the coarser scale with a strided W_x and resamples the coefficients; gating after the upsample
  (as most public implementations do) is the same function class at one resolution.
* ``ms_attention_unet``: the same plus an ASPP block at the bottleneck and squeeze-and-excitation
  after every decoder block. ASPP: a 1x1 reduction of the deepest features to decoder_channels[0]
  (the encoder's 1280 channels would make full-width dilated branches the largest part of the
  net), then 1x1, 3x3 dilation 2, 3x3 dilation 4 and image pooling branches, concatenated and
  projected. Dilations 2 and 4, not DeepLab's 6/12/18: at /32 a 256 px crop is 8 x 8 positions.
  The paper's rung also names dense-CRF post-processing and patch sampling; those are not part of
  the network (`qmed.segment.crf`, and `data.fg_crop_p` in `qmed ablate`).

`model.attention` (smp's SCSE) does not apply here; `model.dropout` > 0 adds Dropout2d after every
decoder block (what MC-Dropout active learning samples, `qmed.experiments.active`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """Additive attention gate: skip x (B, Cx, H, W) weighted by σ(ψ(ReLU(W_g g + W_x x))) in [0, 1]."""

    def __init__(self, gate_channels: int, skip_channels: int):
        super().__init__()
        inter = max(skip_channels // 2, 4)
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.w_x = nn.Sequential(nn.Conv2d(skip_channels, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.w_g(g) + self.w_x(x)))


class SqueezeExcite(nn.Module):
    """Hu et al.'s channel attention: x · σ(W2 ReLU(W1 avgpool(x))), reduction 16 (at least 4 hidden)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling after a 1x1 reduction to `channels` (see the module docstring)."""

    def __init__(self, in_channels: int, channels: int, dilations: tuple[int, ...] = (2, 4)):
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, channels, k=1)
        self.branches = nn.ModuleList(
            [conv_bn_relu(channels, channels, k=1)] + [conv_bn_relu(channels, channels, dilation=d) for d in dilations]
        )
        # BatchNorm on a 1x1 pooled map fails for batch 1 in training; the pooled branch has none.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(channels * (len(self.branches) + 1), channels, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DecoderBlock(nn.Module):
    """2x upsample, [gated] skip concatenation, two 3x3 conv-BN-ReLU, [SE], [Dropout2d]."""

    def __init__(self, cin: int, skip: int, cout: int, gate: bool, se: bool, dropout: float):
        super().__init__()
        self.gate = AttentionGate(cin, skip) if gate and skip else None
        self.convs = nn.Sequential(conv_bn_relu(cin + skip, cout), conv_bn_relu(cout, cout))
        self.se = SqueezeExcite(cout) if se else nn.Identity()
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, self.gate(x, skip) if self.gate is not None else skip], dim=1)
        return self.drop(self.se(self.convs(x)))


class LadderDecoder(nn.Module):
    """smp-style U-Net decoder over an smp encoder's features [input, /2, /4, /8, /16, /32]."""

    def __init__(
        self,
        encoder_channels: list[int],
        decoder_channels: list[int],
        gates: bool,
        aspp: bool,
        se: bool,
        dropout: float,
    ):
        super().__init__()
        deepest = encoder_channels[-1]
        self.center = ASPP(deepest, decoder_channels[0]) if aspp else nn.Identity()
        cin = [decoder_channels[0] if aspp else deepest] + list(decoder_channels[:-1])
        skips = list(reversed(encoder_channels[1:-1])) + [0]  # /16, /8, /4, /2, then none at full size
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, gates, se, dropout) for i, s, o in zip(cin, skips, decoder_channels)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skips = list(reversed(features[1:-1])) + [None]
        x = self.center(features[-1])
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x


class LadderUNet(nn.Module):
    """smp encoder + `LadderDecoder` + a 3x3 head to one logit channel (as smp's SegmentationHead)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder_channels: list[int],
        gates: bool = True,
        aspp: bool = False,
        se: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = LadderDecoder(list(encoder.out_channels), list(decoder_channels), gates, aspp, se, dropout)
        self.head = nn.Conv2d(decoder_channels[-1], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


LADDER_ARCHS = {
    "attention_unet": {"gates": True},
    "ms_attention_unet": {"gates": True, "aspp": True, "se": True},
}
