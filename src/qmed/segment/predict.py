"""Inference: whole images of any size through sliding windows, with dihedral test-time augmentation.

Windows of `tile` px overlap by `overlap`; their logits are blended with a Gaussian weight (as
nnU-Net does) so seams do not show. Images smaller than a tile go through in one pass, padded by
reflection to a multiple of 32 (what the encoder's five down-samplings need). Memory stays bounded
by the tile batch plus two float32 maps of the image's size, whatever the image size.

TTA (S10): the paper averages 7 views; qmed uses the first 7 elements of the dihedral group D4
(identity, horizontal flip, vertical flip, rotations by 90/180/270 degrees, transpose), each
inverted before averaging probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qmed import runtime

CONTACT_DIR = "contact"  # a model with the instance head: OUT/contact/NAME.png, 16-bit contact probability

# (forward, inverse) pairs on (..., H, W) tensors.
DIHEDRAL: list[tuple[Callable, Callable]] = [
    (lambda t: t, lambda t: t),
    (lambda t: t.flip(-1), lambda t: t.flip(-1)),
    (lambda t: t.flip(-2), lambda t: t.flip(-2)),
    (lambda t: t.rot90(1, (-2, -1)), lambda t: t.rot90(-1, (-2, -1))),
    (lambda t: t.rot90(2, (-2, -1)), lambda t: t.rot90(-2, (-2, -1))),
    (lambda t: t.rot90(3, (-2, -1)), lambda t: t.rot90(-3, (-2, -1))),
    (lambda t: t.transpose(-2, -1), lambda t: t.transpose(-2, -1)),
    (lambda t: t.flip(-1).rot90(1, (-2, -1)), lambda t: t.rot90(-1, (-2, -1)).flip(-1)),
]


def pad_multiple(x: torch.Tensor, multiple: int = 32, min_size: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    th = max(min_size, math.ceil(h / multiple) * multiple)
    tw = max(min_size, math.ceil(w / multiple) * multiple)
    ph, pw = th - h, tw - w
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def _gaussian_weight(h: int, w: int) -> torch.Tensor:
    def g(n: int) -> torch.Tensor:
        r = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        return torch.exp(-(r**2) / (2 * (n / 8.0) ** 2))

    wt = g(h)[:, None] * g(w)[None, :]
    return (wt / wt.max()).clamp_min(1e-3)


def _starts(total: int, size: int, overlap: float) -> list[int]:
    """Window origins covering [0, total) with at least `overlap` overlap; the last one flush."""
    if size >= total:
        return [0]
    stride = max(32, int(size * (1 - overlap)) // 32 * 32)
    starts = list(range(0, total - size + 1, stride))
    if starts[-1] != total - size:
        starts.append(total - size)
    return starts


Forward = Callable[
    [torch.Tensor], torch.Tensor
]  # (B,3,H,W) float32 -> (B,C,H,W) probabilities, channel 0 the foreground


def as_forward(model: nn.Module | Forward, device: torch.device, amp: bool, cpu_bf16: bool = False) -> Forward:
    """A torch model as its probability function (sigmoid of the logits, under the autocast `amp` /
    `cpu_bf16` ask for); any other callable is taken to be one already (qmed.segment.onnx_backend)."""
    if not isinstance(model, nn.Module):
        return model
    dtype = runtime.autocast_dtype(device, amp, cpu_bf16)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with runtime.autocast(device, dtype):
            logits = model(x)
        return torch.sigmoid(logits.float())

    return forward


@torch.no_grad()
def forward_views(
    model: nn.Module | Forward, x: torch.Tensor, tta: int, amp: bool, cpu_bf16: bool = False
) -> torch.Tensor:
    """Mean probability over `tta` dihedral views; x (B,3,H,W) with H, W multiples of 32. `model`: a
    torch model or a probability function (as_forward)."""
    acc = None
    n = max(1, min(tta, len(DIHEDRAL)))
    forward = as_forward(model, x.device, amp, cpu_bf16)
    for fwd, inv in DIHEDRAL[:n]:
        p = inv(forward(fwd(x)))
        acc = p if acc is None else acc + p
    return acc / n


def window_grid(h: int, w: int, tile: int, overlap: float) -> tuple[int, int, list[int], list[int]]:
    """The sliding windows over an image of h x w px (already padded to a multiple of 32): (window
    height, width, row origins, column origins). A whole slide's blocks take their windows from this
    one grid (qmed.segment.slide), so that each pixel is blended from the windows a whole-image pass
    would use: with SCSE's channel squeeze, a pixel's probability depends on the window it is seen in."""
    tile = max(32, int(tile) // 32 * 32)
    th, tw = min(tile, h), min(tile, w)  # rectangular windows for long, thin images
    return th, tw, _starts(h, th, overlap), _starts(w, tw, overlap)


def add_weights(norm: torch.Tensor, origin: tuple[int, int], coords, th: int, tw: int) -> None:
    """Add the Gaussian blending weight of the windows at `coords` (their (y, x) in the frame whose
    (y, x) `origin` is norm's top-left; clipped to norm) into norm (H, W)."""
    weight = _gaussian_weight(th, tw)
    oy, ox = origin
    H, W = norm.shape
    for y, x in coords:
        y0, x0, y1, x1 = max(y - oy, 0), max(x - ox, 0), min(y - oy + th, H), min(x - ox + tw, W)
        if y1 > y0 and x1 > x0:
            norm[y0:y1, x0:x1] += weight[y0 - (y - oy) : y1 - (y - oy), x0 - (x - ox) : x1 - (x - ox)]


@torch.no_grad()
def accumulate_windows(
    model: nn.Module | Forward,
    x: torch.Tensor,
    origin: tuple[int, int],
    coords,
    th: int,
    tw: int,
    tta: int = 1,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp: bool = True,
    cpu_bf16: bool = False,
    channels: bool = True,
) -> torch.Tensor | None:
    """The Gaussian-weighted sum of the windows' probabilities (C, H, W) over x (1, 3, H, W), whose
    top-left is `origin` (y, x) in the frame of `coords`; every window must lie inside x. None when
    `coords` is empty. Dividing by add_weights' sum of the same windows blends them."""
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model.eval()
    oy, ox = origin
    acc = None  # (C, H, W), once the first window says C
    weight = _gaussian_weight(th, tw)
    coords = list(coords)
    for i in range(0, len(coords), batch_size):
        chunk = [(y - oy, x0 - ox) for y, x0 in coords[i : i + batch_size]]
        batch = torch.cat([x[:, :, y : y + th, x0 : x0 + tw] for y, x0 in chunk]).to(device)
        probs = forward_views(model, batch, tta, amp, cpu_bf16).cpu()
        if not channels:
            probs = probs[:, :1]
        if acc is None:
            acc = torch.zeros((probs.shape[1], *x.shape[-2:]), dtype=torch.float32)
        for (y, x0), pr in zip(chunk, probs):
            acc[:, y : y + th, x0 : x0 + tw] += pr * weight
    return acc


@torch.no_grad()
def predict_probability(
    model: nn.Module | Forward,
    image: np.ndarray,
    tile: int = 512,
    overlap: float = 0.25,
    tta: int = 1,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp: bool = True,
    cpu_bf16: bool = False,
    channels: bool = False,
) -> np.ndarray:
    """image HxWx3 float32 in [0,1] -> foreground probability HxW float32 (with `channels`, every
    output channel: CxHxW, the foreground first; model.instance_head=contact adds the contact
    probability). `amp`: float16 on CUDA; `cpu_bf16`: bfloat16 on a CPU with native support
    (qmed.runtime; per-epoch validation only). `model` may also be a probability function
    (as_forward), e.g. an ONNX Runtime session's."""
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
    h, w = x.shape[-2:]
    tile = max(32, int(tile) // 32 * 32)
    if h <= tile and w <= tile:
        xp, _ = pad_multiple(x)
        p = forward_views(model, xp.to(device), tta, amp, cpu_bf16)[0, :, :h, :w].cpu().numpy()
        return p if channels else p[0]
    xp, _ = pad_multiple(x, 32)
    H, W = xp.shape[-2:]
    th, tw, ys, xs = window_grid(H, W, tile, overlap)
    coords = [(y, x0) for y in ys for x0 in xs]
    acc = accumulate_windows(model, xp, (0, 0), coords, th, tw, tta, batch_size, device, amp, cpu_bf16, channels)
    norm = torch.zeros((H, W), dtype=torch.float32)
    add_weights(norm, (0, 0), coords, th, tw)
    p = (acc / norm)[:, :h, :w].numpy()
    return p if channels else p[0]


def predict_at_scale(model: nn.Module, image: np.ndarray, factor: float, tta: int = 1, **kw) -> np.ndarray:
    """predict_probability on the image resized by `factor` (1: as it is), the probabilities resized
    back to the image's size."""
    import cv2

    if factor == 1.0:
        return predict_probability(model, image, tta=tta, **kw)
    h, w = image.shape[:2]
    big = cv2.resize(
        image,
        (max(1, round(w * factor)), max(1, round(h * factor))),
        interpolation=cv2.INTER_LINEAR if factor > 1 else cv2.INTER_AREA,
    )
    big = big[..., None] if big.ndim == 2 else big
    prob = predict_probability(model, big, tta=tta, **kw)
    interp = cv2.INTER_LINEAR if factor > 1 else cv2.INTER_CUBIC
    if prob.ndim == 3:
        return np.stack([cv2.resize(c, (w, h), interpolation=interp) for c in prob]).clip(0.0, 1.0)
    return cv2.resize(prob, (w, h), interpolation=interp).clip(0.0, 1.0)


def predict_image(
    model: nn.Module,
    image: np.ndarray,
    cfg,
    tta: int = 1,
    device: torch.device | str = "cpu",
    threshold: float | None = None,
    rescale: bool | None = None,
    object_diameter: float | None = None,
    cpu_bf16: bool = False,
    channels: bool = False,
) -> tuple[np.ndarray, float]:
    """One image through the run's settings -> (probability HxW, or CxHxW with `channels`, as
    predict_probability; rescale factor used). The model sees the image at the run's magnification
    (data.zoom), and the probabilities come back at the image's size.

    With rescaling on (PredictConfig.rescale), a first pass without TTA measures the predicted
    objects' median diameter; if it differs from the training diameter by more than 10 %, the
    image is resized by their ratio (clipped to `rescale_limits`) as well, and predicted with TTA."""
    from qmed.data.objects import object_diameter as measure

    p = cfg.predict
    zoom = cfg.data.zoom
    kw = dict(
        tile=p.tile,
        overlap=p.overlap,
        batch_size=p.batch_size,
        device=device,
        amp=cfg.train.amp,
        cpu_bf16=cpu_bf16,
        channels=channels,
    )
    rescale = p.rescale if rescale is None else rescale
    target = p.object_diameter if object_diameter is None else object_diameter
    if not rescale or not target:
        return predict_at_scale(model, image, zoom, tta=tta, **kw), 1.0
    first = predict_at_scale(model, image, zoom, tta=1, **kw)
    found = measure((first[0] if channels else first) > (p.threshold if threshold is None else threshold))
    f = 1.0 if found is None else float(np.clip(target / found, *p.rescale_limits))
    if abs(math.log(f)) < math.log(1.1):
        return (first if tta <= 1 else predict_at_scale(model, image, zoom, tta=tta, **kw)), 1.0
    return predict_at_scale(model, image, zoom * f, tta=tta, **kw), f


def predict_folder(
    model_path,
    input_path,
    out,
    tta: bool = False,
    threshold: float | None = None,
    tile: int | None = None,
    force: bool = False,
    device: str | None = None,
    rescale: bool | None = None,
    object_diameter: float | None = None,
    quiet: bool = False,
    backend: str | None = None,
    cpu_bf16: bool = False,
    instances: bool = False,
    say: Callable[[str], None] | None = None,
) -> int:
    """Write OUT/NAME.png (0/255 mask) and OUT/probabilities/NAME.png (16-bit) per input image (and,
    for a model with model.instance_head=contact, OUT/contact/NAME.png, the contact probability);
    with rescaling, OUT/scales.json records each image's scale factor. OUT/predict.json records
    what made them (checkpoint, TTA views, threshold, tile), for `qmed evaluate` to state.
    A progress bar over the images goes to stderr (not with `quiet`, nor when stderr is no terminal).
    `backend`: "torch" (a run directory or .pt checkpoint) or "onnxruntime" (a .onnx file written by
    qmed export; same windows, TTA and thresholds); by default the model file's suffix decides.
    `cpu_bf16`: torch on a CPU with native bfloat16 runs under bfloat16 autocast (benchmarks/predict_speed.py).
    `instances`: also OUT/instances/NAME.png (16-bit label map) and NAME.csv (one row per object),
    split from the whole image's probability map (and contact map, for a model with
    model.instance_head=contact) by qmed.segment.instances, with a predict.json.

    Written image by image, each file atomically and the mask last, so a killed run loses at most the
    image in flight: the same command again (same model and settings, recorded as a key in OUT's
    marker) skips the images whose mask is there. Other settings into the same OUT need `force`.
    `say`: where to report the resume and the checkpoint used (the CLI's console)."""
    import shutil

    from tqdm.auto import tqdm

    from qmed.data.batches import model_input
    from qmed.data.dataset import list_images
    from qmed.errors import QmedInputError
    from qmed.evaluate.folders import PREDICTION_META
    from qmed.io.files import (
        file_digest,
        prepare_output_dir,
        read_json,
        read_marker,
        remove_stale,
        settings_key,
        write_json,
    )
    from qmed.io.images import read_image, write_mask_png, write_probability_png
    from qmed.runtime import pick_device
    from qmed.segment.checkpoint import load_model
    from qmed.segment.instances import INSTANCES_DIR, write_instances

    say = say or (lambda _msg: None)
    input_path, out = Path(input_path), Path(out)
    if input_path.is_file():
        files = [input_path]
    else:
        files = list_images(input_path)
        if not files:
            raise QmedInputError(input_path, "folder holds no images")
    by_stem: dict[str, list[str]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f.name)
    clash = next((v for v in by_stem.values() if len(v) > 1), None)
    if clash:
        raise QmedInputError(
            input_path,
            f"{' and '.join(clash[:3])} share the name {Path(clash[0]).stem!r}; outputs are named by it, so names must be unique",
        )
    backend = backend or ("onnxruntime" if Path(model_path).suffix.lower() == ".onnx" else "torch")
    if backend == "onnxruntime":
        from qmed.segment.onnx_backend import load_onnx

        model, cfg, _ = load_onnx(model_path, device)
        dev, ckpt = torch.device("cpu"), model_path  # ONNX Runtime's provider places the work; tensors stay here
    elif backend == "torch":
        if Path(model_path).suffix.lower() == ".onnx":
            raise QmedInputError(model_path, "is an ONNX model; predict with it through --backend onnxruntime")
        dev = pick_device(device)
        model, cfg, ckpt = load_model(model_path, dev)
    else:
        raise QmedInputError(None, f"unknown --backend {backend!r}; use torch or onnxruntime")
    if Path(model_path).is_dir() and Path(ckpt).name != "best.pt":
        say(f"note: {model_path} has no checkpoints/best.pt; predicting with {Path(ckpt).name}")
    thr = cfg.predict.threshold if threshold is None else threshold
    n_views = cfg.predict.tta if tta else 1
    if tile:
        cfg.predict.tile = tile
    rescale = cfg.predict.rescale if rescale is None else rescale
    if rescale and not (object_diameter or cfg.predict.object_diameter):
        raise QmedInputError(
            model_path,
            "rescaling needs the training objects' diameter, which this model does not record; pass --object-diameter PX",
        )
    head = cfg.model.instance_head == "contact"
    contact = instances and head
    meta = {
        "model": str(model_path),
        "checkpoint": str(Path(ckpt).resolve()),
        "backend": backend,
        "tta": n_views,
        "threshold": thr,
        "tile": cfg.predict.tile,
        "rescale": bool(rescale),
        "input": str(input_path),
        "n_images": len(files),
        "instances": instances,
        "instance_split": ("contact+distance" if contact else "distance") if instances else None,
    }
    key = settings_key(
        {
            **{k: meta[k] for k in ("backend", "tta", "threshold", "tile", "rescale", "instances")},
            "model_sha256": file_digest(ckpt),
            "object_diameter": object_diameter,
            "cpu_bf16": cpu_bf16,
        }
    )
    for f in files:  # decode every image before anything is written: a bad one fails fast, with no output
        read_image(f)  # (decoding is a few % of the prediction's time; the image is read again below)
    marker = read_marker(out) if out.is_dir() else None
    resume = not force and marker is not None and marker.get("verb") == "predict" and marker.get("key") == key
    if marker is not None and marker.get("verb") == "predict" and not resume and not force:
        raise QmedInputError(
            out, "holds predictions made with another model or other settings; pass --force to replace them"
        )
    subdirs = ["probabilities"] + ([INSTANCES_DIR] if instances else []) + ([CONTACT_DIR] if head else [])
    if resume:
        remove_stale(out, recursive=True)  # a killed run's half-written temporaries
        for d in subdirs:
            (out / d).mkdir(exist_ok=True)
    else:
        prepare_output_dir(out, force, subdirs, inputs=[input_path, ckpt], verb="predict", key=key)
    scales_path = out / "scales.json"
    scales = {}
    if resume and scales_path.exists():
        scales = (read_json(scales_path) or {}).get("scales", {})
    todo = [f for f in files if not (resume and (out / f"{f.stem}.png").exists())]
    if resume:
        say(f"resuming into {out}: {len(files) - len(todo)} of {len(files)} images already done")
    bar = tqdm(
        todo,
        desc=f"predict{f' (TTA {n_views} views)' if n_views > 1 else ''}",
        unit="image",
        leave=False,
        disable=True if quiet else None,
        dynamic_ncols=True,
    )
    diameter = object_diameter or cfg.predict.object_diameter
    created = not resume and len(list(out.iterdir())) == len(subdirs) + 1  # only what prepare_output_dir made
    done = 0
    try:
        for f in bar:
            img = model_input(read_image(f), cfg)
            maps, scales[f.name] = predict_image(
                model,
                img,
                cfg,
                tta=n_views,
                device=dev,
                threshold=thr,
                rescale=rescale,
                object_diameter=object_diameter,
                cpu_bf16=cpu_bf16,
                channels=True,
            )
            prob = maps[0]
            write_probability_png(out / "probabilities" / f"{f.stem}.png", prob)
            if head:
                write_probability_png(out / CONTACT_DIR / f"{f.stem}.png", maps[1])
            if instances:
                write_instances(out / INSTANCES_DIR, f.stem, prob, thr, contact=maps[1] if contact else None)
            if rescale:
                write_json(scales_path, {"object_diameter": diameter, "scales": scales})
            write_mask_png(out / f"{f.stem}.png", prob > thr)  # last: its presence marks the image done
            done += 1
    except QmedInputError as exc:
        if created and done == 0:  # nothing finished: leave no output folder behind
            shutil.rmtree(out, ignore_errors=True)
        elif done or resume:
            raise QmedInputError(
                exc.path,
                f"{exc.problem} ({done} image(s) finished this time are kept in {out}: fix or move "
                "the file, then the same command continues)",
            ) from None
        raise
    bar.close()
    write_json(out / PREDICTION_META, meta)
    if instances:
        write_json(out / INSTANCES_DIR / PREDICTION_META, {**meta, "kind": "labels"})
    return len(files)
