"""`qmed synthesize`: minority-class images from a small DDPM trained on one class folder (SPEC Q3).

Registered on the main app by `qmed.cli.app`; the shared helpers come from `qmed.cli.common`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from qmed.cli.common import (
    COUNT,
    POSITIVE,
    SEED,
    Rule,
    check_device,
    check_ranges,
    check_writable_parent,
    console,
    handle_errors,
    setup_logging,
)
from qmed.config import DDPMConfig

_d = DDPMConfig.default  # the options repeat DDPMConfig's fields with its defaults


@handle_errors
def synthesize_cmd(
    data: Path = typer.Option(
        ..., "--data", help="Folder with the images of one class (searched recursively), e.g. DATA/train/malignant."
    ),
    n: int = typer.Option(..., "--n", help="Number of images to generate."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: images/, ddpm/ (the model), samples.png, synthesize.json."
    ),
    image_size: int = typer.Option(
        _d("image_size"), help="The DDPM works at SIZE x SIZE (a multiple of 4, at least 16)."
    ),
    epochs: int = typer.Option(_d("epochs"), help="Epoch limit."),
    minutes: float | None = typer.Option(
        _d("minutes"), help="Wall-clock training budget in minutes (sampling comes on top)."
    ),
    batch_size: int = typer.Option(_d("batch_size"), help="Images per training step."),
    lr: float = typer.Option(_d("lr"), help="Adam learning rate."),
    sample_steps: int = typer.Option(_d("sample_steps"), help="DDIM sampling steps (of the 1000 training timesteps)."),
    seed: int = typer.Option(_d("seed")),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
):
    """Train a small DDPM (diffusers UNet2DModel, from scratch) on one class and generate N images.

    Writes OUT/images/*.png for `qmed classify train --synthetic OUT`, and reports KID (MobileNetV2 features) and nearest-neighbour distances to the training images (a check against copying)."""
    setup_logging(True)
    from qmed.classify.synthesize import synthesize

    check_ranges(
        ("--n", n, COUNT),
        ("--image-size", image_size, Rule("a multiple of 4 and at least 16 (pixels)", lo=16, multiple_of=4)),
        ("--epochs", epochs, COUNT),
        ("--minutes", minutes, POSITIVE),
        ("--batch-size", batch_size, COUNT),
        ("--lr", lr, POSITIVE),
        ("--sample-steps", sample_steps, Rule("between 1 and 1000 (the training timesteps)", lo=1, hi=1000)),
        ("--seed", seed, SEED),
    )
    check_device(device)
    check_writable_parent(out)
    cfg = DDPMConfig.from_dict(
        dict(
            image_size=image_size,
            n=n,
            epochs=epochs,
            minutes=minutes,
            batch_size=batch_size,
            lr=lr,
            sample_steps=sample_steps,
            seed=seed,
        )
    )
    s = synthesize(cfg, data, out, force=force, device=device)
    q = s["quality"]
    kid = f"KID {q['kid']['mean']:.4f} ± {q['kid']['std']:.4f}" if q["kid"] else f"KID {q['kid_extractor']}"
    nn = q["nearest_neighbour"]
    con = console
    con.print(
        f"trained on {s['n_train']} images ({s['steps']} steps, {s['train_seconds']:.0f} s, final loss {s['loss_curve'][-1]['loss']:.4f}); "
        f"wrote {s['n_images']} images to {out / 'images'}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    con.print(
        f"{kid}; nearest-neighbour RMS distance, median: synthetic->train {nn['synthetic_to_train']['median']:.4f}, "
        f"train->train {nn['train_to_train_leave_one_out']['median']:.4f}; "
        f"{nn['n_closer_than_any_real_pair']} closer than any real pair. See {out / 'synthesize.json'} and {out / 'samples.png'}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
