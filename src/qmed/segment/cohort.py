"""Cohorts of whole slides on Dask distributed: every slide's blocks become tasks.

One slide, a folder of slides or a text file listing them goes through the block engine of
`qmed.segment.slide` (plan -> run_windows and run_block per block -> finish), on

- an existing Dask cluster (`scheduler="tcp://host:8786"` or a scheduler file), whose workers have
  qmed installed and read the slides and write the outputs by path (a shared filesystem);
- a local cluster of worker processes, one torch thread each, sized to the machine (the default);
- or this process alone, as one worker, when one worker is asked for (or the machine has one core),
  and for one slide with little tissue: no Dask at all.

The traps of other tools' distributed runs are avoided by construction: a task receives paths, a
small `SlideJob` and a block index, never pixels nor a cohort- or slide-wide table (Cellpose #1482:
every worker loading one global relabel table); each block's result and marker are written
atomically by the engine as it finishes, so a crash or a killed worker loses at most the blocks in
flight and a re-run picks up where it stopped (Cellpose #1138: a crash after the last block losing
everything). Dask re-runs the blocks of a killed worker on a fresh one; the engine's markers make
that re-run idempotent. A slide that fails (unreadable, truncated) is reported with a one-line
reason in the cohort table and the others go on.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from qmed.errors import QmedInputError

logger = logging.getLogger(__name__)

COHORT_CSV = "cohort.csv"
COHORT_JSON = "cohort.json"
LIST_SUFFIX = ".txt"
STATUSES = ("done", "skipped", "failed")
# compute_s: the workers' seconds on the slide (plan, blocks, outputs; summed over runs); wall_s: this run,
# from its plan's return to its finish's (slides overlap on a cluster, so these do not add up to the run).
TABLE_FIELDS = (
    "slide",
    "status",
    "objects",
    "tissue_mm2",
    "tissue_px",
    "blocks_run",
    "blocks",
    "compute_s",
    "wall_s",
    "out",
    "reason",
)
# Dask runs the highest priority first: plans (cheap, and they find unreadable slides early), then
# the slides in order, each slide's finish before the next slide's blocks, so slides complete one
# after another and a stopped run leaves whole slides behind rather than many half-done ones.
_PLAN_PRIORITY = 10**9


class WorkerSetup(WorkerPlugin):
    """A Dask worker plugin, run in each worker as it starts (restarted ones included):
    - one torch thread per task thread: the cluster's parallelism comes from its workers, not torch;
    - where there are GPUs, a local cluster's worker number i takes GPU i modulo their count;
    - glibc's malloc thresholds back to sizes that keep large temporaries on the heap, where a nanny
      has set MALLOC_TRIM_THRESHOLD_ (Dask's default; see WORKER_ENV): remote workers started by
      `dask worker` get the same speed as a local cluster's without a config file."""

    name = "qmed-worker-setup"
    idempotent = True

    def __init__(self, malloc: bool = True):
        self.malloc = malloc  # False: leave the nanny's malloc setting (benchmarks/dask_overhead.py --dask-malloc)

    def setup(self, worker=None):
        import torch

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or inter-op work already ran in this process
            pass
        index = worker_index(getattr(worker, "name", None))
        if torch.cuda.is_available() and index is not None:
            torch.cuda.set_device(index % torch.cuda.device_count())
        if self.malloc and os.environ.get("MALLOC_TRIM_THRESHOLD_"):
            restore_malloc_thresholds()


def worker_index(name) -> int | None:
    """A worker's number on its machine: a local cluster names them 0, 1, ...; `dask worker --nworkers N`
    and dask-jobqueue name them NAME-0, NAME-1, ... None when the name holds no number."""
    if isinstance(name, int):
        return name
    tail = str(name).rsplit("-", 1)[-1] if name is not None else ""
    return int(tail) if tail.isdigit() else None


def restore_malloc_thresholds() -> bool:
    """mallopt: large allocations (up to 32 MiB) from the heap and freed memory kept up to 128 MiB,
    near glibc's own dynamic behaviour, which an explicit MALLOC_TRIM_THRESHOLD_ turns off. False where
    there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 128 << 20))
    except (OSError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------
# inputs


def list_slides(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The slides named by `inputs`: one slide file, a folder (its slide files, not recursive), a
    .txt file listing slide paths (one a line; blank lines and '#' comments skipped; relative paths
    are relative to the list's folder), or a sequence of paths. A listed path that is missing or no
    slide is kept: it fails in the cohort table with its reason instead of vanishing silently."""
    from qmed.io.slides import SLIDE_SUFFIXES, is_slide

    if not isinstance(inputs, (str, Path)):
        return [Path(p) for p in inputs]
    path = Path(inputs)
    if path.is_dir():
        found = sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and not p.name.startswith(".")
            and _has_slide_suffix(p, SLIDE_SUFFIXES)
            and (p.suffix.lower() not in (".tif", ".tiff") or is_slide(p) or not _readable_tiff(p))
        )
        if not found:
            raise QmedInputError(path, f"folder holds no slides ({', '.join(SLIDE_SUFFIXES)})")
        return found
    if path.is_file() and path.suffix.lower() == LIST_SUFFIX:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise QmedInputError(path, f"cannot read the slide list ({exc.__class__.__name__})") from None
        found = [
            Path(s) if Path(s).is_absolute() else path.parent / s
            for s in (line.strip() for line in lines)
            if s and not s.startswith("#")
        ]
        if not found:
            raise QmedInputError(path, "slide list names no slides")
        return found
    if path.is_file():
        return [path]
    raise QmedInputError(path, "no such slide, folder of slides or slide list (.txt)")


