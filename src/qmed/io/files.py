"""Output safety in one place: atomic writes (a reader never sees a half-written file, and a crash
leaves the old one intact), the one --force check, and staging folders renamed into place.

The rule every verb that writes follows (issue 41):
- an --out that equals, contains or lies inside an input path (resolved, symlinks followed) is refused,
  --force or not: writing there could replace or delete the user's data;
- every output folder qmed makes holds OUTPUT_MARKER; --force replaces only a folder that holds it
  (or an empty one), never a folder qmed did not write;
- temporary files and staging folders carry their owner's pid and start time, so a later run removes a
  killed run's leftovers and never touches a live run's;
- folders and files get the mode a plain mkdir()/open() would (the umask decides)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qmed.errors import QmedInputError

# mkstemp makes files 0600 and mkdtemp folders 0700; outputs should get the mode a plain open() /
# mkdir() would (0666 / 0777 minus umask), so colleagues on a shared server can read results.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK

OUTPUT_MARKER = ".qmed-output.json"  # written into every output folder qmed makes
_STAGE_TAG = ".qmed-stage-"  # staging folders: .OUT.qmed-stage-PID-START-xxxx
_TMP_TAG = ".qmed-tmp-"  # atomic temporaries: .STEM.qmed-tmp-PID-START-xxxx.tmp.SUFFIX


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot, Linux); "0" where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


_OWNER = f"{os.getpid()}-{_start_time(os.getpid())}"


def _owner() -> str:
    """pid-start of this process (recomputed after a fork, e.g. in a worker process)."""
    global _OWNER
    if not _OWNER.startswith(f"{os.getpid()}-"):
        _OWNER = f"{os.getpid()}-{_start_time(os.getpid())}"
    return _OWNER


def _owner_alive(tag: str) -> bool:
    """Is the process named by 'PID-START' still the one that made the file?"""
    try:
        pid_s, start = tag.split("-")[:2]
        pid = int(pid_s)
    except ValueError:
        return False
    if start != "0" and Path("/proc").is_dir():
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: str | Path, recursive: bool = False) -> int:
    """Remove temporaries and staging folders under `folder` whose owner process is gone (a run killed
    mid-write); a live run's are left alone. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        for tag in (_STAGE_TAG, _TMP_TAG):
            if tag in p.name and not _owner_alive(p.name.split(tag, 1)[1]):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                n += 1
    return n


def make_dirs(path: str | Path) -> Path:
    """mkdir -p that follows the umask (Path.mkdir does; this names the intent)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (same filesystem)."""
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}{_TMP_TAG}{_owner()}-", suffix=f".tmp{path.suffix}", dir=path.parent
    )
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
    """A file, or a folder with anything but qmed's own hidden leftovers, is in the way of `out`."""
    if not out.exists():
        return False
    if not out.is_dir():
        return True
    return any(p.name != OUTPUT_MARKER for p in out.iterdir())


def _resolved(p: str | Path) -> Path:
    path = Path(os.path.abspath(Path(p).expanduser()))
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path as written
        return path


def check_not_inputs(out: str | Path, inputs: Iterable[str | Path | None], what: str = "output folder") -> None:
    """Refuse an `out` that equals, contains or lies inside an input path (symlinks followed): writing or
    --force there could replace the user's data. Checked with or without --force."""
    o = _resolved(out)
    for src in inputs:
        if src is None or str(src) == "":
            continue
        r = _resolved(src)
        if o == r or o in r.parents or r in o.parents:
            rel = "is" if o == r else ("holds" if o in r.parents else "lies inside")
            raise QmedInputError(
                out, f"{what} {rel} the input {src}; qmed never writes over its inputs: choose an --out outside them"
            )


def input_paths(*specs) -> list[Path]:
    """The files or folders behind input specs ("FILE.npz:train" is FILE.npz), for check_not_inputs."""
    out = []
    for spec in specs:
        if spec is None or str(spec) == "":
            continue
        s = str(spec)
        head, sep, tail = s.rpartition(":")
        out.append(Path(head if sep and head.lower().endswith(".npz") else s))
    return out


