"""Write the nuclei stand-in model of tests/test_cohort.py to a file, for tiny runs of the cohort benchmarks.

Usage: python benchmarks/stand_in_model.py --out /tmp/coh/stand_in.pt

A tiny U-Net (timm's MobileNetV3-small 0.5 encoder, no edge channel) straight from initialisation,
its output layer w, b replaced by -10 w, -10 (b - 1.7): untrained, its logits sit near 1.4 on
dark (nuclear) pixels and 2.0 on the pale background, so the new ones are about +3 and -3 there.
Deterministic, about 1 s a 256 px block on one thread; says nothing about quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from qmed.config import load_preset
    from qmed.io.checkpoints import save
    from qmed.models.segmenter import build

    torch.manual_seed(0)
    cfg = load_preset("tiny")
    cfg.model.encoder, cfg.model.arch, cfg.model.input_mode, cfg.model.decoder_channels = (
        "tu-mobilenetv3_small_050",
        "unet",
        "none",
        [16] * 5,
    )
    cfg.model.instance_head = "none"
    cfg.predict.object_diameter = 20.0  # recorded, so planning needs no diameter pass
    state = build(cfg.model, pretrained=False).state_dict()
    state["net.segmentation_head.0.weight"] = -10.0 * state["net.segmentation_head.0.weight"]
    state["net.segmentation_head.0.bias"] = -10.0 * (state["net.segmentation_head.0.bias"] - 1.7)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save(args.out, {"config": cfg.model_dump(), "model": state})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
