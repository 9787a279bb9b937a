"""The one-shot GPU check of issue 21; run it through benchmarks/gpu_check.sh (which finds or makes
a Python with qmed's dependencies). Prints ONE markdown table on stdout (progress on stderr):

1. the `paper` preset (EfficientNet-B7 UNet++, 512² crops, batch 4, accumulate 2, AMP: bfloat16 on
   GPUs that have it, else float16 with loss scaling) trains `--steps` optimizer steps (default 50)
   on DSB2018 fluorescence through qmed's own trainer, and must not meet a non-finite loss or
   gradient (metrics.csv's bad_steps) nor end with a non-finite loss. Encoder weights: random
   (the GPU machine has no hub access), which changes nothing in speed or numerics checks;
2. inference images per second and peak GPU memory at 512², without and with 7-fold TTA, eager
   against torch.compile, through `qmed predict`'s own code (qmed.segment.predict.predict_probability,
   AMP as the run's config says; batch of one image, host-to-device copy and back included),
   against the paper's 28 FPS and 4.2 GB (RTX 3090; the paper does not say whether with TTA);
3. the same for the `cpu` preset's model (MobileNetV2 UNet++; random weights);
4. `qmed export` of the trained paper model to ONNX, then ONNX Runtime: on CUDA when this
   onnxruntime has the CUDA provider (onnxruntime-gpu), else one CPU row; with its difference from
   the torch float32 probability map.

A part that fails becomes a row that says why; the script goes on. `--budget` (seconds, default
450) skips what would not fit: torch.compile of the second model first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

T0 = time.time()
ROWS: list[dict] = []
DRY_RUN = False


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def row(part: str, model: str, setting: str, result: str, paper: str = "", verdict: str = "", **extra) -> None:
    ROWS.append(dict(part=part, model=model, setting=setting, result=result, paper=paper, verdict=verdict, **extra))
    say(f"{part} | {model} | {setting} | {result} | {verdict}")


def failed(part: str, model: str, setting: str, exc: BaseException) -> None:
    traceback.print_exc(file=sys.stderr)
    msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    row(part, model, setting, f"failed: {type(exc).__name__}: {msg}", verdict="FAILED")


def test_image(data: Path, size: int = 512):
    """One real val image, reflect-padded/cropped to size×size, as HxWxC float in [0, 1] (as read)."""
    import numpy as np

    from qmed.data.dataset import list_images
    from qmed.io.images import read_image

    files = list_images(data / "val" / "images")
    big = [f for f in files if min(read_image(f).shape[:2]) >= size] or files
    img = read_image(big[0])
    ph, pw = max(0, size - img.shape[0]), max(0, size - img.shape[1])
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    return np.ascontiguousarray(img[:size, :size])


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> tuple[float, float]:
    """(allocated, reserved) peak GPU memory since reset_peak(); zeros off CUDA (--dry-run)."""
    import torch

    if not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_paper(data: Path, out: Path, steps: int, dev, preset: str = "paper") -> Path | None:
    import csv

    import torch

    from qmed import runtime
    from qmed.config import resolve_config
    from qmed.segment.train import train

    name = "paper (B7)" if preset == "paper" else f"{preset} (dry run)"
    cfg = resolve_config(preset, None, {"model": {"encoder_weights": None}, "train": {"epochs": 1, "min_steps": 0}})
    bs, acc = cfg.train.batch_size, cfg.train.accumulate
    cfg.data.samples_per_epoch = steps * bs * acc  # one epoch of `steps` optimizer steps
    dtype = runtime.autocast_dtype(dev, cfg.train.amp, cfg.train.cpu_bf16)
    prec = f"AMP {str(dtype).replace('torch.', '')}" if dtype else "float32"
    setting = (
        f"{steps} optimizer steps = {steps * acc} micro-batches of {bs} x {cfg.data.crop}², {prec}"
        f"{' + loss scaling' if dtype == torch.float16 else ''}, random init"
    )
    try:
        reset_peak()
        t = time.time()
        run = train(cfg, data / "train", data / "val", out, force=True, device=str(dev), quiet=True)
        wall = time.time() - t
        with open(run / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        last = rows[-1]
        loss, bad, opt = float(last["train_loss"]), int(float(last["bad_steps"])), int(float(last["opt_steps"]))
        ok = math.isfinite(loss) and bad == 0
        summ = json.loads((run / "summary.json").read_text())
        bad = max(bad, int(summ.get("bad_steps", 0)))
        ok = ok and bad == 0
        dice = float(last.get("val_dice_empty1") or "nan")
        peak = peak_gib()[0]
        row(
            "train",
            name,
            setting,
            f"{opt} steps, train loss {loss:.4f}, non-finite steps {bad}, {wall:.0f} s incl. data loading and validation, "
            f"peak {peak:.1f} GiB allocated, val Dice {dice:.3f}",
            "trains (the paper: 200 epochs)",
            "no NaN" if ok else "NaN / non-finite steps",
            loss=loss,
            bad_steps=bad,
            peak_gib=peak,
        )
        return run
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        failed("train", name, setting, exc)
        return None


def measure(forward, img, cfg, tta: int, dev, min_s: float = 3.0, max_iter: int = 60) -> tuple[float, float, float]:
    """(images/s, peak allocated GiB, peak reserved GiB) of predict_probability on one 512² image."""

    from qmed.segment.predict import predict_probability

    kw = dict(tile=cfg.predict.tile, overlap=cfg.predict.overlap, batch_size=1, device=dev, amp=cfg.train.amp, tta=tta)
    for _ in range(1 if DRY_RUN else 3):
        predict_probability(forward, img, **kw)
    reset_peak()
    n, t = 0, time.perf_counter()
    while n < max_iter and (time.perf_counter() - t < min_s or n < 5):
        if DRY_RUN and n >= 1:  # the plumbing only
            break
        predict_probability(forward, img, **kw)  # ends in .cpu(): synchronised
        n += 1
    rate = n / (time.perf_counter() - t)
    return (rate, *peak_gib())


def compiled_forward(model, cfg, dev):
    """torch.compile of the whole segmenter, as a probability function (contiguous input: the TTA
    views' strides would otherwise each compile again)."""
    import torch

    from qmed import runtime

    fn = torch.compile(model)
    dtype = runtime.autocast_dtype(dev, cfg.train.amp, cfg.train.cpu_bf16)

    def forward(x):
        with runtime.autocast(dev, dtype):
            return torch.sigmoid(fn(x.contiguous()).float())

    return forward


def inference_rows(name: str, model, cfg, img, dev, compile_ok: bool) -> None:

    from qmed import runtime

    dtype = runtime.autocast_dtype(dev, cfg.train.amp, cfg.train.cpu_bf16)
    prec = str(dtype).replace("torch.", "") if dtype else "float32"
    modes = [("eager", lambda: model)]
    if compile_ok:
        modes.append(("torch.compile", lambda: compiled_forward(model, cfg, dev)))
    for mode, make in modes:
        try:
            t = time.time()
            fwd = make()
            for tta in (1, cfg.predict.tta):
                t1 = time.time()
                rate, alloc, reserved = measure(fwd, img, cfg, tta, dev)
                first = f", first calls {t1 - t:.0f} s" if mode == "torch.compile" and tta == 1 else ""
                fps_ok = rate >= 28 if tta == 1 else None
                mem_ok = reserved <= 4.2 * 1e9 / 2**30
                verdict = "" if fps_ok is None else ("met" if fps_ok and mem_ok else "not met")
                row(
                    "inference",
                    name,
                    f"512², {mode}, {prec}, TTA {tta}",
                    f"{rate:.1f} img/s, peak {alloc:.2f} GiB allocated / {reserved:.2f} GiB reserved{first}",
                    "28 FPS, 4.2 GB" if name.startswith("paper") else "",
                    verdict if name.startswith("paper") else "",
                    images_per_s=rate,
                    peak_alloc_gib=alloc,
                    peak_reserved_gib=reserved,
                    tta=tta,
                    mode=mode,
                )
                t = time.time()
            del fwd
            empty_cache()
        except Exception as exc:  # noqa: BLE001
            failed("inference", name, f"512², {mode}", exc)


def onnx_rows(run: Path, img, dev, tmp: Path, name: str = "paper (B7)") -> None:
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        row(
            "onnx",
            name,
            "qmed export + ONNX Runtime",
            "skipped: onnx/onnxruntime not installed (pip install 'qmed[onnx]')",
            verdict="skipped",
        )
        return
    from qmed.data.batches import model_input
    from qmed.segment.checkpoint import load_model
    from qmed.segment.export import export_onnx
    from qmed.segment.onnx_backend import load_onnx
    from qmed.segment.predict import predict_probability

    path = tmp / "paper.onnx"
    try:
        t = time.time()
        meta = export_onnx(run, path, force=True)
        row(
            "onnx",
            name,
            f"qmed export, opset {meta['opset']}",
            f"{time.time() - t:.0f} s, {path.stat().st_size / 2**20:.0f} MiB, onnx.checker passed, check image: max abs difference ORT vs torch "
            f"{meta['check']['max_abs_diff_vs_torch']:.1e}",
            verdict="ok",
        )
    except Exception as exc:  # noqa: BLE001
        failed("onnx", name, "qmed export", exc)
        return
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    device = "cuda" if cuda else "cpu"
    try:
        fwd, cfg, _ = load_onnx(path, device)
        x = model_input(img, cfg)
        model, _, _ = load_model(run, dev)
        ref = predict_probability(model, x, tile=cfg.predict.tile, tta=1, device=dev, amp=False)
        got = predict_probability(fwd, x, tile=cfg.predict.tile, tta=1, device="cpu")
        diff = float(np.abs(ref - got).max())
        for tta in (1, cfg.predict.tta) if cuda else (1,):
            predict_probability(fwd, x, tile=cfg.predict.tile, tta=tta, device="cpu")
            n, t = 0, time.perf_counter()
            while n < 30 and (time.perf_counter() - t < 3.0 or n < 3):
                predict_probability(fwd, x, tile=cfg.predict.tile, tta=tta, device="cpu")
                n += 1
            rate = n / (time.perf_counter() - t)
            row(
                "onnx",
                name,
                f"ONNX Runtime {'CUDA' if cuda else 'CPU (no CUDA provider: pip install onnxruntime-gpu)'}, float32, TTA {tta}",
                f"{rate:.1f} img/s, max abs difference from torch float32 {diff:.1e}",
                "28 FPS" if cuda and tta == 1 else "",
                "ok" if diff < 1e-3 else "differs",
                images_per_s=rate,
                max_abs_diff=diff,
            )
        del model
        empty_cache()
    except Exception as exc:  # noqa: BLE001
        failed("onnx", name, f"ONNX Runtime {device}", exc)


def print_table(json_path: Path | None, note: str = "") -> None:
    print(f"\n## qmed GPU check ({time.strftime('%Y-%m-%d')}, {time.time() - T0:.0f} s{note})\n")
    print("| part | model | setting | result | paper | verdict |")
    print("|---|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['part']} | {r['model']} | {r['setting']} | {r['result']} | {r['paper']} | {r['verdict']} |")
    sys.stdout.flush()
    if json_path:
        from qmed.io.files import write_json  # strict JSON (NaN -> null), like every JSON qmed writes

        write_json(json_path, ROWS)


def main() -> None:
    ap = argparse.ArgumentParser(description="qmed's one-shot GPU check (issue 21)")
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-fluo"
    )
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--budget", type=float, default=450.0, help="seconds; later parts are skipped when they would not fit"
    )
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="the script's plumbing on the CPU: tiny preset for both models, 2 steps, no compile",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import platform

    import torch

    from qmed import runtime
    from qmed.config import resolve_config
    from qmed.data.batches import model_input
    from qmed.models.segmenter import build
    from qmed.segment.checkpoint import load_model

    def stopped(signum, frame):  # `timeout` in gpu_check.sh: the table so far, then leave
        row(
            "stopped",
            "-",
            "-",
            f"stopped by signal {signum} after {time.time() - T0:.0f} s; the rows above are complete",
            verdict="INCOMPLETE",
        )
        print_table(args.json, ", stopped")
        os._exit(124)

    signal.signal(signal.SIGTERM, stopped)
    big, small = ("tiny", "tiny") if args.dry_run else ("paper", "cpu")
    names = {"paper": "paper (B7)", "cpu": "cpu (MobileNetV2)", "tiny": "tiny (dry run)"}
    if args.dry_run:
        global DRY_RUN
        DRY_RUN = True
        dev, args.steps, args.no_compile = torch.device("cpu"), 2, True
        row(
            "machine",
            "-",
            "-",
            f"dry run on the CPU ({platform.processor() or platform.machine()}); torch {torch.__version__}",
        )
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False); --dry-run checks the script on a CPU"
            )
        dev = torch.device("cuda")
        props = torch.cuda.get_device_properties(0)
        row(
            "machine",
            "-",
            "-",
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}; "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}; AMP dtype {str(runtime.autocast_dtype(dev, True, False)).replace('torch.', '')}",
        )
        torch.backends.cudnn.benchmark = True
    img = test_image(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = train_paper(args.data, tmp / "paper-run", args.steps, dev, big)
        if run is not None:
            model, cfg, _ = load_model(run, dev)
        else:  # training failed: time a fresh model all the same
            cfg = resolve_config(big, None, {"model": {"encoder_weights": None}})
            model = build(cfg.model, pretrained=False).to(dev).eval()
        inference_rows(names[big], model, cfg, model_input(img, cfg), dev, not args.no_compile)
        del model
        empty_cache()
        cfg = resolve_config(small, None, {"model": {"encoder_weights": None}})
        model = build(cfg.model, pretrained=False).to(dev).eval()
        late = time.time() - T0 > args.budget * 0.6
        if late and not args.no_compile:
            row(
                "inference",
                names[small],
                "512², torch.compile",
                f"skipped: {time.time() - T0:.0f} s of the {args.budget:.0f} s budget used",
                verdict="skipped",
            )
        inference_rows(names[small], model, cfg, model_input(img, cfg), dev, not args.no_compile and not late)
        del model
        empty_cache()
        if time.time() - T0 > args.budget:
            row(
                "onnx",
                names[big],
                "qmed export + ONNX Runtime",
                f"skipped: the {args.budget:.0f} s budget is used up",
                verdict="skipped",
            )
        elif run is not None:
            onnx_rows(run, img, dev, tmp, names[big])
        else:
            row(
                "onnx",
                names[big],
                "qmed export + ONNX Runtime",
                "skipped: no trained checkpoint (training failed)",
                verdict="skipped",
            )
    print_table(args.json)


if __name__ == "__main__":
    main()
