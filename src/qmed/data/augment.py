"""The paper's augmentation pipeline (S9), applied identically to image and mask (albumentations).

Cropping comes first so the elastic warp runs on the crop, not on a 1000x1000 image. The edge
channel is computed later, inside the model, from the augmented image, so it always agrees with
what the network sees.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from qmed.config import AugmentConfig  # noqa: E402


def train_transform(cfg: AugmentConfig) -> A.Compose:
    ops = [
        A.HorizontalFlip(p=cfg.flip_p),
        A.VerticalFlip(p=cfg.flip_p),
        A.RandomRotate90(p=cfg.rot90_p),
    ]
    if cfg.elastic_p > 0:
        ops.append(
            A.ElasticTransform(
                alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma, border_mode=cv2.BORDER_REFLECT_101, p=cfg.elastic_p
            )
        )
    if cfg.brightness_contrast_p > 0 and cfg.brightness_contrast > 0:
        lim = cfg.brightness_contrast
        ops.append(A.RandomBrightnessContrast(brightness_limit=lim, contrast_limit=lim, p=cfg.brightness_contrast_p))
    if cfg.stain_p > 0:
        # The image is float in [0, 1] here; HEStain needs three channels (gray data never asks for it).
        ops.append(
            A.HEStain(
                method="random_preset",
                intensity_scale_range=(0.8, 1.2),
                intensity_shift_range=(-0.1, 0.1),
                p=cfg.stain_p,
            )
        )
    if cfg.hue_saturation_p > 0:
        ops.append(
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=0, p=cfg.hue_saturation_p)
        )
    if cfg.gamma_p > 0:
        ops.append(A.RandomGamma(gamma_limit=(70, 150), p=cfg.gamma_p))
    return A.Compose(ops)
