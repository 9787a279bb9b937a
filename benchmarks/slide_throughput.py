"""Whole-slide throughput against the bare network, and block-wise against whole-image prediction.

Usage:
  python benchmarks/slide_throughput.py --model RUN_DIR_OR_CKPT (--slide SLIDE | --size 8192 [--tiles DIR | --synthetic])
      [--workdir slides] [--block 2048] [--halo PX] [--tta] [--instances] [--bare-blocks 4] [--compare] [--json OUT.json]

1. The whole path: `python -m qmed.cli predict --input SLIDE --force` as a child process (reading, tissue
   mask, statistics, blocks with their halo, instances with --instances, pyramids, tables, GeoJSON), timed
   from start to exit. Its rate: the pixels of the blocks that hold tissue (their cores) per second.
2. The bare network on the same tiles: the windows of the slide's grid that the path ran (qmed.segment.slide
   .window_plan), those of up to --bare-blocks tissue blocks (evenly spaced) timed through the network alone
   (inputs read and converted beforehand; the run's TTA and slide statistics), the time scaled to all the
   run's windows: tissue core pixels per second.
   Printed: both rates and their ratio (issue 42's bar: the whole path at least 0.8x the bare network).
3. --compare (slides up to ~8k px; the run then also writes probability.ome.tif): the working level read whole and predicted as one image with the same
   model, statistics and windows, its instances split with the run's object diameter; against the block-wise
   label map (needs --instances): object F1 at IoU 0.5 (qmed.evaluate.metrics.object_detection), objects that
   differ; and the masks: pixels that differ, and how far from the threshold the whole-image probability
   is at those pixels (the blending tolerance). Objects whose centroid lies in a block the tissue mask
   skipped are left out of the whole-image side (the tissue mask's doing, not the blocks'), and counted.

Both timings run on the same machine in one invocation; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_TILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "train"


def build(size: int, workdir: Path, tiles: Path | None, seed: int) -> Path:
    from qmed.data.mosaic import build_slide

    path = workdir / f"mosaic_{size}_{'synthetic' if tiles is None else 'tissue'}_s{seed}.ome.tif"
    if not path.is_file():
        info = build_slide(path, size, tiles, seed=seed)
        print(f"built {path} ({info['objects']} truth objects, {info['blank_cells']} blank cells)", flush=True)
    return path


def whole_path(args, slide: Path, out: Path) -> tuple[float, dict]:
    cmd = [
        sys.executable,
        "-m",
        "qmed.cli",
        "predict",
        "--model",
        str(args.model),
        "--input",
        str(slide),
        "--out",
        str(out),
        "--force",
        "--quiet",
        "--tta" if args.tta else "--no-tta",
    ]
    cmd += ["--probability"] if args.compare else []  # the block-wise probabilities, for the comparison
    cmd += ["--instances"] if args.instances else []
    cmd += ["--block", str(args.block)] if args.block else []
    cmd += ["--halo", str(args.halo)] if args.halo is not None else []
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--workers", str(args.workers)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0, json.loads((out / "predict.json").read_text())


def bare_network(args, out: Path) -> dict:
    """The network alone over the windows the path ran: the windows of --bare-blocks evenly spaced
    tissue blocks (their model inputs prepared beforehand), timed, then scaled to all the run's windows."""
    from qmed.segment.slide import load_job, model_region, open_predictor, window_plan

    job = load_job(out, args.model, args.device)
    pred = open_predictor(args.model, job.backend, args.device)
    plan = window_plan(job)
    owners = [b for b in job.blocks if plan.owned.get(b)]
    pick = (
        [owners[int(i)] for i in np.linspace(0, len(owners) - 1, min(args.bare_blocks, len(owners)))] if owners else []
    )
    inputs = [(plan.extent(b), model_region(job, plan, pred, *plan.extent(b)), plan.owned[b]) for b in pick]
    if inputs:  # warm-up: the first call pays for lazy initialisation
        box, x, coords = inputs[0]
        pred.window_sums(job, x, box[:2], coords[:1], plan.th, plan.tw)
    t0 = time.perf_counter()
    for box, x, coords in inputs:
        pred.window_sums(job, x, box[:2], coords, plan.th, plan.tw)
    secs = time.perf_counter() - t0
    timed = sum(len(c) for _, _, c in inputs)
    total = sum(len(v) for v in plan.owned.values())
    px = sum((job.core(i)[2] - job.core(i)[0]) * (job.core(i)[3] - job.core(i)[1]) for i in job.blocks)
    per_window = secs / timed if timed else None
    return {
        "blocks": len(pick),
        "windows_timed": timed,
        "windows_run": total,
        "seconds": round(secs, 3),
        "seconds_per_window": per_window,
        "pixels": px,
        "px_per_s": px / (per_window * total) if per_window else None,
    }


