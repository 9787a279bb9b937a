"""`--preset auto`: settings chosen from the dataset's fingerprint and the machine, with reasons.

nnU-Net's idea, kept small: the fingerprint (`qmed inspect`) says what the data look like, and a
table of rules turns that into settings on top of the `cpu` preset. Every choice is recorded with
its reason in the config's `reasons` (config.yaml of the run), so a user can see and override it
with `--set`. The rules:

* normalisation: per-image percentile scaling for fluorescence and other gray images (measured
  on dsb2018-fluo: dim images lost nuclei at the raw scale, docs/benchmarks.md 1d); the raw
  [0, 1] image with the encoder's ImageNet statistics for stained colour tissue, whose colours the
  ImageNet encoder knows and per-image scaling would shift.
* crop: the smallest power of two holding about ten object diameters of context, at least 128 and
  at most 256 px on a CPU (512 on a GPU), never above the smallest image side.
* augmentation family: H&E stain and hue/saturation jitter for stained colour tissue; gamma for
  gray images other than fluorescence; fluorescence keeps the `cpu` preset's (tuned there).
* peak LR: 2e-3 for stained colour tissue, where it won side by side at 15 minutes (docs 11d);
  the `cpu` preset's 1e-3 elsewhere (on fluorescence 2e-3 leaned to a loss, −0.013, 11d).
* decoder: the plain U-Net for stained colour tissue on a CPU, where its cheaper steps (1.5x the
  crops of UNet++ in the same minutes) won on both stained datasets side by side (docs 11g); UNet++
  elsewhere (on fluorescence the U-Net lost, 11g) and on a GPU (not measured there). At the suite's
  30 minutes its gain did not carry: level with UNet++ (12f), so what lasts there is the cheaper step.
* sampler: online hard-image mining (measured on dsb2018-fluo, 1g); uniform when there are fewer
  than 16 training images (too few for per-image weights to mean much).
* epochs: `--minutes` fits them to the budget on this machine (qmed.segment.budget), with the
  preset's floor of useful work.
"""

from __future__ import annotations

import math
from pathlib import Path

from qmed.config import QmedConfig, deep_merge, load_yaml, parse_overrides, resolve_config
from qmed.data.dataset import find_pairs, fingerprint

BASE_PRESET = "cpu"
MAX_FINGERPRINT_IMAGES = 200  # enough to see what the data look like; keeps planning to seconds


def plan(fp: dict, gpu: bool = False) -> tuple[dict, dict[str, str]]:
    """(overrides on the `cpu` preset, {setting: reason}) for a dataset with fingerprint `fp`."""
    over: dict = {}
    why: dict[str, str] = {}

    def put(path: str, value, reason: str) -> None:
        node = over
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        why[path] = reason

    kind = fp.get("modality", "gray")
    why["modality"] = (
        f"{kind}: colour in {fp.get('colour_fraction', 0):.0%} of the images, median background intensity "
        f"{fp.get('background_intensity', float('nan')):.2f}, objects {fp.get('foreground_intensity', float('nan')):.2f}"
    )
    if kind in ("fluorescence", "gray"):
        put(
            "data.normalize",
            "percentile",
            f"{kind}: per-image percentile scaling (dim images lose objects at the raw scale; docs 1d)",
        )
    else:
        put(
            "data.normalize",
            "none",
            f"{kind}: the raw image with the encoder's ImageNet statistics (per-image scaling would shift stain colours)",
        )

    diam = fp.get("object_diameter_px") or 0.0
    cap = 512 if gpu else 256
    want = 2 ** math.ceil(math.log2(max(10 * diam, 128))) if diam else cap
    side = 2 ** int(math.floor(math.log2(max(fp.get("min_side", cap), 64))))
    crop = int(max(64, min(cap, want, side)))
    put(
        "data.crop",
        crop,
        f"objects ~{diam:.0f} px across: {crop} px holds about {crop / diam:.0f} diameters"
        if diam
        else f"no objects measured: {crop} px",
    )
    if side < min(cap, want):  # the images, not the objects, bound the crop
        small = fp.get("min_side", crop)
        why["data.crop"] += f" (bounded by the smallest image side, {small} px" + (
            "; smaller images are padded)" if small < crop else ")"
        )

    if kind == "brightfield-stain":
        put(
            "augment.stain_p",
            0.3,
            "stained tissue: H&E stain jitter (HEStain) for colour variation between slides and scanners",
        )
        put("augment.hue_saturation_p", 0.3, "stained tissue: hue/saturation jitter")
        put(
            "train.lr",
            2e-3,
            "stained tissue: one-cycle peak LR 2e-3 instead of 1e-3 (side by side at 15 min: MoNuSeg "
            "Dice +0.005 [+0.000, +0.009], dsb2018-histo +0.002 [-0.011, +0.019]; docs 11d)",
        )
        if not gpu:  # measured where the minutes bind (a CPU); a GPU keeps the recipe's UNet++
            put(
                "model.arch",
                "unet",
                "stained tissue on a CPU: the plain U-Net decoder does 1.5x UNet++'s crops in the same "
                "minutes (side by side at 12 min: dsb2018-histo Dice +0.008 [-0.004, +0.022], MoNuSeg +0.004 [-0.000, +0.008]; "
                "on fluorescence it lost, -0.013 [-0.031, -0.001]; docs 11g; at 30 min level with UNet++ at about two thirds "
                "of its cost per image, docs 12f)",
            )
        else:
            why["model.arch"] = (
                "stained tissue on a GPU: the recipe's UNet++ (the plain U-Net won where the minutes bind, on a CPU; docs 11g)"
            )
    elif kind == "gray":
        put("augment.gamma_p", 0.3, "gray images: gamma jitter for exposure variation")
    else:
        why["augment"] = (
            f"{kind}: the cpu preset's augmentation (flips, 90-degree rotations, elastic, brightness/contrast)"
        )

    n = fp.get("n_pairs", 0)
    if n < 16:
        put("data.sampler", "uniform", f"{n} training images: too few for per-image hardness weights")
    else:
        put("data.sampler", "hard", f"{n} training images: online hard-image mining (docs 1g)")
    return over, why


def auto_config(
    train_source: str | Path,
    config_file: str | Path | None = None,
    overrides: list[str] | dict | None = None,
    gpu: bool = False,
) -> QmedConfig:
    """The `cpu` preset with the fingerprint's choices, then `config_file`, then `overrides` (those win)."""
    pairs = find_pairs(train_source)
    n = len(pairs)
    if n > MAX_FINGERPRINT_IMAGES:  # an even spread of the sorted names
        pairs = [pairs[int(i * n / MAX_FINGERPRINT_IMAGES)] for i in range(MAX_FINGERPRINT_IMAGES)]
    over, why = plan({**fingerprint(pairs, warn=False), "n_pairs": n}, gpu=gpu)  # the run warns, into its log
    users = [load_yaml(config_file)] if config_file is not None else []
    if overrides:
        users.append(parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    for user in users:
        over = deep_merge(over, user)
        for section, fields in user.items():  # a user's setting is no longer the planner's
            for f in fields if isinstance(fields, dict) else {}:
                why.pop(f"{section}.{f}", None)
    cfg = resolve_config(BASE_PRESET, overrides=over)
    return cfg.model_copy(update={"name": "auto", "reasons": why})
