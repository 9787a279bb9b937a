"""Segmentation losses: the paper's stabilised hybrid loss (Algorithm 1), a Dice+BCE baseline, and
the Table II ladder's Dice and Dice + Focal + Boundary losses (`HybridLoss`).

StabilizedLoss, per Algorithm 1 (eps = 1e-7, smooth = 1):

    Pc = clamp(logits, -10, 10);  P = clamp(sigmoid(Pc), eps, 1 - eps)
    per sample i:  TP = Σ P·T,  FP = Σ P·(1-T),  FN = Σ (1-P)·T,  u = Σ P + Σ T
                   dice_i = (2 TP + smooth) / (u + smooth)
                   tversky_i = (TP + smooth) / (TP + α FP + β FN + smooth),  α = 0.7 (FP), β = 0.3 (FN)
    L_dice = 1 - mean_i dice_i;   L_tv = 1 - mean_i tversky_i
    r = Σ T / (B·H·W) over the batch;  pos_weight = clamp((1 - r) / r, 1, 50)
    L_bce = BCEWithLogits(logits, T, pos_weight)     (mean over pixels)
    L = 0.5 L_dice + 0.3 L_bce + 0.2 L_tv

Choices the paper leaves open:

* All-empty batch (r = 0): pos_weight = 1 ((1 - r)/r is undefined; there are no positives to weight).
* BCE gets the *raw* logits (as the paper writes it; `bce_on_clamped=False`). BCEWithLogits is already
  numerically stable (log-sum-exp) and its gradient σ(z) - t is bounded, so clamping buys nothing
  there — and it would zero the gradient of confidently wrong pixels (|z| > 10), which the Dice and
  Tversky terms (computed on clamped logits) already cannot correct. Set bce_on_clamped=True for the
  other reading.
* The loss is computed in float32 even under autocast (the sums over H·W pixels are not half-safe).
* pos_weight comes from the target only, so it carries no gradient.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape or logits.dim() != 4:
        raise ValueError(
            f"expected logits and target of the same (B, 1, H, W) shape, got {tuple(logits.shape)} and {tuple(target.shape)}"
        )


class StabilizedLoss(nn.Module):
    """The paper's hybrid 0.5·Dice + 0.3·weighted BCE + 0.2·Tversky loss with logit/probability clamping.

    After each call, `self.last` holds the detached components as floats for logging:
    {"dice", "bce", "tversky", "pos_weight", "loss"} (dice/tversky are the *loss* terms 1 - mean score).
    """

    def __init__(
        self,
        w_dice: float = 0.5,
        w_bce: float = 0.3,
        w_tversky: float = 0.2,
        alpha: float = 0.7,
        beta: float = 0.3,
        logit_clamp: float = 10.0,
        eps: float = 1e-7,
        smooth: float = 1.0,
        max_pos_weight: float = 50.0,
        bce_on_clamped: bool = False,
    ):
        super().__init__()
        self.w_dice, self.w_bce, self.w_tversky = w_dice, w_bce, w_tversky
        self.alpha, self.beta = alpha, beta
        self.logit_clamp, self.eps, self.smooth = logit_clamp, eps, smooth
        self.max_pos_weight = max_pos_weight
        self.bce_on_clamped = bce_on_clamped
        self.last: dict[str, float] = {}

    def pos_weight(self, target: torch.Tensor) -> torch.Tensor:
        r = target.sum() / target.numel()
        pw = ((1 - r) / r.clamp_min(1e-12)).clamp(1.0, self.max_pos_weight)
        return torch.where(r > 0, pw, torch.ones_like(pw))  # all-empty batch -> 1 (torch.where: no device sync)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        logits, target = logits.float(), target.float()
        pc = logits.clamp(-self.logit_clamp, self.logit_clamp)
        p = torch.sigmoid(pc).clamp(self.eps, 1 - self.eps)
        dims = tuple(range(1, p.dim()))  # per sample
        tp = (p * target).sum(dims)
        fp = (p * (1 - target)).sum(dims)
        fn = ((1 - p) * target).sum(dims)
        u = p.sum(dims) + target.sum(dims)
        dice = (2 * tp + self.smooth) / (u + self.smooth)
        tversky = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        l_dice = 1 - dice.mean()
        l_tv = 1 - tversky.mean()
        pw = self.pos_weight(target).detach()
        l_bce = F.binary_cross_entropy_with_logits(pc if self.bce_on_clamped else logits, target, pos_weight=pw)
        loss = self.w_dice * l_dice + self.w_bce * l_bce + self.w_tversky * l_tv
        vals = torch.stack([l_dice, l_bce, l_tv, pw, loss]).detach().tolist()  # one device sync, not five
        self.last = dict(zip(("dice", "bce", "tversky", "pos_weight", "loss"), vals))
        return loss


class DiceBCELoss(nn.Module):
    """Baseline: 0.5·(1 - soft Dice) + 0.5·BCEWithLogits, Dice pooled over the whole batch (smp-style).

    Dice = (2 Σ σ(z)·T + smooth) / (Σ σ(z) + Σ T + smooth), smooth = 1, sums over all pixels of all
    samples. Unlike smp's DiceLoss we do not zero the Dice term for an all-empty batch: with
    smooth = 1 it then still (gently) pushes predictions towards 0. No logit clamping, no pos_weight.

    `per_image=True` instead averages each sample's own soft Dice, as the per-image Dice metric
    averages images: a sparse crop's few nuclei then weigh as much as a dense crop's many (an empty
    sample's Dice is 1 / (Σ σ(z) + 1), so it still pushes its false positives down).

    `boundary_weight` w0 > 0 turns the BCE into a weighted mean Σ w·bce / Σ w with the U-Net paper's
    border emphasis, w = 1 + w0·exp(-d² / 2σ²), d = `boundary_distance` of each pixel to its
    sample's object outline (0 on the outline's two pixel rings). The BCE keeps its scale; its
    gradient moves from object interiors and far background to the rims, where per-image Dice is
    lost. A sample without an outline (empty or all-foreground mask) gets w = 1.
    """

    def __init__(
        self,
        w_dice: float = 0.5,
        w_bce: float = 0.5,
        smooth: float = 1.0,
        boundary_weight: float = 0.0,
        boundary_sigma: float = 3.0,
        per_image: bool = False,
    ):
        super().__init__()
        self.w_dice, self.w_bce, self.smooth, self.per_image = w_dice, w_bce, smooth, per_image
        self.boundary_weight, self.boundary_sigma = boundary_weight, boundary_sigma
        self.last: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        logits, target = logits.float(), target.float()
        p = torch.sigmoid(logits)
        l_dice = (
            per_image_dice_loss(p, target, self.smooth).mean()
            if self.per_image
            else soft_dice_loss(p, target, self.smooth)
        )
        if self.boundary_weight > 0:
            w = border_weights(target, self.boundary_weight, self.boundary_sigma)
            l_bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum() / w.sum()
        else:
            l_bce = F.binary_cross_entropy_with_logits(logits, target)
        loss = self.w_dice * l_dice + self.w_bce * l_bce
        self.last = dict(zip(("dice", "bce", "loss"), torch.stack([l_dice, l_bce, loss]).detach().tolist()))
        return loss


def boundary_distance(mask: np.ndarray) -> np.ndarray:
    """Each pixel's Euclidean distance to the outline of a binary mask, in pixels, 0 on the outline.

    The outline is two rings: the foreground pixels next to background and the background pixels
    next to foreground; a foreground pixel scores (distance to the nearest background pixel) - 1
    and a background pixel (distance to the nearest foreground pixel) - 1. Empty or all-foreground
    masks have no outline: +inf everywhere."""
    pos = np.asarray(mask, dtype=bool)
    if not pos.any() or pos.all():
        return np.full(pos.shape, np.inf, dtype=np.float32)
    phi = signed_distance(pos)  # 0 on the inner ring, -(depth) inside, >= 1 outside
    return np.where(phi > 0, phi - 1, -phi).astype(np.float32)


def border_weights(target: torch.Tensor, w0: float, sigma: float) -> torch.Tensor:
    """Per-pixel weights 1 + w0·exp(-d² / 2σ²) for a (B, 1, H, W) target, d = `boundary_distance`
    (computed on the CPU, no gradient)."""
    t = target.detach().cpu().numpy() > 0.5
    d = np.stack([boundary_distance(m[0])[None] for m in t])
    return torch.from_numpy(1 + w0 * np.exp(-(d**2) / (2 * sigma**2))).to(target.device, torch.float32)


def soft_dice_loss(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 Σ p·T + smooth) / (Σ p + Σ T + smooth), pooled over every pixel of the batch."""
    return 1 - (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)


