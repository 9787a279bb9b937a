"""`qmed export`: a segmentation checkpoint as one ONNX file holding the whole inference path.

The graph maps the image as `qmed.io.images` reads it (float32 N×3×H×W in [0, 1], gray repeated to
3 channels) to the foreground probability N×1×H×W (N×2×H×W with model.instance_head=contact: foreground, contact):

    image -> [per-image percentile scaling (data.normalize=percentile) or Reinhard stain
              normalisation (data.normalize=reinhard, qmed.data.stain)] -> "normalized"
          -> edge channel (direct conv2d, models.edge mode "conv") -> 4->3 projection -> network -> sigmoid
          -> probability

so Fiji, QuPath or plain ONNX Runtime need nothing else. H and W are dynamic but must be multiples
of 32 (the encoder's five halvings): pad the image at the bottom and right by reflection to the next
multiple of 32 and crop the output back, as `qmed predict` does. N is dynamic; each image in a batch
is scaled by its own percentiles.

Percentile scaling in the graph is numpy's `np.percentile` (linear interpolation at rank
q/100 * (n - 1)) written with a sort, so it exports: over all pixels of a gray image (the three
channels equal) or over all pixels and channels of an RGB one, exactly as
`qmed.data.batches.normalize_intensity` sees the file's 1- or 3-channel array.

The file carries everything `qmed predict --backend onnxruntime` needs in its metadata (key
"qmed": preprocessing, threshold, training crop, TTA views, tile, the run's whole resolved config),
and the same JSON is written beside it as MODEL.onnx.json for people and other tools. The graph is
built from two exports joined at the tensor "normalized": `qmed predict` normalises each whole
image itself (the same code as the torch path) and runs the part after "normalized" on its sliding
windows, so windows of one large image share the image's percentiles, as they do with torch.

Exporter: torch's TorchScript-based exporter (about 1 s for the `cpu` model; the newer
torch.export-based one takes tens of seconds and needs onnxscript); when a torch release has
removed it, the newer one is used.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qmed.data.stain import ReinhardNormalization
from qmed.errors import QmedInputError, require_extra

log = logging.getLogger("qmed")

FORMAT = "qmed-onnx-1"
METADATA_KEY = "qmed"
INPUT, NORMALIZED, OUTPUT = "image", "normalized", "probability"
SIZE_MULTIPLE = 32
DEFAULT_OPSET = 17
# From 17 (the opset the graph needs) to the newest this torch's exporter writes (23 with torch 2.14);
# anything else is refused before torch prints the whole graph with its error.
SUPPORTED_OPSETS = tuple(
    range(DEFAULT_OPSET, int(getattr(getattr(torch.onnx, "_constants", None), "ONNX_MAX_OPSET", 20)) + 1)
)
PADDING = (
    "H and W must be multiples of 32: pad the image at the bottom and right by reflection "
    "(numpy mode 'reflect') to the next multiple of 32 and crop the probability map back"
)


def sidecar_path(onnx_path: str | Path) -> Path:
    """MODEL.onnx -> MODEL.onnx.json."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def sorted_percentile(ranked: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile (numpy's and torch's linear method) of each row of `ranked`, whose first
    `count` entries (B, 1) are the row's values in ascending order -> (B, 1). Exportable ops only."""
    last = (count - 1).clamp_min(0)
    rank = last.to(ranked.dtype) * (q / 100.0)
    below = rank.floor().long()
    above = torch.minimum(below + 1, last)
    a, b = ranked.gather(1, below), ranked.gather(1, above)
    w = rank - below.to(ranked.dtype)
    return torch.where(w < 0.5, a + w * (b - a), b - (b - a) * (1 - w))  # the two-sided lerp numpy and torch use


