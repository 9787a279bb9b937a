"""SimCLR pretraining of a classifier backbone on unlabelled images (SPEC Q2, arXiv 2601.16608).

Every image gives two random views. Backbone (the classifier's, e.g. MobileNetV2 from its ImageNet
weights) -> pooled features h (1280-d for MobileNetV2) -> projection head g = Linear(F, 512) -> ReLU
-> Linear(512, 128) -> z. NT-Xent (Chen et al. 2020) over the 2B views of a batch: the positive of
a view is the other view of its image, the other 2B - 2 views are its negatives,

    l(i) = -log( exp(s(i, j) / tau) / sum_{k != i} exp(s(i, k) / tau) ),   s = cosine similarity,

and the loss is the mean of l over all 2B views (tau = 0.5 by default). The head is thrown away;
the backbone is saved. Adam (lr 3e-4, weight decay 1e-6): the batches that fit a CPU are far too
small for SimCLR's LARS at batch 4096.

Augmentations, chosen to keep ultrasound / X-ray anatomy plausible (seeded, on the batch tensor):
- random resized crop: area U(0.5, 1) of the image, aspect ratio log-uniform in [3/4, 4/3], placed
  uniformly inside the image (no extreme crops: the lesion mostly stays in view), resampled to the
  input size; in one bilinear warp with
- horizontal flip, p = 0.5 (no vertical flip: ultrasound has a top, the transducer; X-rays too), and
- rotation U(-15°, 15°) (corners filled by reflection);
- brightness +U(-0.2, 0.2) and contrast x(1 + U(-0.3, 0.3)) around the image mean, p = 0.8 (gain
  and depth settings differ between scans);
- Gaussian blur, p = 0.5, sigma U(0.1, 1.5) px at 128 px (scaled with the image size);
- Gaussian noise, p = 0.5, std U(0, 0.03) (speckle / sensor noise).
No colour, hue or saturation jitter and no random grayscale: the images are gray, or stained colour
whose hue carries meaning.

Outputs in OUT: ``encoder.pth``, the backbone's state dict in the torchvision (timm) key layout with
the classification head removed, written atomically after every epoch; it loads with
``qmed classify train --model NAME --weights OUT/encoder.pth`` and, for mobilenet_v2 (smp's encoder
is torchvision's ``features``), with ``qmed train --set model.encoder_weights=OUT/encoder.pth``.
``pretrain.json``: settings, data, augmentations, and the loss curve (per epoch: mean NT-Xent loss;
pair accuracy, the share of views whose most similar other view is their partner; chance level
for the loss is log(2B - 1), all similarities equal).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qmed.classify.data import load_images
from qmed.config import SimCLRConfig
from qmed.errors import QmedInputError
from qmed.io.files import atomic_path, input_paths, prepare_output_dir, write_json
from qmed.runtime import pick_device, seed_everything

log = logging.getLogger("qmed")

AUGMENTATIONS = {
    "random_resized_crop": {"area": [0.5, 1.0], "aspect_ratio": [0.75, 4 / 3]},
    "hflip": 0.5,
    "vflip": None,
    "rotate_deg": 15.0,
    "brightness": 0.2,
    "contrast": 0.3,
    "intensity_p": 0.8,
    "blur": {"p": 0.5, "sigma_px_at_128": [0.1, 1.5]},
    "noise": {"p": 0.5, "std": [0.0, 0.03]},
    "colour_jitter": None,
}


def _similarities(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of the 2B views (self-similarity -inf) and each view's partner index."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    return sim, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of B pairs: z1[i] and z2[i] are the two views of image i (any scale; cosine similarity)."""
    sim, target = _similarities(z1, z2)
    return F.cross_entropy(sim / temperature, target)


