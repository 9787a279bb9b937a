"""Images per second and peak memory of `qmed predict`: torch float32, torch bfloat16 (only on a CPU
with native bfloat16, AVX512-BF16 or AMX) and ONNX Runtime, at 256² and 512², with and without
7-fold TTA, side by side in one run (issue 21).

Usage:
    python benchmarks/predict_speed.py [--model RUN_DIR_OR_CKPT] [--data IMAGES_DIR] [--n 8] [--n-tta 5]
                                       [--sizes 256,512] [--threads 2] [--json out.json]

Without --model, a `cpu`-preset model with random weights is used (speed does not depend on the
weights). The model is exported to ONNX once (qmed export, in a temporary folder). Images: crops
of the given size from the real images of --data (default ../shared/data/dsb2018-fluo/val/images;
reflect-padded if smaller), written as PNG, so each measurement is `qmed predict` itself
(`qmed.segment.predict.predict_folder`): reading, normalisation, windows, TTA, thresholding and
writing the 0/255 mask and the 16-bit probability map.

Each configuration runs in its own child process (so its peak resident memory, VmHWM, is that
configuration's, the whole process: Python, torch, the model and the working set). Inside it,
predict_folder runs once on one image (warm-up: oneDNN primitives, ORT session), then on one image
and on N images; images/s = (N - 1) / (t_N - t_1), which removes the fixed costs (model load,
session set-up, the output folder). The backends of one (size, TTA) cell run one right after the
other, so a change in the machine's load touches them nearly alike; on a shared machine the figures
are still noisy: run it when the machine is quiet, and compare figures within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-fluo" / "val" / "images"


def make_images(src: Path | None, size: int, n: int, out: Path) -> None:
    """n size×size PNG crops of the images in src (synthetic nuclei if src is missing)."""
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    files = (
        sorted(p for p in src.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
        if src and src.is_dir()
        else []
    )
    rng = np.random.default_rng(size)
    for i in range(n):
        if files:
            from qmed.io.images import read_array

            a = read_array(files[i % len(files)])
            a = a if a.ndim == 2 else a[..., :3]
            ph, pw = max(0, size - a.shape[0]), max(0, size - a.shape[1])
            if ph or pw:
                a = np.pad(a, ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), mode="reflect")
            y, x = rng.integers(0, a.shape[0] - size + 1), rng.integers(0, a.shape[1] - size + 1)
            a = a[y : y + size, x : x + size]
        else:  # no real images: blocky noise
            a = np.kron((rng.random((size // 8, size // 8)) * 60).astype(np.uint8), np.ones((8, 8), np.uint8))
        Image.fromarray(np.ascontiguousarray(a)).save(out / f"img{i:03d}.png")


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (reset at exec, unlike ru_maxrss, which Linux
    carries over from the parent), ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    """One configuration in this process; prints one JSON line."""
    import torch

    from qmed.segment.predict import predict_folder

    torch.set_num_threads(args.threads)
    tmp = Path(args.tmp)
    backend = "onnxruntime" if args.backend == "ort" else "torch"
    model = args.onnx if backend == "onnxruntime" else args.model
    kw = dict(tta=args.tta, force=True, quiet=True, device="cpu", backend=backend, cpu_bf16=args.backend == "bf16")
    one = tmp / f"in{args.size}" / "img000.png"
    predict_folder(model, one, tmp / "warm", **kw)
    t = time.perf_counter()
    predict_folder(model, one, tmp / "one", **kw)
    t1 = time.perf_counter() - t
    files = sorted((tmp / f"in{args.size}").iterdir())[: args.n]
    many = tmp / f"sel{args.size}-{args.n}"
    if not many.exists():
        many.mkdir()
        for f in files:
            os.symlink(f, many / f.name)
    t = time.perf_counter()
    predict_folder(model, many, tmp / "many", **kw)
    tn = time.perf_counter() - t
    rate = (len(files) - 1) / max(tn - t1, 1e-9)
    peak = peak_rss_mib()
    print(
        json.dumps(
            {"images_per_s": rate, "s_per_image": 1 / rate, "t1": t1, "tn": tn, "n": len(files), "peak_rss_mib": peak}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="run directory or .pt checkpoint (default: cpu preset, random weights)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of images to crop the test images from")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--n", type=int, default=8, help="images per measurement without TTA")
    ap.add_argument("--n-tta", type=int, default=5, help="images per measurement with TTA")
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (ONNX Runtime uses its default: the physical cores)"
    )
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tta", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import torch

    from qmed import runtime

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from qmed.config import resolve_config
            from qmed.io import checkpoints
            from qmed.models.segmenter import build

            cfg = resolve_config("cpu", None, {"model": {"encoder_weights": None}})
            torch.manual_seed(0)
            m = build(cfg.model, pretrained=False)
            model = tmp / "cpu-random.pt"
            checkpoints.save(model, {"config": cfg.model_dump(), "model": m.state_dict(), "ema_model": None})
        from qmed.segment.export import export_onnx

        onnx_path = tmp / "model.onnx"
        t = time.perf_counter()
        export_onnx(model, onnx_path)
        print(f"exported {model} to ONNX in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for s in sizes:
            make_images(args.data, s, max(args.n, args.n_tta), tmp / f"in{s}")
        backends = ["f32"] + (["bf16"] if runtime.cpu_has_native_bf16() else []) + ["ort"]
        configs = [(s, tta, b) for s in sizes for tta in (False, True) for b in backends]
        rows = []
        for s, tta, b in configs:
            n = args.n_tta if tta else args.n
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--backend",
                b,
                "--size",
                str(s),
                "--model",
                str(model),
                "--onnx",
                str(onnx_path),
                "--tmp",
                str(tmp),
                "--n",
                str(n),
                "--threads",
                str(args.threads),
            ] + (["--tta"] if tta else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"worker failed: {' '.join(cmd)}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row.update(
                size=s,
                tta=7 if tta else 1,
                backend={"f32": "torch float32", "bf16": "torch bfloat16", "ort": "ONNX Runtime"}[b],
            )
            rows.append(row)
            print(
                f"{s}² tta={row['tta']} {row['backend']}: {row['images_per_s']:.2f} img/s, peak {row['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
    import platform

    import onnxruntime

    print(
        f"\ntorch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"torch threads {args.threads}, native bfloat16: {runtime.cpu_has_native_bf16()}; model {args.model or 'cpu preset, random weights'}"
    )
    if "bf16" not in backends:
        print("torch bfloat16: not measured (this CPU has no native bfloat16: AVX512-BF16 / AMX)")
    heads = [b for b in ("torch float32", "torch bfloat16", "ONNX Runtime") if any(r["backend"] == b for r in rows)]
    print("\n| image | TTA views | " + " | ".join(f"{h} img/s (peak MiB)" for h in heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for s in sizes:
        for tta in (1, 7):
            cells = []
            for h in heads:
                r = next(r for r in rows if r["size"] == s and r["tta"] == tta and r["backend"] == h)
                cells.append(f"{r['images_per_s']:.2f} ({r['peak_rss_mib']:.0f})")
            print(f"| {s}² | {tta} | " + " | ".join(cells) + " |")
    if args.json:
        from qmed.io.files import write_json  # strict JSON, like every JSON qmed writes

        write_json(args.json, rows)


if __name__ == "__main__":
    main()
