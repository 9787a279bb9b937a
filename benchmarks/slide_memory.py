"""Peak memory of `qmed predict` on whole slides of growing size: the whole process tree's PSS.

Usage:
  python benchmarks/slide_memory.py --model RUN_DIR_OR_CKPT [--sizes 4096 16384 32768] [--tiles ../shared/data/monuseg/train
      | --synthetic] [--workdir /tmp/slides] [--block 2048] [--instances] [--tta] [--interval 0.2] [--json OUT.json]

For each size, a mosaic slide of real tissue is built (qmed.data.mosaic.build_slide, reused when it exists
in --workdir), then `python -m qmed.cli predict --input SLIDE` runs as a child process. A thread samples
the PSS (proportional set size: shared pages split between the processes that map them, so a tree's sum
counts them once) of the child and all its descendants from /proc/PID/smaps_rollup every --interval
seconds; the figure is the largest sum seen. Prints one row per size (pixels, blocks run, objects, wall
time, peak PSS) and the ratio of the largest size's peak to the smallest's (issue 42's bar: at most 1.2,
and under 3 GB). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

DEFAULT_TILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "train"


def tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return out


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakSampler(threading.Thread):
    """Samples the PSS sum of a process tree until stopped; `peak_kb` is the largest sum seen."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb, self.samples = 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(pss_kb(p) for p in tree(self.pid)))
            self.samples += 1
            self.stop.wait(self.interval)


def build(size: int, workdir: Path, tiles: Path | None, seed: int) -> Path:
    from qmed.data.mosaic import build_slide

    name = f"mosaic_{size}_{'synthetic' if tiles is None else 'tissue'}_s{seed}.ome.tif"
    path = workdir / name
    if not path.is_file():
        t0 = time.perf_counter()
        info = build_slide(path, size, tiles, seed=seed)
        print(
            f"built {path} ({info['objects']} truth objects, {info['blank_cells']} blank cells) in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--tiles", type=Path, default=DEFAULT_TILES)
    src.add_argument("--synthetic", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path("slides"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--instances", action="store_true")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--workers", type=int, default=None, help="qmed predict --workers (1: in one process; default: qmed's choice)"
    )
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between PSS samples")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    tiles = None if args.synthetic else args.tiles
    rows = []
    for size in args.sizes:
        slide = build(size, args.workdir, tiles, args.seed)
        out = args.workdir / f"pred_{slide.name.split('.')[0]}"
        cmd = [
            sys.executable,
            "-m",
            "qmed.cli",
            "predict",
            "--model",
            args.model,
            "--input",
            str(slide),
            "--out",
            str(out),
            "--force",
            "--quiet",
            "--tta" if args.tta else "--no-tta",
        ]
        cmd += ["--instances"] if args.instances else []
        cmd += ["--block", str(args.block)] if args.block else []
        cmd += ["--workers", str(args.workers)] if args.workers else []
        cmd += ["--device", args.device] if args.device else []  # --force: a fresh run each time, never a resume
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd)
        sampler = PeakSampler(child.pid, args.interval)
        sampler.start()
        rc = child.wait()
        sampler.stop.set()
        sampler.join()
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"size {size}: qmed predict exited with {rc}", file=sys.stderr)
            return rc
        meta = json.loads((out / "predict.json").read_text())
        row = {
            "size": size,
            "pixels": size * size,
            "blocks": meta["counts"]["blocks"],
            "blocks_run": meta["counts"]["blocks_run"],
            "objects": meta["counts"]["objects"],
            "wall_s": round(wall, 1),
            "peak_pss_mb": round(sampler.peak_kb / 1024, 1),
            "samples": sampler.samples,
            "block": meta["block"],
            "halo": meta["halo"],
            "tta": meta["tta"],
            "instances": meta["instances"],
        }
        rows.append(row)
        print(
            f"{size:>6} px: {row['blocks_run']:>4}/{row['blocks']:<4} blocks, {row['objects']:>8} objects, wall {row['wall_s']:>8.1f} s, "
            f"peak PSS {row['peak_pss_mb']:>7.1f} MB ({row['samples']} samples)",
            flush=True,
        )
    if len(rows) > 1:
        ratio = rows[-1]["peak_pss_mb"] / rows[0]["peak_pss_mb"]
        print(
            f"peak PSS {rows[-1]['size']} px / {rows[0]['size']} px: {ratio:.2f}x; largest {max(r['peak_pss_mb'] for r in rows):.0f} MB"
        )
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
