"""What every verb shares: the consoles, logging, one-line error handling, the range checks of numeric
options and of --device, and --set parsing."""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import click  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from qmed.errors import QmedInputError  # noqa: E402

console = Console()
err_console = Console(stderr=True)

# Where an internal error should go (printed under its traceback).
BUG_REPORT = "please report it to qmed's maintainers (the issue tracker of the repository you installed qmed from) with the command you ran and the traceback above"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("qmed").setLevel(logging.INFO if verbose else logging.WARNING)


def _say_error(text: str) -> None:
    err_console.print(f"error: {text}", markup=False, highlight=False, soft_wrap=True)


# OSErrors that come from the user's machine (permissions, a file where a folder belongs, a full or
# read-only disk), not from qmed: one line naming the path, like a QmedInputError.
_ENVIRONMENT_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (permissions, or a read-only place)",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a folder, where a file was expected",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error (the disk or network share failed)",
}


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def environment_error(exc: BaseException) -> str | None:
    """The one line for an exception caused by the user's environment, or None for anything else
    (an internal error: a bug). A missing file inside qmed's own package is a bug, not the user's."""
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        name = exc.filename2 if exc.filename2 is not None else exc.filename
        if name is None:
            return f"{_ENVIRONMENT_ERRNOS[exc.errno]} ({exc.strerror or exc})"
        path = Path(os.fsdecode(name))
        if exc.errno == errno.ENOENT and _package_dir() in Path(os.path.abspath(path)).parents:
            return None
        return f"{path}: {_ENVIRONMENT_ERRNOS[exc.errno]}"
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
        return "the GPU ran out of memory; use a smaller batch, crop or --tile, or --device cpu"
    if isinstance(exc, MemoryError):
        return "this machine ran out of memory (RAM); use a smaller batch, crop or --tile, or fewer images at once"
    if isinstance(exc, (RuntimeError, AssertionError)) and any(
        s in text
        for s in (
            "NVIDIA driver",
            "Torch not compiled with CUDA",
            "CUDA-capable device",
            "invalid device ordinal",
            "no CUDA GPUs are available",
        )
    ):
        return f"the device is not available: {text.strip().splitlines()[0][:200]}"
    return None