def compare(args, out: Path) -> dict:
    import tifffile

    from qmed.evaluate.metrics import object_detection
    from qmed.io.slides import open_slide
    from qmed.segment.instances import split_instances
    from qmed.segment.slide import load_job, open_predictor, read_region

    job = load_job(out, args.model, args.device)
    pred = open_predictor(args.model, job.backend, args.device)
    reader = open_slide(job.slide_path)
    rgb = read_region(reader, job.slide_path, job.level, 0, 0, job.width, job.height)
    t0 = time.perf_counter()
    maps = pred.maps(rgb, job)
    del rgb
    prob = maps[0]
    whole_mask = prob > job.threshold
    block_mask = tifffile.imread(out / "mask.ome.tif") > 0
    ran = np.zeros((job.height, job.width), bool)
    for i in job.blocks:
        x0, y0, x1, y1 = job.core(i)
        ran[y0:y1, x0:x1] = True
    differ = (whole_mask != block_mask) & ran
    res = {
        "size": [job.width, job.height],
        "whole_image_seconds": None,
        "mask_pixels_compared": int(ran.sum()),
        "mask_pixels_differ": int(differ.sum()),
        "mask_agreement": 1.0 - float(differ.sum()) / max(1, int(ran.sum())),
        "max_abs_p_minus_threshold_where_masks_differ": float(np.abs(prob[differ] - job.threshold).max())
        if differ.any()
        else 0.0,
    }
    if (out / "probability.ome.tif").is_file():
        pb = tifffile.imread(out / "probability.ome.tif").astype(np.float32) / 255.0
        res["max_abs_p_difference"] = float(np.abs(pb - prob)[ran].max()) if ran.any() else 0.0
        res["p_quantisation"] = 1 / 255
        del pb
    if job.instances and (out / "labels.ome.tif").is_file():
        whole = split_instances(
            prob, job.threshold, diameter=job.diameter, contact=maps[1] if maps.shape[0] > 1 else None
        )
        res["whole_image_seconds"] = round(time.perf_counter() - t0, 1)
        # objects the tissue mask skipped: their centroid's pixel lies in a block that never ran
        ids = np.arange(1, int(whole.max()) + 1)
        if ids.size:
            from scipy import ndimage

            cents = np.array(ndimage.center_of_mass(np.ones_like(whole, np.uint8), whole, ids))
            py = np.clip(np.floor(cents[:, 0] + 0.5).astype(int), 0, job.height - 1)
            px = np.clip(np.floor(cents[:, 1] + 0.5).astype(int), 0, job.width - 1)
            skipped = ids[~ran[py, px]]
            if skipped.size:
                lut = np.arange(int(whole.max()) + 1)
                lut[skipped] = 0
                whole = lut[whole]
            res["whole_image_objects_in_skipped_blocks"] = int(skipped.size)
        blocks = tifffile.imread(out / "labels.ome.tif")
        det = object_detection(blocks, whole, 0.5)
        res.update(
            {
                "objects_block_wise": int(len(np.unique(blocks)) - 1),
                "objects_whole_image": int(len(np.unique(whole)) - 1),
                "object_f1_iou50": det["f1"],
                "tp": det["tp"],
                "fp": det["fp"],
                "fn": det["fn"],
            }
        )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--slide", type=Path)
    which.add_argument("--size", type=int, help="build a mosaic slide of this side (reused from --workdir)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--tiles", type=Path, default=DEFAULT_TILES)
    src.add_argument("--synthetic", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path("slides"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--halo", type=int, default=None)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--instances", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="qmed predict --workers for the whole path (1: one process, as the bare network)",
    )
    ap.add_argument("--bare-blocks", type=int, default=4, help="tissue blocks timed through the bare network")
    ap.add_argument("--compare", action="store_true", help="also block-wise against whole-image prediction")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.slide or build(args.size, args.workdir, None if args.synthetic else args.tiles, args.seed)
    out = args.workdir / f"throughput_{slide.name.split('.')[0]}"
    wall, meta = whole_path(args, slide, out)
    c = meta["counts"]
    whole_rate = c["pixels_run"] / wall if wall else None
    print(
        f"whole path: {c['pixels_run']} tissue px ({c['blocks_run']} of {c['blocks']} blocks, {c['pixels_read']} px read with halos) "
        f"in {wall:.1f} s: {whole_rate:,.0f} px/s; {c['objects']} objects; block {meta['block']}, halo {meta['halo']}, "
        f"tile {meta['tile']}, TTA {meta['tta']}, instances {meta['instances']}",
        flush=True,
    )
    print(f"  its parts (s): {json.dumps(meta['seconds'])}", flush=True)
    bare = bare_network(args, out)
    ratio = whole_rate / bare["px_per_s"] if bare["px_per_s"] else None
    print(
        f"bare network: {bare['windows_timed']} of the {bare['windows_run']} windows run in {bare['seconds']:.1f} s: "
        f"{bare['pixels']} tissue px at {bare['px_per_s']:,.0f} px/s"
    )
    print(f"whole path / bare network: {ratio:.3f}" if ratio else "no tissue block to time")
    result = {
        "command": " ".join(sys.argv),
        "slide": str(slide),
        "wall_s": round(wall, 2),
        "whole_px_per_s": whole_rate,
        "bare": bare,
        "ratio": ratio,
        "predict": {k: meta[k] for k in ("block", "halo", "tile", "tta", "instances", "counts", "seconds")},
    }
    if args.compare:
        cmp = compare(args, out)
        result["compare"] = cmp
        print("block-wise vs whole image: " + json.dumps(cmp))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
