"""Class probabilities of images: a model's softmax over batches, and `qmed classify predict`'s CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from qmed.classify.checkpoint import load_classifier
from qmed.classify.data import as_float, default_eval_split, load_images
from qmed.evaluate.classification import predictions
from qmed.io.files import write_text
from qmed.runtime import pick_device


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        out.append(torch.softmax(model(as_float(images[s : s + batch_size], device)).float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2), dtype=np.float32)


def write_predictions(
    path: Path, names: list[str], prob: np.ndarray, classes: list[str], threshold: float, y: np.ndarray | None = None
) -> None:
    """CSV: file, predicted class, one probability column per class (and the true class when `y` is given)."""
    pred = predictions(prob, threshold) if len(prob) else np.zeros(0, dtype=int)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "predicted"] + [f"prob_{c}" for c in classes] + (["true"] if y is not None else []))
    for i, n in enumerate(names):
        w.writerow(
            [n, classes[int(pred[i])]] + [f"{v:.6f}" for v in prob[i]] + ([classes[int(y[i])]] if y is not None else [])
        )
    write_text(path, buf.getvalue())


def predict_files(
    model_path, input_spec, out_csv: Path, threshold: float | None = None, device: str | None = None
) -> int:
    """Class probabilities for every image under `input_spec` (folder, image, or FILE.npz:SPLIT) -> CSV."""
    dev = pick_device(device)
    model, cfg, state = load_classifier(model_path, dev)
    x, names = load_images(input_spec, cfg.image_size, default_eval_split(input_spec))
    if x.shape[1] == 1 and state.get("channels", 1) == 3:
        x = x.expand(-1, 3, -1, -1)
    prob = predict_proba(model, x, dev)
    write_predictions(Path(out_csv), names, prob, state["classes"], cfg.threshold if threshold is None else threshold)
    return len(names)