def handle_errors(fn):
    """Bad input, and a problem of the user's environment (permissions, a folder where a file belongs,
    a full disk, a missing GPU), end with one line naming the file and the problem, and exit code 2.
    Anything else is a bug in qmed: its traceback, then one line saying so and where to report it (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QmedInputError as exc:
            _say_error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # typer's own exits and usage errors (typer.Exit is a RuntimeError)
        except Exception as exc:  # noqa: BLE001 - the last word on every failure
            line = environment_error(exc)
            if line is not None:
                _say_error(line)
                raise typer.Exit(2) from None
            traceback.print_exc()
            _say_error(f"this is a bug in qmed ({type(exc).__name__}), not a problem with your input; {BUG_REPORT}")
            raise typer.Exit(1) from None

    return wrapper


# --------------------------------------------------------------------------------------------
# Range checks of numeric options: one rule per kind of value, checked in the CLI before anything
# is read or written, so an impossible value is refused in one line instead of being recorded.


@dataclass(frozen=True)
class Rule:
    """A number's allowed range: lo (<= or <, `lo_open`) and hi (<= or <, `hi_open`), optionally a
    multiple of `multiple_of`, with `zero` allowed as a special value (its meaning in `text`)."""

    text: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    multiple_of: int | None = None
    zero: bool = False

    def ok(self, v: float) -> bool:
        if self.zero and v == 0:
            return True
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return self.multiple_of is None or v % self.multiple_of == 0


# Segmentation thresholds compare probability > threshold, so 1 would make every mask empty.
SEG_THRESHOLD = Rule("at least 0 and below 1 (foreground = probability > threshold)", lo=0, hi=1, hi_open=True)
PROBABILITY = Rule("between 0 and 1", lo=0, hi=1)
FRACTION = Rule("above 0 and at most 1", lo=0, hi=1, lo_open=True)
POSITIVE = Rule("greater than 0", lo=0, lo_open=True)
NON_NEGATIVE = Rule("0 or more", lo=0)
COUNT = Rule("at least 1", lo=1)
TILE = Rule("a multiple of 32 and at least 32 (the network halves the size 5 times)", lo=32, multiple_of=32)
N_BOOT = Rule(
    "0 (no confidence intervals) or at least 100 (fewer resamples give no usable 95 % interval)", lo=100, zero=True
)
SEED = Rule("between 0 and 2**32 - 1", lo=0, hi=2**32 - 1)
NNUNET_ID = Rule("between 1 and 999 (nnU-Net's dataset IDs)", lo=1, hi=999)


def check_range(flag: str, value, rule: Rule):
    """`value` if it obeys `rule` (None, an option left out, passes); otherwise one line naming `flag`."""
    if value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise QmedInputError(None, f"{flag} must be a finite number, {rule.text}; got {value}")
    if not rule.ok(value):
        raise QmedInputError(
            None,
            f"{flag} must be {rule.text}; got {value:g}"
            if isinstance(value, float)
            else f"{flag} must be {rule.text}; got {value}",
        )
    return value


def check_ranges(*checks: tuple[str, object, Rule]) -> None:
    """check_range for each (flag, value, rule)."""
    for flag, value, rule in checks:
        check_range(flag, value, rule)


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """`device` if this machine has it: cpu, cuda or cuda:N (a GPU torch can see), mps (Apple)."""
    if device is None:
        return None
    import torch

    name = device.strip().lower()
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise QmedInputError(None, f"{flag} {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise QmedInputError(
                None,
                f"{flag} {device}: this machine has no CUDA GPU that torch {torch.__version__} can use; use --device cpu",
            )
        if dev.index is not None and dev.index >= n:
            raise QmedInputError(None, f"{flag} {device}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
        return name
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise QmedInputError(None, f"{flag} {device}: no Apple GPU (MPS) is available here; use --device cpu")
        return name
    raise QmedInputError(None, f"{flag} {device!r}: qmed runs on cpu, cuda[:N] or mps")


def check_writable_parent(out: Path | None, flag: str = "--out") -> None:
    """Fail before any work when `out` cannot be made: its nearest existing ancestor is a file, or a
    folder this user may not write into."""
    if out is None:
        return
    p = Path(os.path.abspath(Path(out).expanduser()))
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise QmedInputError(out, f"{flag} cannot be made: {anc} is a file, not a folder")
    if anc.is_dir() and not os.access(anc, os.W_OK | os.X_OK):
        raise QmedInputError(out, f"{flag} cannot be made: no permission to write into {anc}")


def check_file_out(out: Path | None, flag: str = "--out", example: str = "results.json") -> None:
    """An option that names a file to write: refuse a folder (and an impossible parent) up front."""
    if out is None:
        return
    if Path(out).is_dir():
        raise QmedInputError(out, f"is a folder; {flag} names the file to write (e.g. {Path(out) / example})")
    check_writable_parent(out, flag)


def check_preset(preset: str, auto: bool = True) -> str:
    """A segmentation preset this verb takes (`auto`: the fingerprint's choice, where the verb has it)."""
    from qmed.config import available_presets

    names = (["auto"] if auto else []) + available_presets()
    if preset not in names:
        raise QmedInputError(None, f"unknown preset {preset!r}; choose one of {', '.join(names)}")
    return preset


def weights_option(w: str | None) -> str | None:
    """--weights none/null/random/'' -> None (random initialisation); anything else as given."""
    return None if w is None or w.lower() in ("none", "null", "random", "") else w


def resolve_cli_config(
    preset: str, config: Path | None, overrides: list[str], extra: dict | None = None, data: Path | None = None
):
    """The preset, then --config, then the shortcut options (`extra`), then each --set.

    preset "auto": the settings qmed.data.planning picks from the fingerprint of `data` (the
    training set) on this machine, each with its reason in the config's `reasons`."""
    from qmed.config import deep_merge, parse_overrides, resolve_config

    check_preset(preset)
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
