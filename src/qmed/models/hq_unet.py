"""HQ-UNet (SPEC Q4): smp's U-Net whose bottleneck passes through the Q1 quantum feature layer.

The deepest encoder features h (B, C, h, w) go through `qmed.models.quantum.PQCLayer` before the
decoder sees them, configured by `model.hq` (`qmed.config.HQConfig`: the classifier's quantum
settings, `PQCConfig`, plus the core and the placement below):

    placement "positions" (default, quanvolution-like): at every bottleneck position,
        u = W_q h_xy (a 1x1 convolution to Q channels), q = PQC(π·tanh u) (Q Pauli-Z expectations),
        h'_xy = h_xy + α·W_r q       (the circuit broadcast over B·h·w positions in one simulation)
    placement "pooled": the same once on the global average of h, α·W_r q added at every position.

Everything else is smp's `unet` of the same encoder and decoder channels, so `hq_unet` with
`model.hq.core: classical` is its equal-size classical twin: the same layer with the circuit
(Q angles -> Q values in [-1, 1], 3·L·Q weights for "strong" entangling layers, L·Q for "basic")
replaced by tanh(MLP) Q -> H -> Q, H = round((P - Q) / (2Q + 1)) so that its P' = H(2Q+1) + Q
weights come as close to the circuit's P as an integer width allows (Q = 4, L = 2, strong: 24 vs
22). The 1x1 compression, the expansion and α are shared structure, so the two whole networks
differ by P - P' parameters: far below 0.1 % for any smp encoder (tested). The plain `unet` is
the other reference: it lacks the layer's (C + 1)·Q + (Q + 1)·C + 1 + P weights.

The layer runs in float32 with autocast off: PennyLane's simulator is not half-safe.
"""

from __future__ import annotations

import torch
from torch import nn

from qmed.config import HQConfig
from qmed.models.quantum import PQCLayer


def circuit_parameters(qubits: int, layers: int, entangler: str) -> int:
    """Trainable weights of the circuit: StronglyEntanglingLayers (L, Q, 3), BasicEntanglerLayers (L, Q)."""
    return layers * qubits * (3 if entangler == "strong" else 1)


def twin_hidden(qubits: int, target: int) -> int:
    """MLP width H whose H(2Q+1) + Q weights come closest to `target` (at least 1)."""
    return max(1, round((target - qubits) / (2 * qubits + 1)))


class ClassicalCore(nn.Module):
    """The twin's stand-in for the circuit: angles (..., Q) -> tanh(W2 tanh(W1 θ + b1) + b2), in [-1, 1] like <Z>."""

    def __init__(self, qubits: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(qubits, hidden), nn.Tanh(), nn.Linear(hidden, qubits), nn.Tanh())

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        return self.net(angles)


class BottleneckPQC(nn.Module):
    """(B, C, h, w) -> (B, C, h, w): h + α·W_r·core(π·tanh(W_q h)) per position, or from the pooled features."""

    def __init__(self, channels: int, hq: HQConfig):
        super().__init__()
        self.placement = hq.placement
        self.layer = PQCLayer(channels, hq)  # HQConfig is a PQCConfig (the layer's settings) plus core and placement
        if hq.core == "classical":
            self.layer.circuit = ClassicalCore(
                hq.qubits, twin_hidden(hq.qubits, circuit_parameters(hq.qubits, hq.layers, hq.entangler))
            )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=h.device.type, enabled=False):
            x = h.float()
            if self.placement == "pooled":
                g = x.mean(dim=(2, 3))
                out = x + (self.layer(g) - g)[:, :, None, None]
            else:
                out = self.layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return out.to(h.dtype)


class BottleneckThenDecoder(nn.Module):
    """Wraps an smp decoder: the deepest feature goes through `bottleneck` first. smp 0.5+ passes
    the feature list as one argument, older releases as separate ones; both are accepted."""

    def __init__(self, bottleneck: nn.Module, decoder: nn.Module):
        super().__init__()
        self.bottleneck = bottleneck
        self.decoder = decoder

    def forward(self, *args):
        as_list = len(args) == 1 and isinstance(args[0], (list, tuple))
        feats = list(args[0] if as_list else args)
        feats[-1] = self.bottleneck(feats[-1])
        return self.decoder(feats) if as_list else self.decoder(*feats)


def attach_bottleneck(net: nn.Module, hq: HQConfig) -> nn.Module:
    """Turn an smp Unet into HQ-UNet in place (its encoder stays `net.encoder`, for weights and stem4)."""
    net.decoder = BottleneckThenDecoder(BottleneckPQC(net.encoder.out_channels[-1], hq), net.decoder)
    return net
