"""`qmed predict --backend onnxruntime`: an exported model (qmed.segment.export) run by ONNX Runtime.

`load_onnx(path)` gives a forward function, (B, 3, H, W) float32 tensor -> (B, 1, H, W)
probability, that `qmed.segment.predict` drives through the same sliding windows and TTA views as
a torch model, and the run's config, read back from the file's own metadata (no checkpoint, no
torch model).

Intensity normalisation: when the run scaled each image by its percentiles (or normalised its
stain, data.normalize=reinhard), `qmed predict` does that on the whole image
(qmed.data.batches.model_input, the torch path's code) and ONNX Runtime runs the graph from its
tensor "normalized" on, so the windows of one large image share the image's statistics, exactly
as with torch. The file's full graph (normalisation included) is what other
tools run on a whole image; tests/test_export.py checks that both agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qmed.errors import QmedInputError, require_extra
from qmed.segment.export import INPUT, OUTPUT, read_metadata


def providers_for(device: torch.device | str | None) -> list[str]:
    """ONNX Runtime execution providers for a qmed device name: CUDA first on "cuda" (one-line error
    when this onnxruntime build has none) and, with no device named, wherever it has one; the CPU
    provider always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device is None:  # as qmed.runtime.pick_device: CUDA when there is one
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    dev = torch.device(device)
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise QmedInputError(
                None,
                "--device cuda with --backend onnxruntime needs onnxruntime-gpu (this onnxruntime has "
                f"{', '.join(available)})",
            )
        return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtForward:
    """An ONNX Runtime session as a forward function on torch tensors: probability in, probability out."""

    def __init__(self, session, input_name: str):
        self.session = session
        self.input_name = input_name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([OUTPUT], {self.input_name: a})[0])


def load_onnx(path: str | Path, device: torch.device | str | None = None, whole_graph: bool = False):
    """-> (forward function, QmedConfig, metadata). `whole_graph`: run the file's full graph (the
    caller passes images as read, not normalised); by default the part after "normalized"."""
    onnx = require_extra("onnx", "onnx", "qmed predict --backend onnxruntime")
    ort = require_extra("onnxruntime", "onnx", "qmed predict --backend onnxruntime")
    from qmed.config import config_from_dict

    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".pt":
        raise QmedInputError(
            path,
            "is a torch model; --backend onnxruntime needs the .onnx file of "
            f"qmed export --model {path} --out model.onnx",
        )
    if not path.is_file():
        raise QmedInputError(path, "ONNX model does not exist")
    try:
        model = onnx.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise QmedInputError(
            path, f"cannot be read as an ONNX model ({type(exc).__name__}); the file may be truncated"
        ) from None
    meta = read_metadata(model, path)
    cfg = config_from_dict(meta["config"], path)
    start = INPUT
    normalized = meta["preprocessing"].get("normalized_tensor")
    if normalized and not whole_graph:
        model = onnx.utils.Extractor(model).extract_model([normalized], [OUTPUT])
        start = normalized
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no warnings about unused initialisers of the extracted part
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers_for(device))
    return OrtForward(session, start), cfg, meta