def _has_slide_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s.lower()) for s in suffixes)


def _readable_tiff(path: Path) -> bool:
    """A .tif that tifffile opens (a plain image, when is_slide said no); an unreadable one is kept as a
    slide so that the cohort reports it rather than skipping it."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            _ = tif.pages[0].shape  # reads the first page's header
        return True
    except Exception:  # noqa: BLE001 - whatever tifffile raises, the file is no image it can read
        return False


def slide_name(path: Path) -> str:
    """The output folder name of a slide: its name without the slide suffix (.ome.tif counts as one)."""
    name = path.name
    for s in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def slide_folders(slides: Sequence[Path], out: Path) -> list[Path]:
    """OUT/<slide name> per slide; two slides that would share a folder stop the run before anything runs."""
    seen: dict[str, Path] = {}
    for p in slides:
        n = slide_name(p)
        if n in seen:
            raise QmedInputError(
                p, f"shares its output folder name {n!r} with {seen[n]}; slide names must be unique in a cohort"
            )
        seen[n] = p
    return [Path(out) / slide_name(p) for p in slides]


# ---------------------------------------------------------------------------------------------
# the cohort table


@dataclass
class _Slide:
    index: int
    path: Path
    out: Path
    row: dict = field(default_factory=dict)
    started: float | None = None  # perf_counter when its blocks were submitted
    started_at: float | None = None  # the same moment as time.time(), for the worker that finishes it
    remaining: int = 0
    run: int = 0  # blocks submitted in this run
    blocks: list = field(default_factory=list)
    windows: list = field(default_factory=list)  # its window tasks, which the blocks depend on
    holder: Any = None  # the future holding its SlideJob on the cluster


def table_row(
    slide: str | Path,
    out: str | Path,
    status: str,
    meta: dict | None = None,
    reason: str = "",
    wall: float | None = None,
    **extra,
) -> dict:
    """One line of the cohort table, from the slide's predict.json (`meta`, finish_slide's return value).
    Tissue area: the tissue mask's fraction of the slide's level-0 pixels (and mm² where the slide
    gives its pixel size); empty when the mask was not used. compute_s: the recorded seconds of the
    plan, the blocks and the outputs."""
    m = meta or {}
    counts, tissue, secs = m.get("counts") or {}, m.get("tissue") or {}, m.get("seconds") or {}
    frac = tissue.get("tissue_fraction") if tissue.get("used") else None
    size, ds = m.get("size"), float(m.get("downsample") or 1.0)  # working-level px, level-0 px per working px
    tissue_px = round(frac * size[0] * size[1] * ds * ds) if frac is not None and size else None
    mpp0 = m["mpp"] / ds if m.get("mpp") else None
    compute = None
    if secs:
        compute = sum(
            v for v in (secs.get("plan"), secs.get("pyramids"), secs.get("tables")) if isinstance(v, (int, float))
        )
        compute += sum((secs.get("blocks") or {}).values())
    row = {
        "slide": str(slide),
        "out": str(out),
        "status": status,
        "objects": counts.get("objects"),
        "tissue_mm2": None if tissue_px is None or mpp0 is None else round(tissue_px * mpp0**2 * 1e-6, 4),
        "tissue_px": tissue_px,
        "blocks_run": counts.get("blocks_run"),
        "blocks": counts.get("blocks"),
        "compute_s": None if compute is None else round(compute, 2),
        "wall_s": None if wall is None else round(wall, 2),
        "reason": reason,
    }
    row.update(extra)
    return row


def _row(
    s: _Slide, status: str, meta: dict | None = None, reason: str = "", wall: float | None = None, **extra
) -> dict:
    return table_row(s.path, s.out, status, meta, reason, wall, **extra)


def _reason(exc: BaseException) -> str:
    """One line: the QmedInputError's own message, else the exception's type and first line."""
    if isinstance(exc, QmedInputError):
        return str(exc).splitlines()[0] if str(exc) else "bad input"
    name = type(exc).__name__
    if name == "KilledWorker":
        return "a worker died each time it ran one of this slide's tasks (out of memory? a crash in a reader?)"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[0]}" if text else name


def write_table(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """OUT/cohort.csv (one line per slide, TABLE_FIELDS) and OUT/cohort.json (a summary and the rows, a
    failure's traceback included), each written atomically."""
    from qmed.io.files import write_json, write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in TABLE_FIELDS})
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    write_text(out / COHORT_CSV, buf.getvalue())
    write_json(out / COHORT_JSON, {"format": "qmed-cohort", "slides": len(rows), **counts, "rows": rows})
    return out / COHORT_CSV, out / COHORT_JSON


