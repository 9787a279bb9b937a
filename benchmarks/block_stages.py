"""Where a block's time goes, and what a block reads and writes: the inputs of a cluster plan
(docs/benchmarks/15-cohorts-and-clusters.md).

Usage:
    python benchmarks/block_stages.py --model RUN_DIR --slide SLIDE --out /tmp/stages [--block 2048] [--blocks 1] [--finish]

In this process, one torch thread: plans the slide (instances on), runs its first `--blocks` blocks
and prints each one's seconds per stage (read, network, objects = instance split + polygons + spill,
write), objects, read-region pixels, the slide bytes per pixel and the bytes its results take on
disk (OUT/blocks). With --finish, runs the remaining blocks and finish_slide, and prints the
pyramid and table seconds, the working level's megapixels per second of pyramid, and the output
bytes per object (objects.csv, objects.geojson).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--finish", action="store_true")
    args = ap.parse_args()

    import torch

    from qmed.io.files import read_json
    from qmed.segment.slide import (
        finish_slide,
        load_predictor,
        pending_blocks,
        plan_slide,
        run_block,
        window_plan,
        windows_file,
    )

    torch.set_num_threads(1)
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    job = plan_slide(args.model, args.slide, args.out, block=args.block, instances=True)
    load_predictor(job)
    print(
        f"plan (with the model's load) {time.perf_counter() - t0:.1f} s; working level {job.width} x {job.height} px, "
        f"block {job.block}, halo {job.halo}, tile {job.tile}, {len(job.blocks)} of {job.n_blocks} blocks hold tissue; "
        f"slide file {args.slide.stat().st_size / (job.width * job.height * job.downsample**2):.2f} bytes per level-0 px"
    )
    plan = window_plan(job)
    for i in job.blocks[: args.blocks]:
        before = _size(job.blocks_dir)
        new = [n for n in plan.deps[i] if not windows_file(job, n).is_file()]
        s = run_block(job, i)
        sums = sum(windows_file(job, n).stat().st_size for n in new if windows_file(job, n).is_file())
        ws = [read_json(windows_file(job, n).with_suffix(".json")) or {} for n in new]
        sec = {k: sum(w.get("seconds", {}).get(k, 0.0) for w in ws) for k in ("read", "predict")} | s["seconds"]
        print(
            f"block {i}: {sum(sec.values()):.1f} s = read {sec['read']:.2f} + network {sec['predict']:.2f} "
            f"({sum(w.get('windows', 0) for w in ws)} windows of {len(new)} blocks) + blend {sec.get('blend', 0):.2f} + "
            f"objects {sec.get('objects', 0):.2f} + write {sec.get('write', 0):.2f}; {s['objects']} objects; "
            f"read region {s['read_px'] / 1e6:.2f} Mpx; results on disk {(_size(job.blocks_dir) - before) / 1e6:.2f} MB, "
            f"of which stored window sums {sums / 1e6:.1f} MB (deleted once no block needs them)",
            flush=True,
        )
    if args.finish:
        for i in pending_blocks(job):
            run_block(job, i)
        meta = finish_slide(job)
        sec, n = meta["seconds"], meta["counts"]["objects"]
        out = Path(job.out)
        geo = next(out.glob("objects.geojson*"))
        print(
            f"finish: pyramids {sec['pyramids']:.1f} s ({job.width * job.height / 1e6 / max(sec['pyramids'], 1e-9):.1f} Mpx/s of the "
            f"working level), tables {sec['tables']:.1f} s for {n} objects; objects.csv {(out / 'objects.csv').stat().st_size / max(n, 1):.0f} "
            f"B and {geo.name} {geo.stat().st_size / max(n, 1):.0f} B per object"
        )


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


if __name__ == "__main__":
    main()
