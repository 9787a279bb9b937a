"""Torch datasets: random training crops (seeded per draw) and whole validation images.

Every draw is seeded by (seed, epoch, position in the epoch), so a run resumed at an epoch
boundary sees exactly the crops and augmentations an uninterrupted run would have seen.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from qmed.config import QmedConfig
from qmed.data.augment import train_transform
from qmed.data.dataset import Pair, load_pair
from qmed.data.objects import contact_map
from qmed.data.sampling import complexity_score, complexity_weights, make_sampler
from qmed.data.stain import reinhard
from qmed.errors import QmedInputError


def to_rgb(img: np.ndarray) -> np.ndarray:
    """HxWxC float -> HxWx3 (gray repeated), as the ImageNet encoders expect."""
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def normalize_intensity(
    img: np.ndarray,
    mode: str = "none",
    percentiles: tuple[float, float] = (1.0, 99.8),
    bounds: tuple[float, float] | None = None,
) -> np.ndarray:
    """Per-image intensity scaling (DataConfig.normalize); a flat image is returned unchanged.
    `bounds`: the (low, high) values to map to 0 and 1, taken elsewhere (a whole slide's), instead of
    this image's own percentiles."""
    if mode == "none":
        return img
    lo, hi = np.percentile(img, percentiles) if bounds is None else bounds
    if hi - lo < 1e-6:
        return img
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def model_input(img: np.ndarray, cfg: QmedConfig, stats: dict | None = None) -> np.ndarray:
    """The one conversion from a file's image to what the model sees: train, validate and predict.

    `stats`: statistics the conversion would take from this image, fixed instead (a whole slide's,
    so that no block of it is scaled on its own): "intensity", the (low, high) values that
    data.normalize=percentile maps to 0 and 1; "lab", the 6 L*a*b* means and stds that
    data.normalize=reinhard moves to the stain target."""
    stats = stats or {}
    if cfg.data.normalize == "reinhard":
        if cfg.data.stain_target is None:  # training sets it before reading any image (segment.train)
            raise QmedInputError(
                None, "data.normalize=reinhard needs data.stain_target (6 numbers: L*a*b* means, then stds)"
            )
        return reinhard(to_rgb(img), cfg.data.stain_target, source=stats.get("lab"))
    return to_rgb(
        normalize_intensity(img, cfg.data.normalize, cfg.data.norm_percentiles, bounds=stats.get("intensity"))
    ).astype(np.float32)


class LoadedPairs:
    """Images (as `model_input` makes them) and masks, read once (kept in memory when caching is on)."""

    def __init__(self, pairs: list[Pair], cfg: QmedConfig, cache: bool = True):
        self.pairs = pairs
        self.cfg = cfg
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.cache = cache

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        img, fg, labels = load_pair(self.pairs[i])
        item = (model_input(img, self.cfg), fg, labels)
        if self.cache:
            self._cache[i] = item
        return item


def _pad_to(img: np.ndarray, masks: tuple[np.ndarray, ...], size: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    h, w = masks[0].shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return img, masks
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    # Reflection keeps the local texture; for a 1-pixel image fall back to edge replication.
    mode = "reflect" if min(h, w) > 1 and ph < h and pw < w else "edge"
    return np.pad(img, pads + ((0, 0),), mode=mode), tuple(np.pad(m, pads, mode=mode) for m in masks)


class TrainCrops(Dataset):
    """Yields (image 3xSxS, target CxSxS) random crops; items are (index, draw position). The target
    is the foreground mask, with model.instance_head=contact also the crop's contact map
    (qmed.data.objects.contact_map of its instance labels), augmented as masks are."""

    def __init__(self, data: LoadedPairs, cfg: QmedConfig):
        self.data = data
        self.crop = cfg.data.crop
        self.zoom = cfg.data.zoom
        self.fg_crop_p = cfg.data.fg_crop_p
        self.seed = cfg.train.seed
        self.epoch = 0
        self.aug = train_transform(cfg.augment)
        self.scale_p, self.scale_range = cfg.augment.scale_p, cfg.augment.scale_range
        self.contact_width = cfg.model.contact_width if cfg.model.instance_head == "contact" else 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx, pos = item
        rng = np.random.default_rng([self.seed, self.epoch, pos])
        img, fg, labels = self.data[idx]
        f = self.zoom  # the window is cut at the source scale and resized to the crop below
        if self.scale_p > 0 and rng.random() < self.scale_p:
            lo, hi = np.log(self.scale_range)
            f *= float(np.exp(rng.uniform(lo, hi)))
        s = self.crop if f == 1.0 else max(8, int(round(self.crop / f)))
        img, (fg, labels) = _pad_to(img, (fg, labels), s)
        h, w = fg.shape
        if self.fg_crop_p > 0 and fg.any() and rng.random() < self.fg_crop_p:
            ys, xs = np.nonzero(fg)
            k = rng.integers(len(ys))
            y0 = int(np.clip(ys[k] - s // 2 + rng.integers(-s // 4, s // 4 + 1), 0, h - s))
            x0 = int(np.clip(xs[k] - s // 2 + rng.integers(-s // 4, s // 4 + 1), 0, w - s))
        else:
            y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        img_c = np.ascontiguousarray(img[y0 : y0 + s, x0 : x0 + s])
        m_c = np.ascontiguousarray(fg[y0 : y0 + s, x0 : x0 + s]).astype(np.uint8)
        masks = [m_c]
        if self.contact_width:  # on the crop's labels at the source scale: the band's width is in image px
            masks.append(contact_map(labels[y0 : y0 + s, x0 : x0 + s], self.contact_width).astype(np.uint8))
        if s != self.crop:
            size = (self.crop, self.crop)
            img_c = cv2.resize(img_c, size, interpolation=cv2.INTER_AREA if s > self.crop else cv2.INTER_LINEAR)
            img_c = img_c[..., None] if img_c.ndim == 2 else img_c
            masks = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]
        self.aug.set_random_seed(int(rng.integers(2**31 - 1)))
        out = self.aug(image=img_c, masks=masks)
        x = torch.from_numpy(np.clip(out["image"], 0.0, 1.0).transpose(2, 0, 1).copy()).float()
        return x, torch.from_numpy(np.stack(out["masks"]).astype(np.float32))


class EpochDraws(Sampler):
    """Weighted (or uniform) draws for one epoch, as (index, position) pairs; reseeded per epoch."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.drawn: list[int] = []  # this epoch's image indices so far, in draw (= batch) order

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        sampler = make_sampler(self.weights, self.num_samples, seed=self.seed * 100003 + self.epoch)
        self.drawn = []
        for pos, idx in enumerate(sampler):
            self.drawn.append(int(idx))
            yield int(idx), pos


def sampling_weights(data: LoadedPairs, cfg: QmedConfig) -> tuple[np.ndarray, list[dict]]:
    feats = [complexity_score(data[i][2]) for i in range(len(data))]
    if cfg.data.sampler in ("uniform", "hard"):  # hard starts uniform; the trainer re-weights each epoch
        return np.ones(len(data)), feats
    return complexity_weights(feats, small_boost=cfg.data.small_boost), feats
