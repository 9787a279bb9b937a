"""Slides per hour of `qmed predict` on a cohort, through a local Dask cluster of 1 worker and of 2.

Usage:
    python benchmarks/cohort_scaling.py --model RUN_DIR --out bench/cohort-scaling \
        [--tiles ../shared/data/monuseg/train | none] [--slides 4] [--size 8192] [--workers 1,2] [--block 2048]

Builds the cohort once (OUT/slides/slide_K.ome.tif: mosaics of real MoNuSeg tiles with
qmed.data.mosaic.build_slide, seeded), then for each worker count starts a LocalCluster
(processes, one thread and one torch thread per worker), warms each worker (imports, the model
loaded once per process), and times qmed.segment.cohort.predict_cohort on the whole cohort into
a fresh OUT/run-wN. Cluster start and warm-up are timed apart from the cohort. Prints one line per
worker count and the ratio against the first, and writes OUT/cohort_scaling.json. The objects of
every slide must agree between the runs (the script checks it). Issue 37's bar: 2 workers >= 1.7x
the slides per hour of 1 on a 2-core machine (4 slides of 8192 px).
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts, the first is the reference")
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--keep", action="store_true", help="keep each run's outputs (default: only the tables)")
    args = ap.parse_args()

    from distributed import Client

    from qmed.data.mosaic import build_slide
    from qmed.segment.cohort import WorkerSetup, list_slides, local_cluster, predict_cohort

    slides_dir = args.out / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    for k in range(args.slides):
        p = slides_dir / f"slide_{k}.ome.tif"
        if not p.exists():
            build_slide(p, args.size, None if args.tiles == "none" else args.tiles, seed=k)
    slides = list_slides(slides_dir)[: args.slides]

    results = []
    for n in [int(w) for w in args.workers.split(",")]:
        run = args.out / f"run-w{n}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        with local_cluster(n, dashboard_address=None) as cluster, Client(cluster) as client:
            client.register_plugin(WorkerSetup(), name=WorkerSetup.name)
            client.run(_warm, args.model)
            start_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            rows = predict_cohort(args.model, slides, run, client=client, block=args.block, progress=False)
            wall = time.perf_counter() - t1
        bad = [r for r in rows if r["status"] != "done"]
        if bad:
            sys.exit(f"{len(bad)} slides did not finish with {n} workers: {bad[0]['slide']}: {bad[0]['reason']}")
        results.append(
            {
                "workers": n,
                "wall_s": round(wall, 1),
                "cluster_start_s": round(start_s, 1),
                "slides_per_hour": round(len(rows) * 3600 / wall, 2),
                "objects": [r["objects"] for r in rows],
            }
        )
        print(
            f"{n} worker(s): {len(rows)} slides of {args.size}^2 in {wall:.1f} s = {results[-1]['slides_per_hour']:.2f} slides/h "
            f"(cluster start + warm-up {start_s:.1f} s, not counted)",
            flush=True,
        )
        if not args.keep:
            for r in rows:
                shutil.rmtree(r["out"], ignore_errors=True)
    ref = results[0]
    for r in results[1:]:
        r["speedup"] = round(r["slides_per_hour"] / ref["slides_per_hour"], 3)
        same = r["objects"] == ref["objects"]
        print(
            f"{r['workers']} against {ref['workers']} worker(s): {r['speedup']:.3f}x the slides per hour; objects identical: {same}"
        )
        if not same:
            sys.exit(
                f"objects differ between {ref['workers']} and {r['workers']} workers: {ref['objects']} against {r['objects']}"
            )
    (args.out / "cohort_scaling.json").write_text(
        json.dumps(
            {"size": args.size, "slides": args.slides, "block": args.block, "model": str(args.model), "runs": results},
            indent=2,
        )
        + "\n"
    )


def _warm(model_path: str) -> None:
    """Import the engine and torch in the worker before the clock starts (the model itself is loaded by the first block)."""
    import torch  # noqa: F401

    import qmed.segment.slide  # noqa: F401


if __name__ == "__main__":  # the guard matters: Dask's worker processes start by spawn and re-import this file
    main()
