"""What every verb shares: the consoles, logging, one-line error handling and --set parsing."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from qmed.errors import QmedInputError  # noqa: E402

console = Console()
err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("qmed").setLevel(logging.INFO if verbose else logging.WARNING)


def handle_errors(fn):
    """Bad input ends with one line naming the file and the problem, and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QmedInputError as exc:
            err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130)

    return wrapper


def weights_option(w: Optional[str]) -> Optional[str]:
    """--weights none/null/random/'' -> None (random initialisation); anything else as given."""
    return None if w is None or w.lower() in ("none", "null", "random", "") else w


def resolve_cli_config(preset: str, config: Optional[Path], overrides: List[str], extra: dict | None = None,
                       data: Optional[Path] = None):
    """The preset, then --config, then the shortcut options (`extra`), then each --set.

    preset "auto": the settings qmed.data.planning picks from the fingerprint of `data` (the
    training set) on this machine, each with its reason in the config's `reasons`."""
    from qmed.config import deep_merge, parse_overrides, resolve_config

    over = parse_overrides(overrides or [])
    if extra:
        over = deep_merge(extra, over)
    if preset == "auto":
        import torch

        from qmed.data.planning import auto_config

        if data is None:
            raise QmedInputError(None, "--preset auto needs --data (it reads the training set's fingerprint)")
        cfg = auto_config(data, config, over, gpu=torch.cuda.is_available())
        for key, reason in cfg.reasons.items():
            console.print(f"  auto: {key}: {reason}", markup=False, highlight=False, soft_wrap=True)
        return cfg
    return resolve_config(preset, config, over)
