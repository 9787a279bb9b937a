"""The one matplotlib set-up: the Agg backend (no display on servers and in CI) and atomic PNG writes.

matplotlib is imported on first use, so commands that draw nothing never pay for it."""

from __future__ import annotations

from pathlib import Path

from qmed.io.files import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int | None = 100, tight: bool = False) -> Path:
    """Write `fig` as a PNG at `path` atomically (never a half-written file), then close it."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return Path(path)