def read_json(path: str | Path) -> Any:
    """A JSON file qmed wrote, or None when it is missing or unreadable (a resume then recomputes it)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_marker(out: str | Path) -> dict | None:
    """The marker of a folder qmed wrote (what wrote it, and the settings key of a resumable run)."""
    marker = read_json(Path(out) / OUTPUT_MARKER)
    return marker if isinstance(marker, dict) else None


def write_marker(out: str | Path, verb: str, key: str | None = None) -> None:
    from qmed import __version__

    write_json(
        Path(out) / OUTPUT_MARKER,
        {"qmed": __version__, "verb": verb, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )


def check_output(
    out: str | Path,
    force: bool,
    what: str = "output folder",
    hint: str = "",
    inputs: Iterable[str | Path | None] = (),
    kind: str = "folder",
) -> None:
    """The one --force check, before anything is written: `out` must not overlap an input; an occupied
    `out` is refused unless `force`; and with `force` a folder is replaced only when qmed wrote it
    (OUTPUT_MARKER inside), a file only by a file (`kind`)."""
    out = Path(out)
    check_not_inputs(out, inputs, what)
    if not is_occupied(out):
        return
    if not force:
        raise QmedInputError(out, f"{what} exists and is not empty; pass --force to overwrite it{hint}")
    if kind == "folder":
        if not out.is_dir():
            raise QmedInputError(out, f"is a file, not a {what}; qmed will not replace it, even with --force")
        if read_marker(out) is None:
            raise QmedInputError(
                out,
                f"{what} was not written by qmed (no {OUTPUT_MARKER} inside); --force replaces only "
                "qmed's own outputs: choose another --out, or empty it yourself",
            )
    elif out.is_dir():
        raise QmedInputError(out, f"is a folder; give the {what} to write")


def clear_output(out: Path) -> None:
    """Empty a folder that check_output allowed (qmed's own output), keeping the folder itself."""
    for p in out.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def prepare_output_dir(
    out: str | Path,
    force: bool,
    subdirs: Sequence[str] = (),
    what: str = "output folder",
    hint: str = "",
    inputs: Iterable[str | Path | None] = (),
    verb: str = "output",
    key: str | None = None,
) -> Path:
    """An empty folder at `out` (with `subdirs`) holding qmed's marker: an occupied one is refused unless
    `force` (and then only if qmed wrote it), then cleared."""
    out = Path(out)
    check_output(out, force, what, hint, inputs)
    if out.is_dir():
        clear_output(out)
    make_dirs(out)
    for d in subdirs:
        make_dirs(out / d)
    write_marker(out, verb, key)
    return out


def staging_dir(out: str | Path, force: bool, inputs: Iterable[str | Path | None] = (), verb: str = "output") -> Path:
    """A hidden sibling folder of `out` to write into, so a failure leaves no half-written output;
    `commit_staged` renames it into place. A killed run's staging folder is removed here."""
    out = Path(out)
    check_output(out, force, inputs=inputs)
    make_dirs(out.parent)
    remove_stale(out.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGE_TAG}{_owner()}-", dir=out.parent))
    os.chmod(stage, _DIR_MODE)
    write_marker(stage, verb)
    return stage


def commit_staged(stage: Path, out: str | Path) -> None:
    """Replace `out` (checked by staging_dir: empty, or qmed's own output under --force) with the
    finished staging folder."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    stage.replace(out)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (a model in a resume key: the same path may hold another model later)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def settings_key(settings: dict) -> str:
    """A short stable hash of the settings that decide a resumable output (sorted-key JSON)."""
    import hashlib

    return hashlib.sha256(json.dumps(json_safe(settings), sort_keys=True).encode()).hexdigest()[:16]


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
