"""Checkpoint files: written atomically with a format tag, read back with a one-line error when
truncated or foreign, and found inside a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qmed.errors import QmedInputError
from qmed.io.files import atomic_path

FORMAT = "qmed-checkpoint-1"


def save(path: str | Path, state: dict[str, Any]) -> None:
    state = {"format": FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read(path: str | Path, fmt: str = FORMAT, kind: str = "qmed checkpoint") -> dict[str, Any]:
    """Load a checkpoint written by `save` (or another qmed writer with its own `fmt`)."""
    path = Path(path)
    if not path.is_file():
        raise QmedInputError(path, "checkpoint does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise QmedInputError(
            path, f"cannot be read as a checkpoint ({type(exc).__name__}); the file may be truncated"
        ) from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise QmedInputError(path, f"is not a {kind}")
    return state


def resolve_checkpoint(model_path: str | Path) -> Path:
    """A run directory (-> checkpoints/best.pt, else last.pt) or a checkpoint file."""
    p = Path(model_path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise QmedInputError(p, "run directory holds no checkpoints/best.pt or checkpoints/last.pt")
    if not p.exists():
        raise QmedInputError(p, "model path does not exist (give a run directory or a .pt checkpoint)")
    return p
