"""Build a test slide from real tissue: a pyramidal tiled OME-TIFF mosaic of MoNuSeg tiles (flipped, turned,
some cells left blank) with its truth label map, at any size (qmed.data.mosaic.build_slide).

Usage:
  python benchmarks/make_slide.py --out slides/mosaic_16k.ome.tif --size 16384 [--truth slides/mosaic_16k_truth.ome.tif]
      [--tiles ../shared/data/monuseg/train | --synthetic] [--seed 0] [--cell 1000] [--blank 0.25]
      [--mpp 0.25] [--tile 256] [--compression jpeg|zlib] [--quality 90]
`--size` is one side (square) or WIDTHxHEIGHT. Prints the summary as JSON (objects, grid, blank cells, ...)
and writes it beside the slide as NAME.json. Memory stays flat with size (the source tiles, ~150 MB, and a
band of tiles); time and disk grow with the area (a 32k x 32k JPEG slide is a few hundred MB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qmed.data.mosaic import build_slide
from qmed.errors import QmedInputError
from qmed.io.files import write_json

DEFAULT_TILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "train"


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"size must be N or WIDTHxHEIGHT, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the slide (.tif / .ome.tif)")
    ap.add_argument("--size", type=parse_size, required=True, help="N (square) or WIDTHxHEIGHT, in pixels")
    ap.add_argument("--truth", type=Path, default=None, help="also write the truth label map here (uint32 OME-TIFF)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--tiles", type=Path, default=DEFAULT_TILES, help="dataset folder of tiles (images/ + masks/)")
    src.add_argument("--synthetic", action="store_true", help="synthetic brightfield-like tiles instead of real ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cell", type=int, default=None, help="grid cell side (default: the source tiles' side)")
    ap.add_argument("--blank", type=float, default=0.25, help="chance that a cell is left white")
    ap.add_argument("--mpp", type=float, default=0.25, help="level-0 microns per pixel to record (MoNuSeg: 40x, ~0.25)")
    ap.add_argument("--tile", type=int, default=256, help="TIFF tile side")
    ap.add_argument("--compression", default="jpeg", help="jpeg (as scanners store slides) or zlib (lossless)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        info = build_slide(
            args.out,
            args.size,
            None if args.synthetic else args.tiles,
            seed=args.seed,
            tile=args.tile,
            mpp=args.mpp,
            truth_path=args.truth,
            cell=args.cell,
            blank=args.blank,
            compression=args.compression,
            quality=args.quality,
        )
    except QmedInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["bytes"] = args.out.stat().st_size
    write_json(args.out.with_name(args.out.name.split(".")[0] + ".json"), info)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