def all_succeeded(rows: Sequence[dict]) -> bool:
    """Every slide done, in this run or an earlier one."""
    return all(r["status"] in ("done", "skipped") for r in rows)


# ---------------------------------------------------------------------------------------------
# the tasks (module-level functions: a worker imports them by name)


def plan_task(model_path: str, slide_path: str, out: str, slide_kw: dict):
    """plan_slide in a worker; -> (SlideJob, predict.json's content when the slide is finished already, else None)."""
    from qmed.evaluate.folders import PREDICTION_META
    from qmed.io.files import read_json
    from qmed.segment.slide import is_finished, plan_slide

    job = plan_slide(model_path, slide_path, out, **slide_kw)
    return job, (read_json(Path(job.out) / PREDICTION_META) if is_finished(job) else None)


def hold_job(job):
    """The SlideJob kept on a worker once per slide, so that block tasks fetch it from there (once per
    worker) instead of each task carrying it; if that worker dies, Dask re-runs this from the
    scheduler's copy (a scattered object would be lost with it)."""
    return job


def windows_task(job, index: int) -> dict:
    """run_windows (the slide grid's windows block `index` owns) with the worker's model."""
    from qmed.segment.slide import run_windows

    return run_windows(job, index)


def block_task(job, index: int, *windows) -> dict:
    """run_block with the worker's model (loaded by its first task, then cached in the process);
    `windows`: the window tasks whose stored sums it reads (Dask runs it after them)."""
    from qmed.segment.slide import run_block

    return run_block(job, index)


def finish_task(job, blocks_this_run: int | None = None, started_at: float | None = None) -> dict:
    """finish_slide in a worker: the outputs from the blocks on disk, predict.json last (with this run's
    block count and wall seconds since `started_at`, a time.time() of the client's)."""
    from qmed.segment.slide import finish_slide

    extra = {} if blocks_this_run is None else {"blocks_this_run": blocks_this_run}
    if started_at is not None:
        extra["wall_this_run"] = round(time.time() - started_at, 3)
    return finish_slide(job, extra=extra or None)


