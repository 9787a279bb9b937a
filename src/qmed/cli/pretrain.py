"""`qmed pretrain simclr`: self-supervised pretraining of a classifier backbone (SPEC Q2).

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
    weights_option,
)
from qmed.config import SimCLRConfig

pretrain_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Self-supervised pretraining of a classifier backbone on unlabelled images.",
)


_d = SimCLRConfig.default  # the options repeat SimCLRConfig's fields with its defaults


@pretrain_app.command("simclr")
@handle_errors
def simclr_cmd(
    data: str = typer.Option(
        ...,
        "--data",
        help="Unlabelled images: a folder (searched recursively; class sub-folders are fine, "
        "their names are ignored), or FILE.npz[:SPLIT] (default split: train).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: encoder.pth (backbone state dict) and pretrain.json (settings, loss curve)."
    ),
    model: str = typer.Option(
        _d("model"), help="Backbone: mobilenet_v2, resnet18, densenet121, vgg16, efficientnet_b0, or timm:NAME."
    ),
    weights: str = typer.Option(
        _d("weights"),
        help="Starting weights: imagenet (mobilenet_v2: the offline file when installed), a local .pth, or none.",
    ),
    image_size: int = typer.Option(
        _d("image_size"), help="Images are resized to SIZE x SIZE (use the size you will classify at)."
    ),
    epochs: int = typer.Option(_d("epochs"), help="Epoch limit."),
    minutes: float | None = typer.Option(_d("minutes"), help="Wall-clock training budget in minutes."),
    batch_size: int = typer.Option(
        _d("batch_size"), help="Images per batch (2 views each: 2 x SIZE forward passes per step)."
    ),
    temperature: float = typer.Option(_d("temperature"), help="NT-Xent temperature tau."),
    lr: float = typer.Option(_d("lr"), help="Adam learning rate."),
    seed: int = typer.Option(_d("seed")),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
):
    """SimCLR: two augmented views per image, a 2-layer projection head, NT-Xent loss; saves the backbone.

    Augmentations keep anatomy plausible: crops of 50-100 % of the area, horizontal flips, rotations up to 15 degrees, brightness/contrast, blur, noise (no colour jitter, no vertical flips).

    Use the result with `qmed classify train --weights OUT/encoder.pth` (for mobilenet_v2 also with `qmed train --set model.encoder_weights=OUT/encoder.pth`)."""
    setup_logging(True)
    from qmed.classify.pretrain import pretrain_simclr

    check_ranges(
        ("--image-size", image_size, Rule("at least 16 (pixels)", lo=16)),
        ("--epochs", epochs, COUNT),
        ("--minutes", minutes, POSITIVE),
        ("--batch-size", batch_size, Rule("at least 2 (a view needs negatives)", lo=2)),
        ("--temperature", temperature, POSITIVE),
        ("--lr", lr, POSITIVE),
        ("--seed", seed, SEED),
    )
    check_device(device)
    check_writable_parent(out)
    cfg = SimCLRConfig.from_dict(
        dict(
            model=model,
            weights=weights_option(weights),
            image_size=image_size,
            epochs=epochs,
            minutes=minutes,
            batch_size=batch_size,
            temperature=temperature,
            lr=lr,
            seed=seed,
        )
    )
    s = pretrain_simclr(cfg, data, out, force=force, device=device)
    last = s["loss_curve"][-1]
    console.print(
        f"{s['n_images']} images, {s['steps']} steps, {s['train_seconds']:.0f} s: NT-Xent {last['loss']:.4f} "
        f"(chance {s['chance_loss']:.4f}), pair accuracy {last['pair_accuracy']:.3f}; wrote {out / 'encoder.pth'} "
        f"and {out / 'pretrain.json'}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
