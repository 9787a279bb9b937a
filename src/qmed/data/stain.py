"""Reinhard stain normalisation (data.normalize=reinhard): each image's colour moved to a typical stain.

Reinhard et al. 2001, "Color transfer between images": in CIE L*a*b*, each channel of the image is
standardised by its own mean and standard deviation and given the target's,
    lab' = (lab - mean(lab)) / std(lab) * target_std + target_mean,
then converted back to RGB and clipped to [0, 1]. The target (data.stain_target: L, a, b means, then
their standard deviations) is the per-channel median over the training images' own statistics,
computed once when training starts and saved in the run's config, so predict and export map every
new image to the same stain.

Why: a rare stain group on stained tissue (dsb2018-histo's 87ea72894f6534b2 shares its pink
background with 3 of 74 training images) swung every model's score there by 0.3 between epochs;
normalising those val images at test time raised it by 0.08–0.16 in all four saved qmed runs but
lowered the typical images, which the models had seen raw (docs 11j). Training on normalised
images removes that shift; at 12 minutes that came out level on both stained sets (docs 11l), so
it is an option, off by default.

One implementation in torch (sRGB with the D65 white, as OpenCV's float RGB2Lab), used by the numpy
path too and exported as is into the ONNX graph (qmed.segment.export). torchstain's Reinhard is
numpy/torch but not ONNX-exportable and would be a new dependency for twenty lines.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

# sRGB (linear) -> XYZ, D65 white, OpenCV's constants; and the white point used to scale X and Z.
_RGB2XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_EPS = 0.008856  # (6/29)^3: below it L*a*b* is linear in XYZ
_STD_FLOOR = 1e-3  # a flat channel maps to the target mean instead of dividing by 0


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> L* in [0, 100], a*, b* (exportable ops only)."""
    x = x.clamp(0.0, 1.0)
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB2XYZ.to(x), lin) / _WHITE.to(x).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of rgb_to_lab, clipped to [0, 1] (a shifted colour can fall outside sRGB)."""
    fy = (lab[:, 0:1] + 16.0) / 116.0
    f = torch.cat([fy + lab[:, 1:2] / 500.0, fy, fy - lab[:, 2:3] / 200.0], dim=1)
    xyz = torch.where(f > 6.0 / 29.0, f**3, (f - 16.0 / 116.0) / 7.787) * _WHITE.to(lab).view(1, 3, 1, 1)
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2XYZ).to(lab), xyz).clamp(0.0, 1.0)
    return torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055).clamp(
        0.0, 1.0
    )


def lab_stats(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: (mean, population std), each (B, 3, 1, 1)."""
    mean = lab.mean(dim=(2, 3), keepdim=True)
    std = ((lab - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
    return mean, std


class ReinhardNormalization(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> the same images with the target's L*a*b* mean and std per channel."""

    def __init__(self, target: Iterable[float]):
        super().__init__()
        t = torch.as_tensor(list(target), dtype=torch.float32)
        if t.numel() != 6:
            raise ValueError(f"a Reinhard target is 3 L*a*b* means and 3 stds, got {t.numel()} numbers")
        self.register_buffer("mean", t[:3].view(1, 3, 1, 1))
        self.register_buffer("std", t[3:].view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """`source`: the 6 L*a*b* means and stds to move from (a whole slide's), instead of each image's own."""
        lab = rgb_to_lab(x)
        if source is None:
            mean, std = lab_stats(lab)
        else:
            mean, std = source[:3].view(1, 3, 1, 1).to(lab), source[3:].view(1, 3, 1, 1).to(lab)
        return lab_to_rgb((lab - mean) / std.clamp_min(_STD_FLOOR) * self.std + self.mean)


def _as_batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]


def reinhard(img: np.ndarray, target: Iterable[float], source: Iterable[float] | None = None) -> np.ndarray:
    """HxWx3 float RGB in [0, 1] -> the same normalised to `target` (float32). `source`: the 6
    L*a*b* means and stds to move from (a whole slide's, see pooled_lab_stats), instead of the image's own."""
    src = None if source is None else torch.as_tensor(list(source), dtype=torch.float32)
    with torch.no_grad():
        out = ReinhardNormalization(target)(_as_batch(img), src)
    return out[0].numpy().transpose(1, 2, 0).astype(np.float32)


def stain_target(images: Iterable[np.ndarray]) -> list[float]:
    """The per-channel median over the images' L*a*b* means, then over their stds (6 floats)."""
    stats = []
    with torch.no_grad():
        for img in images:
            mean, std = lab_stats(rgb_to_lab(_as_batch(img)))
            stats.append(torch.cat([mean.flatten(), std.flatten()]).numpy())
    if not stats:
        raise ValueError("a Reinhard target needs at least one training image")
    return [round(float(v), 4) for v in np.median(np.stack(stats), axis=0)]


def pooled_lab_stats(images: Iterable[np.ndarray]) -> list[float]:
    """The L*a*b* means and population stds (6 floats) of all the images' pixels pooled: one
    slide's statistics from a sample of its tiles (HxWx3 float RGB in [0, 1])."""
    n, s1, s2 = 0, np.zeros(3), np.zeros(3)
    with torch.no_grad():
        for img in images:
            lab = rgb_to_lab(_as_batch(img))[0].double().flatten(1)
            n += lab.shape[1]
            s1 += lab.sum(dim=1).numpy()
            s2 += (lab**2).sum(dim=1).numpy()
    if n == 0:
        raise ValueError("pooled L*a*b* statistics need at least one pixel")
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return [float(v) for v in np.concatenate([mean, std])]