def task_plan(job, pending: Sequence[int]) -> tuple[list[int], dict[int, list[int]]]:
    """The window tasks a slide's pending blocks need (blocks whose stored window sums are missing),
    and for each pending block the ones among them it reads: the graph's edges."""
    from qmed.segment.slide import window_plan, windows_file

    plan = window_plan(job)
    needed = sorted({w for i in pending for w in plan.deps[i] if not windows_file(job, w).is_file()})
    todo = set(needed)
    return needed, {i: [w for w in plan.deps[i] if w in todo] for i in pending}


def pending_blocks(job) -> list[int]:
    from qmed.segment.slide import pending_blocks as pending

    return list(pending(job))


# ---------------------------------------------------------------------------------------------
# running


# Worker processes per GPU at most, by default: a block's CPU stages (decoding, blending, the instance
# split, polygons, writes: docs 15c) outlast its network pass on a GPU several times over, so one worker
# per GPU would leave it idle; each worker holds its own CUDA context and model.
WORKERS_PER_GPU = 8


def default_workers() -> int:
    """Worker processes for a local cluster: one per CPU core this process may use, at most
    WORKERS_PER_GPU per GPU where CUDA is there (WorkerSetup spreads them over the GPUs)."""
    import torch

    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        cores = max(1, os.cpu_count() or 1)
    if torch.cuda.is_available():
        return max(1, min(cores, WORKERS_PER_GPU * torch.cuda.device_count()))
    return cores


def predict_cohort(
    model_path: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client=None,
    force: bool = False,
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
    **slide_kw,
) -> list[dict]:
    """Predict every slide of `inputs` (see list_slides) into OUT/<slide name>/ and write the cohort
    table, OUT/cohort.csv and cohort.json (per slide: status done / skipped / failed, objects, tissue
    area, blocks, seconds, the one-line reason of a failure), after every slide and at the end.
    Returns the table's rows; a failed slide does not stop the others (all_succeeded(rows) says
    whether every slide is done). Bad arguments (no slides, clashing names) raise QmedInputError.

    One slide file as `inputs`: its outputs go in OUT itself (as `qmed predict --input SLIDE` writes
    them) and no cohort table is written; the one row is still returned.

    Where it runs: `client` (a distributed.Client), else `scheduler` (tcp://host:port, or a scheduler
    file written by `dask scheduler --scheduler-file`), else a local cluster of `workers` processes
    (default: default_workers()); `workers=1` without a scheduler runs in this process, without Dask.
    A slide finished earlier with the same model and settings is skipped (its row says so); `force`
    redoes it. `slide_kw` goes to qmed.segment.slide.plan_slide (mpp, level, block, tissue, tta,
    instances, probability, threshold, tile, backend, device, ...). `progress`: bars for slides and
    blocks on stderr (None: only when stderr is a terminal). `say`: where one-line news goes (the
    dashboard address; default: the log)."""
    from qmed.io.files import check_not_inputs

    out = Path(out)
    if workers is not None and workers < 1:
        raise QmedInputError(None, f"--workers must be at least 1, got {workers}")
    if out.exists() and not out.is_dir():
        raise QmedInputError(
            out, "is a file; the cohort's --out must be a folder (one folder per slide and cohort.csv go there)"
        )
    slides_in = list_slides(inputs)
    single = isinstance(inputs, (str, Path)) and Path(inputs).is_file() and Path(inputs).suffix.lower() != LIST_SUFFIX
    if single:  # one slide: its outputs in OUT itself, as `qmed predict --input SLIDE` in one process writes them
        slides = [_Slide(0, slides_in[0], out)]
        table = None
    else:
        if isinstance(inputs, (str, Path)) and Path(inputs).is_dir():
            check_not_inputs(out, [inputs, model_path])
        slides = [_Slide(i, p, o) for i, (p, o) in enumerate(zip(slides_in, slide_folders(slides_in, out)))]
        out.mkdir(parents=True, exist_ok=True)
        table = out
    say = say or logger.warning
    local = client is None and scheduler is None
    n = (workers or default_workers()) if local else None
    planned = {}
    if local and single:
        # Planned here (a thumbnail, a few sample tiles): errors are the caller's, as for any one input,
        # and the pending work decides whether a cluster is worth its start (seconds, a model per worker).
        s = slides[0]
        t0 = time.perf_counter()
        job, meta = plan_task(str(model_path), str(s.path), str(s.out), {**slide_kw, "force": force})
        if meta is not None:
            return [_row(s, "skipped", meta, reason="finished earlier")]
        pending = pending_blocks(job)
        if n == 1 or (workers is None and work_px(job, pending) < LOCAL_CLUSTER_MIN_PX):
            slides_bar, blocks_bar = _bars(1, False, progress)
            try:
                with one_torch_thread():
                    return [_blocks_here(s, job, pending, blocks_bar, t0)]
            finally:
                blocks_bar.close()
                slides_bar.close()
        planned[0] = job
    elif local and n == 1:
        with one_torch_thread():
            return _run_here(model_path, slides, table, force, progress, slide_kw)
    own_cluster = own_client = None
    # Dask logs every start and stop at INFO; a killed or restarted worker is a WARNING and stays in view.
    dask_log = logging.getLogger("distributed")
    level = dask_log.level
    dask_log.setLevel(max(logging.WARNING, level))
    try:
        if client is None:
            from distributed import Client

            if scheduler is not None:
                own_client = client = _connect(scheduler)
            else:
                own_cluster = local_cluster(n)
                own_client = client = Client(own_cluster)
        link = _dashboard(client)
        if link:
            say(f"Dask dashboard: {link}")
        client.register_plugin(WorkerSetup(), name=WorkerSetup.name)
        return _run_dask(client, model_path, slides, table, force, progress, slide_kw, planned, single)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            dask_log.setLevel(logging.ERROR)  # "worker process still alive after 4 s, killing" at close is no news
            own_cluster.close()
        dask_log.setLevel(level)


