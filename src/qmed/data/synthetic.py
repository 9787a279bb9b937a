"""Synthetic fluorescence-nuclei images (DAPI/Hoechst-like), seeded, no download.

They imitate the DSB2018 fluorescence set: dim-to-bright elliptical, slightly irregular nuclei with
chromatin-like texture on a near-black background, clustered and touching in places, blurred by the
optics, with uneven illumination, out-of-focus haze and Poisson + read camera noise. Some images hold
only a few nuclei or tiny ones (< 50 px), some are empty.

Every nucleus in the label map is one 4-connected region; nuclei never overlap (a nucleus that would
hide too much of an earlier one is rejected, a small overlap is resolved in favour of the earlier
one, so touching nuclei share a border).

    image, labels = generate_sample(np.random.default_rng(0))        # uint8 HxW, uint16 HxW
    write_dataset("synth", 100)                                      # synth/images, synth/masks
    train_dir, val_dir = write_demo_splits("demo", 48, 16)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from qmed.errors import QmedInputError

NAME_PREFIX = "synth"
_NAME_RX = re.compile(rf"^{NAME_PREFIX}_\d+\.png$")
_MAX_OVERLAP = 0.15  # fraction of a new nucleus that may lie on earlier ones
_MIN_PIXELS = 6  # nuclei smaller than this after occlusion are dropped


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    h, w = (int(s) for s in size)
    if h < 8 or w < 8:
        raise QmedInputError(None, f"synthetic image size must be at least 8x8, got {w}x{h}")
    return h, w


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    s = f.std()
    return f / s if s > 0 else f


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Slowly varying multiplicative field around 1 (vignetting / uneven lamp)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    strength = rng.uniform(0.0, 0.35)
    gy, gx = rng.uniform(-1, 1, 2)
    plane = gy * (yy - 0.5) + gx * (xx - 0.5)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.3, 0.7) ** 2))
    field = 1.0 + strength * (0.6 * plane + 0.6 * (spot - spot.mean()))
    return np.clip(field, 0.5, 1.5)


def _draw_regime(rng: np.random.Generator, shape: tuple[int, int]) -> dict:
    """Per-image look: how many nuclei, how big, how bright, how clustered."""
    h, w = shape
    area = h * w
    regime = rng.choice(["normal", "sparse", "tiny"], p=[0.76, 0.14, 0.10])
    if regime == "tiny":
        radius = rng.uniform(2.2, 3.6)  # objects of ~15-45 px
        fg_target = 10 ** rng.uniform(-2.7, -1.5)
    elif regime == "sparse":
        radius = 10 ** rng.uniform(np.log10(4.5), np.log10(14))
        fg_target = 10 ** rng.uniform(-2.8, -1.8)
    else:
        radius = 10 ** rng.uniform(np.log10(4.5), np.log10(16))
        fg_target = 10 ** rng.uniform(-1.5, -0.35)  # 3 % .. 45 % asked, a bit less placed
    n = int(round(fg_target * area / (np.pi * radius**2)))
    n = int(np.clip(n, 1, 600))
    return {
        "regime": str(regime),
        "radius": float(radius),
        "n": n,
        "radius_spread": rng.uniform(0.1, 0.3),
        "clustered": bool(rng.random() < 0.5),
        "brightness": 10 ** rng.uniform(np.log10(30), np.log10(140)),
        "brightness_spread": rng.uniform(0.15, 0.45),
        "mitotic_rate": rng.uniform(0.0, 0.08),
        "rim": rng.uniform(0.0, 0.5) if rng.random() < 0.35 else 0.0,  # brighter nuclear envelope
        "texture": rng.uniform(0.12, 0.45),
    }


def _centers(rng: np.random.Generator, shape: tuple[int, int], n: int, radius: float, clustered: bool) -> np.ndarray:
    """Candidate nucleus centres (more than needed: some get rejected)."""
    h, w = shape
    m = 3 * n + 10
    if not clustered:
        return np.column_stack([rng.uniform(0, h, m), rng.uniform(0, w, m)])
    k = int(rng.integers(1, max(2, min(8, n // 4 + 2))))
    cc = np.column_stack([rng.uniform(0, h, k), rng.uniform(0, w, k)])
    which = rng.integers(0, k, m)
    spread = radius * rng.uniform(2.0, 6.0, k)
    pts = cc[which] + rng.standard_normal((m, 2)) * spread[which, None]
    uniform = rng.random(m) < 0.25  # some scattered nuclei between the clusters
    pts[uniform] = np.column_stack([rng.uniform(0, h, uniform.sum()), rng.uniform(0, w, uniform.sum())])
    pts[:, 0] = np.clip(pts[:, 0], -radius / 2, h - 1 + radius / 2)
    pts[:, 1] = np.clip(pts[:, 1], -radius / 2, w - 1 + radius / 2)
    return pts


def _nucleus_shape(rng: np.random.Generator, cy: float, cx: float, r: float, shape: tuple[int, int], elongated: bool):
    """Bounding-box slices, inside mask and normalised radius rho (0 centre .. 1 edge) of one nucleus."""
    h, w = shape
    q = rng.uniform(0.3, 0.55) if elongated else rng.uniform(0.55, 1.0)  # axis ratio b/a
    a, b = r / np.sqrt(q), r * np.sqrt(q)
    theta0 = rng.uniform(0, np.pi)
    ks = np.arange(2, 6)
    amp = rng.normal(0, 1, ks.size) * rng.uniform(0.02, 0.07) / ks * 2
    phase = rng.uniform(0, 2 * np.pi, ks.size)
    reach = a * (1 + np.abs(amp).sum()) + 1.5
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, h)
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, w)
    if y1 <= y0 or x1 <= x0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    ang = np.arctan2(dy, dx)
    phi = ang - theta0
    r_ell = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    wobble = 1.0 + (amp[:, None, None] * np.cos(ks[:, None, None] * ang[None] + phase[:, None, None])).sum(0)
    rho = dist / (r_ell * wobble)
    inside = rho <= 1.0
    return (slice(y0, y1), slice(x0, x1)), inside, rho


def generate_sample(
    rng: np.random.Generator, size: int | tuple[int, int] = (256, 256), empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic fluorescence image (uint8 HxW) and its instance label map (uint16 HxW, 0 = background)."""
    shape = _as_size(size)
    h, w = shape
    labels = np.zeros(shape, dtype=np.int32)
    signal = np.zeros(shape, dtype=np.float64)

    # Drawn for every image (also empty ones) so that the background statistics look alike.
    background = rng.uniform(2.0, 14.0)
    illum = _illumination(rng, shape)
    texture = 0.65 * _smooth_noise(rng, shape, rng.uniform(0.7, 1.2)) + 0.35 * _smooth_noise(
        rng, shape, rng.uniform(2.0, 3.5)
    )
    psf_sigma = rng.uniform(0.6, 1.5) if rng.random() < 0.8 else rng.uniform(1.5, 2.2)  # some out of focus
    gain = rng.uniform(0.25, 1.2)  # DN per photon: lower = smoother
    read_noise = rng.uniform(0.4, 1.8)

    if not empty:
        p = _draw_regime(rng, shape)
        centers = _centers(rng, shape, p["n"], p["radius"], p["clustered"])
        # Fallbacks near the middle so that a non-empty image always holds a nucleus.
        centers = np.concatenate([centers, np.array([[h / 2, w / 2]]) + rng.uniform(-0.2, 0.2, (5, 2)) * (h, w)])
        placed = 0
        for k, (cy, cx) in enumerate(centers):
            if k >= len(centers) - 5 and placed > 0:
                break
            if placed >= p["n"]:
                break
            mitotic = rng.random() < p["mitotic_rate"]
            r = p["radius"] * float(np.exp(rng.normal(0, p["radius_spread"])))
            if mitotic:
                r *= rng.uniform(0.5, 0.75)
            r = float(np.clip(r, 2.0, 22.0))
            got = _nucleus_shape(rng, cy, cx, r, shape, elongated=mitotic or rng.random() < 0.08)
            bright = p["brightness"] * float(np.exp(rng.normal(0, p["brightness_spread"])))
            if mitotic:
                bright *= rng.uniform(1.8, 3.0)
            tex_amp = p["texture"] * rng.uniform(0.6, 1.4) * (0.4 if mitotic else 1.0)
            if got is None:
                continue
            sl, inside, rho = got
            area = int(inside.sum())
            if area == 0:
                continue
            occupied = labels[sl] > 0
            if np.count_nonzero(inside & occupied) > _MAX_OVERLAP * area:
                continue
            own = inside & ~occupied
            comp, ncomp = ndimage.label(own)
            if ncomp > 1:  # keep the largest piece so every nucleus is one region
                sizes = np.bincount(comp.ravel())[1:]
                own = comp == (int(np.argmax(sizes)) + 1)
            if np.count_nonzero(own) < _MIN_PIXELS:
                continue
            placed += 1
            labels[sl][own] = placed
            # Dome-shaped profile with a soft edge (optionally a brighter envelope), times chromatin texture.
            profile = np.clip(1.0 - rho**2, 0.0, 1.0) ** 0.35 * 0.7 + 0.3 + p["rim"] * np.clip(rho, 0.0, 1.0) ** 4
            vals = bright * profile * (1.0 + tex_amp * texture[sl])
            signal[sl][own] = np.maximum(vals[own], 0.0)

    # Optics: blur (PSF), a faint out-of-focus haze, uneven illumination, background.
    img = ndimage.gaussian_filter(signal, psf_sigma)
    if signal.any():
        img += rng.uniform(0.02, 0.12) * ndimage.gaussian_filter(signal, rng.uniform(6.0, 12.0))
    bg_texture = 1.0 + 0.15 * _smooth_noise(rng, shape, 6.0)
    img = (img + background * bg_texture) * illum
    # Camera: shot noise (Poisson in photons) plus gaussian read noise, 8-bit.
    img = rng.poisson(np.maximum(img, 0.0) / gain) * gain + rng.normal(0.0, read_noise, shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, labels.astype(np.uint16)


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    from qmed.io.files import write_atomic

    img = Image.fromarray(arr)  # uint8 -> L, uint16 -> I;16 (16-bit gray PNG)
    write_atomic(path, lambda p: img.save(p, format="PNG"))


def write_dataset(
    out_dir: str | Path,
    n: int,
    size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
    empty_fraction: float = 0.1,
    *,
    _stream: int = 0,
) -> Path:
    """Write `n` synthetic pairs as out_dir/images/synth_0000.png + out_dir/masks/synth_0000.png.

    Masks are 16-bit instance label maps. Exactly round(empty_fraction * n) images are empty.
    Same arguments -> identical files. Earlier synth_*.png files beyond `n` are removed so the
    folder holds exactly this dataset (other files are left alone). Returns out_dir.
    """
    out_dir = Path(out_dir)
    n = int(n)
    if n < 1:
        raise QmedInputError(out_dir, f"number of synthetic images must be >= 1, got {n}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise QmedInputError(out_dir, f"empty_fraction must be in [0, 1], got {empty_fraction}")
    shape = _as_size(size)
    img_dir, mask_dir = out_dir / "images", out_dir / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    n_empty = int(round(empty_fraction * n))
    pick = np.random.default_rng(np.random.SeedSequence([int(seed), int(_stream), 0xE]))
    empty = np.zeros(n, dtype=bool)
    empty[pick.choice(n, size=n_empty, replace=False)] = True
    width = max(4, len(str(n - 1)))
    names = set()
    for i in range(n):
        name = f"{NAME_PREFIX}_{i:0{width}d}"
        names.add(name + ".png")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(_stream), i]))
        image, labels = generate_sample(rng, shape, empty=bool(empty[i]))
        _write_png(img_dir / f"{name}.png", image)
        _write_png(mask_dir / f"{name}.png", labels)
    for folder in (img_dir, mask_dir):
        for stale in folder.iterdir():
            if _NAME_RX.match(stale.name) and stale.name not in names:
                stale.unlink()
    return out_dir


def write_demo_splits(
    root: str | Path,
    n_train: int = 48,
    n_val: int = 16,
    size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
) -> tuple[Path, Path]:
    """Independent train and val sets under root/train and root/val (different random streams)."""
    root = Path(root)
    train = write_dataset(root / "train", n_train, size=size, seed=seed, _stream=0)
    val = write_dataset(root / "val", n_val, size=size, seed=seed, _stream=1)
    return train, val
