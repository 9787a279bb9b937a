"""Checkpoints and run directories of the release before the redesign still fit.

tests/data/release-0.1.0-tiny-checkpoint.json was written from a `qmed train --preset tiny` run of
qmed 0.1.0 at commit 2c6e288 (the last commit before the modules moved into folders): the
checkpoint's top-level keys, its format tag, every state-dict key with its shape, and the files of
the run directory. A model built now must have exactly those tensors, so such a checkpoint loads
(load_state_dict is strict), and a run written now must have the same layout."""

import json
from pathlib import Path

import torch

from qmed.config import resolve_config
from qmed.io.checkpoints import FORMAT
from qmed.models.segmenter import build

MANIFEST = json.loads((Path(__file__).parent / "data" / "release-0.1.0-tiny-checkpoint.json").read_text())


def test_tiny_model_has_the_release_state_dict():
    model = build(resolve_config("tiny").model, pretrained=False)
    now = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert now == MANIFEST["model"]


def test_checkpoint_format_tag_is_unchanged():
    assert FORMAT == MANIFEST["format"]


def test_a_release_checkpoint_loads(tmp_path):
    """A checkpoint laid out as the release wrote it (its keys, the tiny model's tensors) loads through load_model."""
    from qmed.io.checkpoints import save
    from qmed.segment.checkpoint import load_model

    cfg = resolve_config("tiny")
    weights = {k: torch.zeros(s) for k, s in MANIFEST["model"].items()}
    state = {
        "config": cfg.model_dump(),
        "model": weights,
        "ema_model": None,
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "run": {"epoch": 1},
    }
    assert sorted([*state, "format"]) == MANIFEST["checkpoint_keys"]
    save(tmp_path / "checkpoints" / "best.pt", state)
    model, loaded_cfg, path = load_model(tmp_path)
    assert path.name == "best.pt" and loaded_cfg.model == cfg.model
    assert all(
        float(v.abs().sum()) == 0 for k, v in model.state_dict().items() if k in weights and v.is_floating_point()
    )


def test_a_run_directory_has_the_release_layout(fluo_subset, tmp_path):
    from qmed.segment.train import train

    run = train(
        resolve_config("tiny", overrides={"train": {"epochs": 1}}),
        fluo_subset["train"],
        fluo_subset["val"],
        tmp_path / "run",
        quiet=True,
    )
    files = sorted(str(f.relative_to(run)) for f in run.rglob("*") if f.is_file())
    # Every file of the release's layout, plus the files added since (each named here on purpose).
    added_since = {
        "val_per_image.csv",  # 2026-12-01: per-image validation Dice per epoch
        ".qmed-output.json",
    }  # 2026-12-05: the marker that lets --force replace only qmed's own outputs
    assert sorted(set(files) - added_since) == MANIFEST["run_files"]
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert sorted(state) == MANIFEST["checkpoint_keys"]
