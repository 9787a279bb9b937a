"""The learnable 4→3 channel projection in front of an RGB-pretrained encoder (paper eq. 2).

Paper:  X3 = Conv1x1(ReLU(BN(Conv3x3(X4))))   with X4 = [R, G, B, edge].

We implement the residual form

    X3 = X4[:, :3] + Conv1x1(ReLU(BN(Conv3x3(X4))))      with Conv1x1 weight and bias initialised to 0,

so that at step 0 the module is exactly the identity on RGB — in train() *and* eval() mode, whatever
the BatchNorm statistics are — and the pretrained encoder sees exactly the input it was trained on;
the edge channel is then blended in as training moves the 1x1 conv away from 0 (ControlNet's "zero
convolution"). Exact identity through the plain eq. 2 composition is not possible in train mode:
BatchNorm normalises with the batch's statistics, so no fixed weights make Conv1x1∘ReLU∘BN∘Conv3x3
pass RGB through unchanged for every batch. The residual form is a deviation in *form* from eq. 2,
not in function class: the branch is eq. 2 itself, and with a few spare mid channels an eq. 2 block
can carry ±RGB through the ReLU (ReLU(v) - ReLU(-v) = v), so either form can represent the other
(exactly in eval mode, where BN is a fixed affine map).

Consequence of the zero init: on the very first backward only the 1x1 conv receives a non-zero
gradient (its zero weights block the gradient to the layers before it); from the first optimizer
step on, all parameters get gradients.

Inputs must already be RGB + edge (grey images repeated to 3 channels before the edge is appended),
normalised however the encoder expects; the RGB part is passed through in whatever scale it has.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class EdgeProjection(nn.Module):
    """(B, 4, H, W) RGB + edge -> (B, 3, H, W); identity on RGB at initialisation."""

    def __init__(self, mid_channels: int = 16):
        super().__init__()
        self.conv3 = nn.Conv2d(4, mid_channels, kernel_size=3, padding=1, bias=False)  # bias is redundant before BN
        self.bn = nn.BatchNorm2d(mid_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(mid_channels, 3, kernel_size=1)
        nn.init.zeros_(self.conv1.weight)  # zero branch at init: output == RGB exactly
        nn.init.zeros_(self.conv1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 4:
            raise ValueError(f"expected (B, 4, H, W) RGB + edge, got shape {tuple(x.shape)}")
        return x[:, :3] + self.conv1(self.relu(self.bn(self.conv3(x))))


class DropEdge(nn.Module):
    """(B, 4, H, W) -> (B, 3, H, W): drop the edge channel (the "channel dropping" ablation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 4:
            raise ValueError(f"expected (B, 4, H, W) RGB + edge, got shape {tuple(x.shape)}")
        return x[:, :3]
