"""Output safety in one place: atomic writes (a reader never sees a half-written file, and a crash
leaves the old one intact), the one --force check, and staging folders renamed into place."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from qmed.errors import QmedInputError

# mkstemp makes files 0600; outputs should get the mode a plain open() would (0666 minus umask).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (same filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text(path: str | Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """The one JSON writer: strict JSON (NaN and infinities become null, which every parser reads)."""
    write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False, default=_json_default) + "\n")


def is_occupied(out: Path) -> bool:
    """A file, or a non-empty folder, is in the way of `out`."""
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def check_output(out: str | Path, force: bool, what: str = "output folder", hint: str = "") -> None:
    """The one --force check: refuse an occupied `out` unless `force`, before anything is written."""
    out = Path(out)
    if is_occupied(out) and not force:
        raise QmedInputError(out, f"{what} exists and is not empty; pass --force to overwrite it{hint}")


def prepare_output_dir(out: str | Path, force: bool, subdirs: Sequence[str] = (), what: str = "output folder",
                       hint: str = "") -> Path:
    """An empty folder at `out` (with `subdirs`): an occupied one is refused unless `force`, then cleared."""
    out = Path(out)
    check_output(out, force, what, hint)
    if out.exists() and not out.is_dir():
        out.unlink()
    elif out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for d in subdirs:
        (out / d).mkdir(parents=True, exist_ok=True)
    return out


def staging_dir(out: str | Path, force: bool) -> Path:
    """A hidden sibling folder of `out` to write into, so a failure leaves no half-written output;
    `commit_staged` renames it into place."""
    out = Path(out)
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def commit_staged(stage: Path, out: str | Path) -> None:
    """Replace `out` (whatever is there) with the finished staging folder."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    stage.replace(out)


def json_safe(obj):
    """`obj` with NaN/inf as None, numpy scalars and arrays as Python numbers and lists, paths as
    strings: strict JSON (json.dumps(..., allow_nan=False) accepts it)."""
    import numpy as np

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