class PercentileScaling(nn.Module):
    """(B, 3, H, W) in [0, 1] -> each image's `percentiles` (low, high) mapped to 0 and 1, clipped;
    an image whose two percentiles are within 1e-6 is passed unchanged (normalize_intensity's rule)."""

    def __init__(self, percentiles: tuple[float, float]):
        super().__init__()
        self.low, self.high = float(percentiles[0]), float(percentiles[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def bounds(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ranked = flat.sort(dim=1).values
            count = torch.ones_like(flat, dtype=torch.long).sum(dim=1, keepdim=True)
            return sorted_percentile(ranked, count, self.low), sorted_percentile(ranked, count, self.high)

        gray = (x - x[:, :1]).abs().flatten(1).amax(dim=1, keepdim=True) == 0  # (B, 1): gray repeated to 3 channels
        lo_g, hi_g = bounds(x[:, 0].flatten(1))
        lo_c, hi_c = bounds(x.flatten(1))
        lo = torch.where(gray, lo_g, lo_c).view(-1, 1, 1, 1)
        hi = torch.where(gray, hi_g, hi_c).view(-1, 1, 1, 1)
        scaled = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)
        return torch.where(hi - lo < 1e-6, x, scaled)


class ProbabilityModel(nn.Module):
    """The segmenter with its sigmoid: (B, 3, H, W) -> (B, 1, H, W) foreground probability."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x).float())


def _to_onnx(module: nn.Module, sample: torch.Tensor, inp: str, out: str, opset: int):
    """One module as an in-memory ONNX ModelProto with dynamic batch, height and width."""
    onnx = require_extra("onnx", "onnx", "qmed export")
    module = module.eval()
    axes = {0: "N", 2: "H", 3: "W"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # tracer and deprecation warnings: the shapes that matter are dynamic and tested
        try:
            torch.onnx.export(
                module,
                (sample,),
                buf,
                input_names=[inp],
                output_names=[out],
                opset_version=opset,
                dynamic_axes={inp: axes, out: axes},
                do_constant_folding=True,
                dynamo=False,
            )
        except (
            TypeError,
            NotImplementedError,
            AttributeError,
            ImportError,
        ):  # a torch without the TorchScript exporter
            require_extra("onnxscript", "onnx", "qmed export (torch's torch.export-based ONNX exporter)")
            n, h, w = (torch.export.Dim(f"{k}_{inp}", min=1, max=4096) for k in "nhw")
            prog = torch.onnx.export(
                module,
                (sample,),
                input_names=[inp],
                output_names=[out],
                opset_version=max(opset, 18),
                dynamic_shapes=({0: n, 2: SIZE_MULTIPLE * h, 3: SIZE_MULTIPLE * w},),
                dynamo=True,
            )
            return prog.model_proto
    return onnx.load_model_from_string(buf.getvalue())


def _merge(pre, core):
    """pre (image -> normalized) and core (normalized -> probability) joined at "normalized"."""
    from onnx import compose

    pre = compose.add_prefix(pre, "pre/", rename_inputs=False, rename_outputs=False)
    core = compose.add_prefix(core, "core/", rename_inputs=False, rename_outputs=False)
    return compose.merge_models(pre, core, io_map=[(NORMALIZED, NORMALIZED)], producer_name="qmed export")


def metadata(cfg, ckpt: Path, opset: int, normalize_in_graph: bool) -> dict:
    """What the sidecar and the file's metadata say: everything `qmed predict` needs, and the rest for people."""
    m, e, p = cfg.model, cfg.model.edge, cfg.predict
    steps = []
    if normalize_in_graph and cfg.data.normalize == "reinhard":
        steps.append(
            f"Reinhard stain normalisation: each image's L*a*b* (sRGB, D65) mean and std per channel -> "
            f"{list(cfg.data.stain_target)} (means, then stds), back to RGB, clipped to [0, 1]"
        )
    elif normalize_in_graph:
        steps.append(
            f"per-image percentile scaling: percentiles {list(cfg.data.norm_percentiles)} -> 0 and 1, clipped "
            "(over all pixels of a gray image, all pixels and channels of an RGB one; unchanged if flat)"
        )
    if m.input_mode != "none":
        steps.append(
            f"edge channel: max over {e.n_orientations * len(e.wavelengths)} Gabor filters "
            f"({e.ksize}x{e.ksize}, sigma {e.sigma}, gamma {e.gamma}, wavelengths {list(e.wavelengths)}), direct conv2d with reflect padding, "
            "per-image 99th percentile of the positive responses -> 1"
        )
    steps.append(
        {
            "projection": "learned 4->3 projection of RGB + edge, then ImageNet mean/std",
            "stem4": "ImageNet mean/std on RGB, edge centred, a 4-channel encoder stem",
            "none": "ImageNet mean/std",
        }[m.input_mode]
    )
    steps.append(f"{m.arch} with encoder {m.encoder}, then the sigmoid")
    return {
        "format": FORMAT,
        "opset": opset,
        "input": {
            "name": INPUT,
            "shape": ["N", 3, "H", "W"],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "channels": "RGB; a gray image repeated to 3 channels (as qmed.io.images reads it, alpha dropped)",
            "size_multiple": SIZE_MULTIPLE,
            "padding": PADDING,
        },
        "output": {
            "name": OUTPUT,
            "shape": ["N", m.out_channels, "H", "W"],
            "dtype": "float32",
            "meaning": "foreground probability (sigmoid applied)"
            if m.out_channels == 1
            else "channel 0 foreground, channel 1 contact probability (sigmoid applied; model.instance_head=contact)",
        },
        "graph": steps,
        "preprocessing": {
            "normalize": cfg.data.normalize,
            "norm_percentiles": list(cfg.data.norm_percentiles),
            "stain_target": list(cfg.data.stain_target) if cfg.data.stain_target else None,
            "in_graph": True,
            "normalized_tensor": NORMALIZED if normalize_in_graph else None,
        },
        "threshold": p.threshold,
        "training_crop": cfg.data.crop,
        # data.zoom: resize the image by this factor before the graph and the output back (qmed predict does)
        "zoom": cfg.data.zoom,
        "tta": p.tta,
        "tta_views": "the first N of: identity, flip W, flip H, rot90, rot180, rot270, transpose (probabilities averaged)",
        "tile": p.tile,
        "overlap": p.overlap,
        "batch_size": p.batch_size,
        "object_diameter": p.object_diameter,
        "source_checkpoint": str(Path(ckpt).resolve()),
        "config": cfg.model_dump(mode="json"),
    }


def read_metadata(onnx_model, path: str | Path) -> dict:
    """The qmed metadata of a loaded ModelProto; a one-line error for an ONNX file qmed did not write."""
    props = {p.key: p.value for p in onnx_model.metadata_props}
    if METADATA_KEY not in props:
        raise QmedInputError(path, "is not an ONNX model written by qmed export (no qmed metadata)")
    meta = json.loads(props[METADATA_KEY])
    if meta.get("format") != FORMAT:
        raise QmedInputError(
            path, f"was written by an incompatible qmed export (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    return meta


def sample_image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A gray test image (H×W×1 in [0, 1]) for the export's own parity check: noisy blobs on an
    exactly flat background, as fluorescence looks after percentile clipping (the case where the
    FFT and conv edge paths could part: models.edge.POSITIVE_TOL)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = np.zeros((h, w), np.float32)
    for _ in range(8):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
        blobs += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32) * rng.uniform(0.2, 0.6)
    img = 0.05 + 0.6 * blobs + 0.02 * rng.standard_normal((h, w)).astype(np.float32)
    img[blobs < 0.05] = 0.05
    return np.clip(img, 0, 1)[..., None].astype(np.float32)


def export_onnx(model_path: str | Path, out: str | Path, force: bool = False, opset: int = DEFAULT_OPSET) -> dict:
    """Write OUT (the ONNX file) and OUT.json (its sidecar), both atomically; -> the metadata, with
    the export's own check ("check": ONNX Runtime against the torch path on a sample image)."""
    from qmed.data.batches import model_input
    from qmed.io.files import atomic_path, check_output, write_json
    from qmed.segment.checkpoint import load_model

    onnx = require_extra("onnx", "onnx", "qmed export")
    require_extra("onnxruntime", "onnx", "qmed export")
    out = Path(out)
    if opset < 17:
        raise QmedInputError(None, f"--opset must be 17 or higher, got {opset}")
    if out.is_dir():
        raise QmedInputError(out, "is a folder; give the ONNX file to write, e.g. model.onnx")
    model_files = [model_path if Path(model_path).is_file() else Path(model_path) / "checkpoints"]
    check_output(out, force, what="ONNX file", inputs=model_files, kind="file")
    check_output(sidecar_path(out), force, what="ONNX sidecar", inputs=model_files, kind="file")
    model, cfg, ckpt = load_model(model_path, "cpu")
    net = copy.deepcopy(model).eval()
    if net.edge is not None:
        net.edge.mode = "conv"
    normalize_in_graph = cfg.data.normalize in ("percentile", "reinhard")
    pre = (
        ReinhardNormalization(cfg.data.stain_target)
        if cfg.data.normalize == "reinhard"
        else PercentileScaling(cfg.data.norm_percentiles)
    )
    sample = torch.rand(1, 3, 2 * SIZE_MULTIPLE, 2 * SIZE_MULTIPLE)
    try:
        graph = _to_onnx(ProbabilityModel(net), sample, NORMALIZED if normalize_in_graph else INPUT, OUTPUT, opset)
        if normalize_in_graph:
            graph = _merge(_to_onnx(pre, sample, INPUT, NORMALIZED, opset), graph)
    except QmedInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes the one-line error
        raise QmedInputError(
            ckpt,
            f"could not be exported to ONNX ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''})",
        ) from None
    meta = metadata(cfg, ckpt, opset, normalize_in_graph)
    meta["check"] = _check(graph, model, cfg, model_input)
    from qmed.io.files import json_safe

    onnx.helper.set_model_props(
        graph, {METADATA_KEY: json.dumps(json_safe(meta), allow_nan=False)}
    )  # strict, as the sidecar
    graph.doc_string = (
        "qmed segmentation model: image (N,3,H,W float32 in [0,1]; H, W multiples of 32) -> probability (N,1,H,W)"
    )
    onnx.checker.check_model(graph, full_check=True)
    with atomic_path(out) as tmp:
        onnx.save_model(graph, str(tmp))
    write_json(sidecar_path(out), meta)
    return meta


def _check(graph, model: nn.Module, cfg, model_input) -> dict:
    """The exported graph against the torch path (FFT edge channel, numpy normalisation) on one sample image."""
    import onnxruntime as ort

    img = sample_image()
    x = model_input(img, cfg)  # the torch path's input: normalised in numpy, gray repeated
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]).float()).numpy()
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = np.repeat(img, 3, axis=2).transpose(2, 0, 1)[None].copy()  # the file's image, normalised in the graph
    got = sess.run([OUTPUT], {INPUT: raw})[0]
    diff = float(np.abs(got - ref).max())
    if not diff < 1e-3:
        log.warning("exported graph differs from the torch model by %.2g on the check image (expected < 1e-3)", diff)
    return {"image": list(img.shape[:2]), "max_abs_diff_vs_torch": diff}
