"""The Dask scheduler's overhead: blocks per second through a one-worker LocalCluster against the
same blocks in a plain loop in one process (one torch thread both times).

Usage:
    python benchmarks/dask_overhead.py --model RUN_DIR --out bench/dask-overhead \
        [--tiles ../shared/data/monuseg/train | none] [--size 8192] [--block 1024] [--repeats 1] [--dask-malloc]

Builds one slide (OUT/slide.ome.tif, a mosaic of real MoNuSeg tiles), plans it twice
(OUT/loop, OUT/dask: same settings, hence the same block grid), then
- loop: in this process, torch.set_num_threads(1), the model loaded before the clock starts, every
  block through qmed.segment.slide.run_block one after another;
- dask: a LocalCluster of one worker process (one thread, one torch thread), the model loaded in the
  worker before the clock starts, every block submitted as a task the way qmed.segment.cohort does
  (the SlideJob held once on the cluster, one task per block), timed until the last result is in.
Prints blocks/s both ways and their ratio (issue 37's bar: Dask >= 0.9 of the loop), checks that the
two block sets hold the same objects, and writes OUT/dask_overhead.json. Small blocks make the
overhead show: the default 1024 px block is a quarter of the engine's default area. --dask-malloc
runs the worker with Dask's own MALLOC_TRIM_THRESHOLD_=65536, which qmed's local cluster leaves unset
and its worker plugin undoes (it made blocks about 2x slower here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--tiles",
        default="../shared/data/monuseg/train",
        help="a dataset folder (images/ + masks/), or none for synthetic nuclei",
    )
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time the pair this many times (alternating), report each and the medians",
    )
    ap.add_argument(
        "--dask-malloc",
        action="store_true",
        help=(
            "keep Dask's default MALLOC_TRIM_THRESHOLD_=65536 in the worker (a plain LocalCluster, no restore): "
            "the setting qmed undoes, to see what it costs"
        ),
    )
    args = ap.parse_args()

    import torch
    from distributed import Client, wait

    from qmed.data.mosaic import build_slide
    from qmed.segment.cohort import WorkerSetup, block_task, hold_job, local_cluster, task_plan, windows_task
    from qmed.segment.slide import load_predictor, plan_slide, run_block

    args.out.mkdir(parents=True, exist_ok=True)
    slide = args.out / "slide.ome.tif"
    if not slide.exists():
        build_slide(slide, args.size, None if args.tiles == "none" else args.tiles, seed=0)
    torch.set_num_threads(1)

    def fresh_job(name: str):
        shutil.rmtree(args.out / name, ignore_errors=True)
        return plan_slide(args.model, str(slide), str(args.out / name), block=args.block)

    rounds = []
    if args.dask_malloc:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    else:
        cluster = local_cluster(1, dashboard_address=None)
    with cluster, Client(cluster) as client:
        client.register_plugin(WorkerSetup(malloc=not args.dask_malloc), name=WorkerSetup.name)
        env = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
        print(
            f"worker MALLOC_TRIM_THRESHOLD_: {list(env.values())[0]} (restored by qmed: {not args.dask_malloc})",
            flush=True,
        )
        for r in range(args.repeats):
            job = fresh_job("loop")
            indices = _indices(job)
            load_predictor(job)
            t0 = time.perf_counter()
            loop_sums = [run_block(job, i) for i in indices]
            loop_s = time.perf_counter() - t0
            loop_inside = _inside(job, loop_sums)
            loop_objects = [_objects(x) for x in loop_sums]

            job = fresh_job("dask")
            client.run(_load, job)  # the worker's per-process model cache, filled before the clock
            t0 = time.perf_counter()
            holder = client.submit(hold_job, job, pure=False)
            needed, deps = task_plan(job, indices)  # as predict_cohort submits them: window tasks, then blocks
            wins = {w: client.submit(windows_task, holder, w, pure=False) for w in needed}
            futs = [client.submit(block_task, holder, i, *[wins[w] for w in deps[i]], pure=False) for i in indices]
            wait(futs)
            dask_sums = client.gather(futs)
            dask_s = time.perf_counter() - t0
            dask_inside = _inside(job, dask_sums)
            dask_objects = [_objects(x) for x in dask_sums]
            if loop_objects != dask_objects:
                sys.exit(
                    f"round {r}: the blocks' objects differ between the loop and Dask: {loop_objects} against {dask_objects}"
                )
            n = len(indices)
            rounds.append(
                {
                    "blocks": n,
                    "loop_s": round(loop_s, 2),
                    "dask_s": round(dask_s, 2),
                    "loop_blocks_per_s": round(n / loop_s, 3),
                    "dask_blocks_per_s": round(n / dask_s, 3),
                    "ratio": round(loop_s / dask_s, 3),
                    # inside the tasks (windows: read, predict; blocks: blend, objects, write): not the scheduler's
                    "loop_inside_s": loop_inside,
                    "dask_inside_s": dask_inside,
                }
            )
            print(
                f"round {r}: {n} blocks of {args.block}^2: loop {n / loop_s:.3f} blocks/s ({loop_s:.1f} s), "
                f"Dask one worker {n / dask_s:.3f} blocks/s ({dask_s:.1f} s): ratio {loop_s / dask_s:.3f}; "
                f"inside the tasks {rounds[-1]['loop_inside_s']} s against {rounds[-1]['dask_inside_s']} s",
                flush=True,
            )
    median = statistics.median(x["ratio"] for x in rounds)
    print(f"Dask / loop blocks per second, median of {len(rounds)}: {median:.3f} (bar >= 0.9)")
    (args.out / "dask_overhead.json").write_text(
        json.dumps(
            {
                "size": args.size,
                "block": args.block,
                "model": str(args.model),
                "dask_malloc": args.dask_malloc,
                "rounds": rounds,
                "median_ratio": median,
            },
            indent=2,
        )
        + "\n"
    )


def _load(job) -> None:
    from qmed.segment.slide import load_predictor

    load_predictor(job)  # returns nothing: the model itself does not travel back


def _indices(job) -> list[int]:
    from qmed.segment.cohort import pending_blocks

    return pending_blocks(job)


def _inside(job, summaries: list[dict]) -> float:
    """Seconds spent inside the blocks and the window tasks (their JSON beside the stored sums)."""
    from qmed.io.files import read_json

    windows = [read_json(p) or {} for p in job.blocks_dir.glob("*.windows.json")]
    return round(sum(sum(s.get("seconds", {}).values()) for s in [*summaries, *windows]), 2)


def _objects(summary: dict):
    return summary.get("objects")


if __name__ == "__main__":  # the guard matters: Dask's worker processes start by spawn and re-import this file
    main()