@contextmanager
def one_torch_thread():
    """This process as one worker: one torch thread while it runs blocks, as in every Dask worker, so
    that the outputs do not depend on where they ran (another thread count can move a probability
    in its last bits), and two intra-op threads never fight other processes for the cores (on the
    loaded 2-core development machine 2 threads ran several times slower than 1). The caller's setting comes back after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# A single slide with less pending work than this (core px) runs in this process even when the machine has
# several cores: about four default blocks, a few minutes of one core with the cpu model (docs/benchmarks 2b).
LOCAL_CLUSTER_MIN_PX = 4 * 2048 * 2048


def work_px(job, blocks: Sequence[int]) -> int:
    """The core pixels of `blocks` (what the network will see, halos aside)."""
    total = 0
    for i in blocks:
        x0, y0, x1, y1 = job.core(i)
        total += (x1 - x0) * (y1 - y0)
    return total


def _connect(scheduler: str):
    from distributed import Client

    try:
        if "://" not in scheduler and Path(scheduler).is_file():
            return Client(scheduler_file=scheduler, timeout="30s")
        return Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise QmedInputError(
            None,
            f"cannot reach a Dask scheduler at {scheduler} ({type(exc).__name__}); start one with "
            "`dask scheduler` and its workers with `dask worker tcp://HOST:8786`",
        ) from None


# Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers (to hand freed memory back to the
# OS sooner); setting it turns off glibc's dynamic mmap threshold, so every large numpy/torch temporary
# is mmapped, zero-filled and unmapped again: a block ran 2x slower in such a process (benchmarks/
# dask_overhead.py). Local clusters leave it unset (None unsets a pre-spawn variable; the nanny would
# also write it into this process's own environment, whence later child processes would inherit it).
WORKER_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(workers: int, **kw):
    """A LocalCluster of `workers` processes of one thread each, without the malloc setting above."""
    import dask
    from distributed import LocalCluster

    # Processes, not threads: torch, the readers and the instance split each hold the GIL in places.
    # silence_logs: the nanny's "restarting worker" and similar warnings still reach the log.
    with dask.config.set(WORKER_ENV):
        return LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, **{"silence_logs": logging.ERROR, **kw}
        )


def _dashboard(client) -> str | None:
    """The dashboard's address when the scheduler serves one, else None. A scheduler without bokeh
    still answers on the port, with a page asking for bokeh: a local one is named only with bokeh installed."""
    import importlib.util

    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard worth printing
        return None
    # A local cluster's scheduler shares this environment; a lab's needs no qmed, so it is not asked.
    if getattr(client, "cluster", None) is not None and importlib.util.find_spec("bokeh") is None:
        return None
    return link


def _bars(total_slides: int, slides: bool | None, blocks: bool | None):
    """The slides bar and the blocks bar (tqdm, stderr). None: tqdm's own check, off when stderr is no terminal."""
    from tqdm.auto import tqdm

    def off(flag):
        return None if flag is None else not flag

    slides_bar = tqdm(
        total=total_slides, desc="slides", unit="slide", position=0, disable=off(slides), dynamic_ncols=True
    )
    blocks_bar = tqdm(
        total=0, desc="blocks", unit="block", position=1, disable=off(blocks), dynamic_ncols=True, leave=False
    )
    return slides_bar, blocks_bar