def _pair_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> float:
    sim, target = _similarities(z1, z2)
    return float((sim.argmax(1) == target).float().mean())


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (px) per image; sigma ~ 0 leaves the image as is."""
    n, c, h, w = x.shape
    r = max(1, min(int(math.ceil(3 * float(sigma.max()))), min(h, w) // 2 - 1))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def simclr_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random view of each image of a batch in [0, 1] (the augmentations of the module docstring)."""
    n, dev = x.shape[0], x.device

    def u(lo, hi, *shape):  # seeded uniforms (drawn on the CPU generator, moved to x's device)
        return (lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)).to(dev)

    def coin(p):
        return (torch.rand(n, generator=g) < p).to(dev)

    area, log_r = u(0.5, 1.0), u(math.log(3 / 4), math.log(4 / 3))
    cw, ch = (area * log_r.exp()).sqrt().clamp(max=1.0), (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx, cy = u(-1, 1) * (1 - cw), u(-1, 1) * (1 - ch)  # crop centre, inside the image
    ang = u(-1, 1) * math.radians(AUGMENTATIONS["rotate_deg"])
    flip = torch.where(coin(AUGMENTATIONS["hflip"]), -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # input coords = centre + R(angle) @ diag(flip * cw, ch) @ output coords
    theta = torch.stack(
        [torch.stack([cos * cw * flip, -sin * ch, cx], 1), torch.stack([sin * cw * flip, cos * ch, cy], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    on = coin(AUGMENTATIONS["intensity_p"])[:, None, None, None]
    b = u(-1, 1)[:, None, None, None] * AUGMENTATIONS["brightness"]
    c = 1.0 + u(-1, 1)[:, None, None, None] * AUGMENTATIONS["contrast"]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.where(on, ((x - mean) * c + mean + b), x).clamp(0, 1)

    lo, hi = AUGMENTATIONS["blur"]["sigma_px_at_128"]
    scale = x.shape[-1] / 128.0
    sigma = torch.where(coin(AUGMENTATIONS["blur"]["p"]), u(lo, hi) * scale, torch.zeros(n, device=dev))
    x = _gaussian_blur(x, sigma)

    std = torch.where(coin(AUGMENTATIONS["noise"]["p"]), u(*AUGMENTATIONS["noise"]["std"]), torch.zeros(n, device=dev))
    noise = torch.randn(x.shape, generator=g).to(dev)
    return (x + std[:, None, None, None] * noise).clamp(0, 1)


def projection_head(features: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def save_encoder(path: Path, backbone: nn.Module) -> None:
    """The backbone's state dict (torchvision/timm keys, no head), atomically."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, tmp)


def pretrain_simclr(
    cfg: SimCLRConfig, data_spec: str | Path, out: str | Path, force: bool = False, device: str | None = None
) -> dict[str, Any]:
    """Pretrain `cfg.model`'s backbone with SimCLR on the images of `data_spec`; -> the pretrain.json dict."""
    from qmed.models.classifier import build_classifier
    from qmed.models.common import count_parameters

    out = Path(out)
    images, _ = load_images(data_spec, cfg.image_size)
    if len(images) < 2:
        raise QmedInputError(data_spec, f"SimCLR needs at least 2 images, found {len(images)}")
    dev = pick_device(device)
    seed_everything(cfg.seed)
    clf = build_classifier(cfg.model, 2, cfg.weights, None).to(dev)
    head = projection_head(clf.num_features, cfg.proj_hidden, cfg.proj_dim).to(dev)
    prepare_output_dir(out, force, what="output directory", inputs=input_paths(data_spec), verb="pretrain")
    params = list(clf.backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, len(images))
    log.info(
        "SimCLR: %d images (%d channel(s), %d px) from %s; %s, %s parameters; batch %d (%d views); tau %.3g; device %s",
        len(images),
        images.shape[1],
        cfg.image_size,
        data_spec,
        cfg.model,
        f"{count_parameters(clf.backbone):,}",
        bs,
        2 * bs,
        cfg.temperature,
        dev,
    )
    start, steps, rows = time.time(), 0, []
    stop_reason = f"epochs={cfg.epochs} reached"
    for epoch in range(1, cfg.epochs + 1):
        clf.train()
        head.train()
        perm = torch.randperm(len(images), generator=g)
        tot, acc, nb, over = 0.0, 0.0, 0, False
        for b in range(len(perm) // bs):  # full batches only: the loss depends on the batch size
            x = images[perm[b * bs : (b + 1) * bs]].to(dev).float().div_(255.0)
            v = torch.cat([simclr_view(x, g), simclr_view(x, g)])
            z = head(clf.features(v))
            loss = nt_xent(z[:bs], z[bs:], cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            nb += 1
            tot += float(loss.detach())
            acc += _pair_accuracy(z[:bs].detach(), z[bs:].detach())
            if cfg.minutes is not None and (time.time() - start) / 60.0 > cfg.minutes:
                over = True
                break
        rows.append(
            {
                "epoch": epoch,
                "steps": steps,
                "loss": tot / max(1, nb),
                "pair_accuracy": acc / max(1, nb),
                "seconds": time.time() - start,
            }
        )
        save_encoder(out / "encoder.pth", clf.backbone)
        log.info(
            "epoch %3d  nt_xent %.4f  pair_acc %.3f  %.0fs",
            epoch,
            rows[-1]["loss"],
            rows[-1]["pair_accuracy"],
            rows[-1]["seconds"],
        )
        if over or (cfg.minutes is not None and (time.time() - start) / 60.0 > cfg.minutes):
            stop_reason = f"time budget {cfg.minutes} min reached in epoch {epoch}"
            break
    summary = {
        "method": "SimCLR (NT-Xent)",
        "settings": cfg.model_dump(),
        "data": str(data_spec),
        "n_images": len(images),
        "channels": int(images.shape[1]),
        "batch_size": bs,
        "device": str(dev),
        "augmentations": AUGMENTATIONS,
        "projection_head": f"Linear({clf.num_features}, {cfg.proj_hidden}) -> ReLU -> Linear({cfg.proj_hidden}, {cfg.proj_dim}) (discarded)",
        "chance_loss": math.log(2 * bs - 1),
        "steps": steps,
        "train_seconds": time.time() - start,
        "stop_reason": stop_reason,
        "loss_curve": rows,
        "encoder": str(out / "encoder.pth"),
        "use": [
            f"qmed classify train --model {cfg.model} --weights {out / 'encoder.pth'} ...",
            *(
                [f"qmed train --set model.encoder=mobilenet_v2 --set model.encoder_weights={out / 'encoder.pth'} ..."]
                if cfg.model == "mobilenet_v2"
                else []
            ),
        ],
    }
    write_json(out / "pretrain.json", summary)
    log.info("%s; encoder written to %s", stop_reason, out / "encoder.pth")
    return summary