def per_image_dice_loss(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of each sample of a (B, 1, H, W) batch, shape (B,)."""
    inter, total = (p * target).sum((1, 2, 3)), p.sum((1, 2, 3)) + target.sum((1, 2, 3))
    return 1 - (2 * inter + smooth) / (total + smooth)


def per_sample_dice_loss(logits, target, smooth: float = 1.0):
    """1 - soft Dice of each sample of a (B,1,H,W) batch, detached: the hardness that `hard` sampling tracks."""
    return per_image_dice_loss(torch.sigmoid(logits.detach().float()), target.detach().float(), smooth)


class DiceLoss(nn.Module):
    """Soft Dice alone (pooled over the batch, smooth 1): the "U-Net + Dice loss" rung of Table II."""

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        self.smooth = smooth
        self.last: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        loss = soft_dice_loss(torch.sigmoid(logits.float()), target.float(), self.smooth)
        self.last = {"dice": float(loss.detach()), "loss": float(loss.detach())}
        return loss


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Kervadec et al.'s signed distance map of one binary mask (their `one_hot2dist`), in pixels.

    Outside the object: Euclidean distance to the nearest foreground pixel (>= 1). Inside:
    -(distance to the nearest background pixel - 1), so the object's own boundary pixels are 0 and
    deeper pixels negative. An empty mask (or an all-foreground one) has no boundary: all zeros,
    as in the reference implementation."""
    pos = np.asarray(mask, dtype=bool)
    if not pos.any() or pos.all():
        return np.zeros(pos.shape, dtype=np.float32)
    neg = ~pos
    return (ndimage.distance_transform_edt(neg) * neg - (ndimage.distance_transform_edt(pos) - 1) * pos).astype(
        np.float32
    )


class HybridLoss(nn.Module):
    """The Table II ladder's hybrid loss: L = 0.5·Dice + 0.3·Focal + 0.2·Boundary.

    * Dice: `soft_dice_loss` on σ(logits), pooled over the batch, smooth 1 (as DiceBCELoss).
    * Focal (Lin et al.): mean over pixels of -(1 - p_t)^γ · log p_t, p_t = σ(z) on foreground and
      1 - σ(z) on background, γ = 2, no α class weight (the paper gives none); computed from
      BCEWithLogits so it is stable for large |z|.
    * Boundary (Kervadec et al., MIDL 2019): mean over pixels of σ(z)·φ_T, φ_T the `signed_distance`
      map of each sample's target, in pixels, computed on the CPU from the target (no gradient).
      The term is negative when probability sits inside objects, so L can be below 0; with an
      empty target φ = 0 and the term is 0 (Dice and Focal still push such images to empty).
    Computed in float32. `self.last` holds {"dice", "focal", "boundary", "loss"} after each call.
    """

    def __init__(
        self,
        w_dice: float = 0.5,
        w_focal: float = 0.3,
        w_boundary: float = 0.2,
        gamma: float = 2.0,
        smooth: float = 1.0,
    ):
        super().__init__()
        self.w_dice, self.w_focal, self.w_boundary = w_dice, w_focal, w_boundary
        self.gamma, self.smooth = gamma, smooth
        self.last: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        logits, target = logits.float(), target.float()
        p = torch.sigmoid(logits)
        l_dice = soft_dice_loss(p, target, self.smooth)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # = -log p_t
        p_t = p * target + (1 - p) * (1 - target)
        l_focal = ((1 - p_t) ** self.gamma * ce).mean()
        t = target.detach().cpu().numpy() > 0.5
        phi = torch.from_numpy(np.stack([signed_distance(m[0])[None] for m in t])).to(logits.device)
        l_boundary = (p * phi).mean()
        loss = self.w_dice * l_dice + self.w_focal * l_focal + self.w_boundary * l_boundary
        self.last = dict(
            zip(
                ("dice", "focal", "boundary", "loss"),
                torch.stack([l_dice, l_focal, l_boundary, loss]).detach().tolist(),
            )
        )
        return loss


LOSSES = {"stabilized": StabilizedLoss, "dice_bce": DiceBCELoss, "dice": DiceLoss, "hybrid": HybridLoss}


def build_loss(name: str, **kw) -> nn.Module:
    """Loss by name: "stabilized" (the paper's), "dice_bce" (baseline), "dice" or "hybrid" (Table II
    ladder); kw go to the constructor."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
    return cls(**kw)


class DeepSupervisionLoss(nn.Module):
    """UNet++ deep supervision around any of the losses above: for outputs (main, aux_1, ..., aux_K)
    (the Segmenter's training-mode output with model.deep_supervision),

        L = (L(main) + Σ_k w_k L(aux_k)) / (1 + Σ_k w_k),

    each term the wrapped loss of that output (in float32) against the same target. A plain tensor
    is just the wrapped loss. `self.last` holds the main output's components and "loss" = L (what
    the trainer logs), plus "loss_main" = L(main)."""

    def __init__(self, base: nn.Module, weights):
        super().__init__()
        self.base = base
        self.weights = tuple(float(w) for w in weights)
        self.last: dict[str, float] = {}

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            loss = self.base(outputs.float(), target)
            self.last = dict(getattr(self.base, "last", {}))
            return loss
        main, *aux = outputs
        if len(aux) != len(self.weights):
            raise ValueError(f"{len(aux)} auxiliary outputs but {len(self.weights)} deep-supervision weights")
        l_main = self.base(main.float(), target)
        last = dict(getattr(self.base, "last", {}))
        total = l_main
        for w, a in zip(self.weights, aux):
            total = total + w * self.base(a.float(), target)
        loss = total / (1.0 + sum(self.weights))
        self.last = {**last, "loss_main": float(l_main.detach()), "loss": float(loss.detach())}
        return loss


class ContactLoss(nn.Module):
    """Issue 20's instance head around a foreground loss: outputs with a second (contact) channel,
    targets (B, 2, H, W) = (foreground, contact map),

        L = L_fg(foreground channel) + w (0.5 (1 - soft Dice) + 0.5 BCE)(contact channel),

    L_fg the wrapped loss (DeepSupervisionLoss included: its auxiliary outputs, one channel each,
    are foreground only). `self.last`: L_fg's components, "contact" and "loss" = L."""

    def __init__(self, base: nn.Module, weight: float = 1.0):
        super().__init__()
        self.base, self.weight = base, float(weight)
        self.contact = DiceBCELoss()
        self.last: dict[str, float] = {}

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        main = main_logits(outputs)
        if main.dim() != 4 or main.shape[1] != 2 or target.dim() != 4 or target.shape[1] != 2:
            raise ValueError(
                f"expected (B, 2, H, W) outputs and targets (foreground, contact), got {tuple(main.shape)} and {tuple(target.shape)}"
            )
        fg = main[:, :1] if isinstance(outputs, torch.Tensor) else (main[:, :1], *outputs[1:])
        l_fg = self.base(fg, target[:, :1])
        l_ct = self.contact(main[:, 1:].float(), target[:, 1:])
        loss = l_fg + self.weight * l_ct
        self.last = {**getattr(self.base, "last", {}), "contact": float(l_ct.detach()), "loss": float(loss.detach())}
        return loss


def main_logits(outputs) -> torch.Tensor:
    """The main logits of a model output: the tensor itself, or the first of deep supervision's tuple."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


def loss_from_config(t, deep_supervision: bool = False, instance_head: str = "none") -> nn.Module:
    """The loss a TrainConfig names, with the fields that loss takes (the trainer's and the speed
    benchmark's one way to build it); `deep_supervision` (model.deep_supervision) wraps it in
    DeepSupervisionLoss with t.deep_supervision_weights, and instance_head="contact"
    (model.instance_head) that in ContactLoss with t.contact_weight."""
    if t.loss == "stabilized":
        base = build_loss(t.loss, max_pos_weight=t.pos_weight_max)
    elif t.loss == "dice_bce":
        base = build_loss(
            t.loss, boundary_weight=t.boundary_weight, boundary_sigma=t.boundary_sigma, per_image=t.dice_per_image
        )
    else:
        base = build_loss(t.loss)
    loss = DeepSupervisionLoss(base, t.deep_supervision_weights) if deep_supervision else base
    return ContactLoss(loss, t.contact_weight) if instance_head == "contact" else loss
