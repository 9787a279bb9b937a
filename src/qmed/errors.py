"""One exception type for problems with the user's input.

The CLI catches it and prints its message as a single line (exit code 2), so every message must
name the file (or folder) and say what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path


class QmedInputError(Exception):
    """Bad user input: a file, folder, option or config that qmed cannot use."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


def require_extra(module: str, extra: str, purpose: str):
    """Import an optional dependency, or stop with one line naming the `pip install` that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise QmedInputError(
            None, f"{purpose} needs the optional package {module.split('.')[0]}: pip install 'qmed[{extra}]'"
        ) from None