def _failed(s: _Slide, exc: BaseException, wall: float | None) -> dict:
    extra = (
        {}
        if isinstance(exc, QmedInputError)
        else {"traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}
    )
    logger.info("slide %s failed: %s", s.path, _reason(exc))
    return _row(s, "failed", reason=_reason(exc), wall=wall, **extra)


def _write(table: Path | None, slides: list[_Slide]) -> None:
    """The table so far (rows of slides not yet settled are left out), after every slide."""
    if table is not None:
        write_table(table, [x.row for x in slides if x.row])


def _blocks_here(s: _Slide, job, pending: list[int], blocks_bar, t0: float) -> dict:
    """A planned slide's pending blocks and its finish, in this process; -> its table row."""
    blocks_bar.total += len(pending)
    blocks_bar.refresh()
    for i in pending:
        block_task(job, i)
        blocks_bar.update(1)
    from qmed.segment.slide import finish_slide

    meta = finish_slide(
        job, extra={"wall_this_run": round(time.perf_counter() - t0, 3), "blocks_this_run": len(pending)}
    )
    return _row(s, "done", meta, wall=time.perf_counter() - t0)


def _run_here(
    model_path, slides: list[_Slide], table: Path | None, force: bool, progress: bool | None, slide_kw: dict
) -> list[dict]:
    """The same steps in this process, one slide after another (no Dask)."""
    slides_bar, blocks_bar = _bars(len(slides), progress, progress)
    try:
        for s in slides:
            t0 = time.perf_counter()
            try:
                job, meta = plan_task(str(model_path), str(s.path), str(s.out), {**slide_kw, "force": force})
                if meta is not None:
                    s.row = _row(s, "skipped", meta, reason="finished earlier")
                else:
                    s.row = _blocks_here(s, job, pending_blocks(job), blocks_bar, t0)
            except Exception as exc:  # noqa: BLE001 - one slide's failure is reported, the others go on
                if table is None:  # one slide: its error is the run's
                    raise
                s.row = _failed(s, exc, time.perf_counter() - t0)
            slides_bar.update(1)
            _write(table, slides)
    finally:
        blocks_bar.close()
        slides_bar.close()
    return [s.row for s in slides]


def _run_dask(
    client,
    model_path,
    slides: list[_Slide],
    table: Path | None,
    force: bool,
    progress: bool | None,
    slide_kw: dict,
    planned: dict | None = None,
    single: bool = False,
) -> list[dict]:
    """Plans first (every slide not in `planned`, index -> SlideJob), then each slide's blocks, then its
    finish once its last block is in. The client holds futures and small summaries only; block
    results stay on the workers. `single`: the one slide's error is raised, not tabled."""
    from distributed import as_completed

    slides_bar, blocks_bar = _bars(len(slides), False if single else progress, progress)
    token = uuid.uuid4().hex[:8]
    n = len(slides)
    kind: dict = {}  # future key -> (task kind, slide)
    ac = as_completed()

    def submit(what: str, slide: _Slide, fn, *args, priority: int, suffix: str = ""):
        # readable keys: the dashboard groups tasks by the prefix before the first number (qmed-block, ...)
        fut = client.submit(fn, *args, key=f"qmed-{what}-{slide.index}{suffix}-{token}", priority=priority, pure=False)
        kind[fut.key] = (what, slide)
        return fut

    def rank(s: _Slide) -> int:  # earlier slides first; a slide's finish before the next slide's blocks
        return 2 * (n - s.index)

    def start_blocks(s: _Slide, job) -> None:
        s.started, s.started_at = time.perf_counter(), time.time()
        pending = pending_blocks(job)
        s.holder = submit("job", s, hold_job, job, priority=rank(s) + 1)
        s.remaining = s.run = len(pending)
        blocks_bar.total += len(pending)
        blocks_bar.refresh()
        # Windows, then the blocks that read them, in slide order (a priority between the slide's rank
        # and its finish's): stored window sums live about two block rows, not the whole slide.
        needed, deps = task_plan(job, pending)
        order = 0.5 / (job.n_blocks + 1)
        wins = {
            w: submit("windows", s, windows_task, s.holder, w, priority=rank(s) + 0.5 - w * order, suffix=f"-{w}")
            for w in needed
        }
        s.windows = list(wins.values())
        s.blocks = [
            submit(
                "block",
                s,
                block_task,
                s.holder,
                i,
                *[wins[w] for w in deps[i]],
                priority=rank(s) + 0.5 - i * order,
                suffix=f"-{i}",
            )
            for i in pending
        ]
        ac.update(s.blocks)
        if not pending:
            finish(s)

    def finish(s: _Slide) -> None:
        for f in s.windows:  # window tasks are not waited on (their blocks are), so their keys leave here
            kind.pop(f.key, None)
        s.blocks, s.windows = [], []  # their results (small dicts) may go; the markers on disk are what counts
        ac.add(submit("finish", s, finish_task, s.holder, s.run, s.started_at, priority=rank(s) + 1))

    for s in slides:
        if planned and s.index in planned:
            start_blocks(s, planned[s.index])
        else:
            ac.add(
                submit(
                    "plan",
                    s,
                    plan_task,
                    str(model_path),
                    str(s.path),
                    str(s.out),
                    {**slide_kw, "force": force},
                    priority=_PLAN_PRIORITY,
                )
            )
    try:
        for fut in ac:
            what, s = kind.pop(fut.key)
            if s.row or fut.status == "cancelled":  # the slide failed already and its other tasks were cancelled
                continue
            if fut.status != "finished":
                if single:
                    raise fut.exception()
                _fail_slide(client, s, fut.exception(), slides_bar, blocks_bar)
                _write(table, slides)
            elif what == "plan":
                job, meta = fut.result()
                if meta is not None:
                    s.row = _row(s, "skipped", meta, reason="finished earlier")
                    slides_bar.update(1)
                    _write(table, slides)
                else:
                    start_blocks(s, job)
            elif what == "block":
                blocks_bar.update(1)
                s.remaining -= 1
                if s.remaining == 0:
                    finish(s)
            elif what == "finish":
                s.row = _row(s, "done", fut.result(), wall=time.perf_counter() - s.started)
                s.holder = None
                slides_bar.update(1)
                _write(table, slides)
            del fut
    finally:
        blocks_bar.close()
        slides_bar.close()
    return [s.row for s in slides]


def _fail_slide(client, s: _Slide, exc: BaseException, slides_bar, blocks_bar) -> None:
    """Report the slide's failure and cancel its tasks still queued: the other slides go on."""
    s.row = _failed(s, exc, time.perf_counter() - s.started if s.started else None)
    if s.blocks or s.windows:
        client.cancel(s.blocks + s.windows)
        blocks_bar.total -= s.remaining
        blocks_bar.refresh()
    s.blocks, s.windows, s.holder, s.remaining = [], [], None, 0
    slides_bar.update(1)
