"""Training a classifier (SPEC Q1-Q3): `qmed classify train`.

Cross-entropy (optionally class-weighted, w_c = N / (K·n_c)), Adam with weight decay (the L2
term; the quantum branch at lr x pqc_lr_mult), seeded shuffling and augmentation (horizontal flips,
rotation ±rotate_deg, scale ±scale, shift ±translate, brightness/contrast ±intensity; vertical
flips off by default because ultrasound and X-ray images have a top), validation every epoch,
early stopping on validation AUC (patience in epochs), an epoch limit and a wall-clock budget
(minutes). Checkpoints are atomic (checkpoints/best.pt: the best validation AUC; last.pt: the
latest epoch). The best checkpoint is then evaluated on the validation set (RUN/eval/).

Run directory: config.json, train.log, metrics.csv (one row per epoch), checkpoints/, eval/
(`qmed.classify.evaluate`), summary.json.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qmed.classify.checkpoint import read_checkpoint, save_checkpoint
from qmed.classify.data import ClassData, as_float, imbalance_lines, load_split, synthetic_class, synthetic_folder
from qmed.classify.evaluate import evaluate_model
from qmed.classify.predict import predict_proba
from qmed.config import ClassifyConfig
from qmed.errors import QmedInputError
from qmed.evaluate.classification import classification_metrics
from qmed.io.files import input_paths, prepare_output_dir, write_json, write_text
from qmed.runtime import pick_device, seed_everything

log = logging.getLogger("qmed")


def augment_batch(x: torch.Tensor, cfg: ClassifyConfig, g: torch.Generator) -> torch.Tensor:
    """Random flips, rotation, scale, shift (one affine warp, reflection padding) and brightness/contrast."""
    n = x.shape[0]

    def u(*shape):  # uniform in [-1, 1] from the seeded generator (on CPU, moved to x's device)
        return (torch.rand(*shape, generator=g) * 2 - 1).to(x.device)

    if cfg.hflip:
        m = (torch.rand(n, generator=g) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    if cfg.vflip:
        m = (torch.rand(n, generator=g) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(-2), x)
    if cfg.rotate_deg > 0 or cfg.scale > 0 or cfg.translate > 0:
        ang = u(n) * math.radians(cfg.rotate_deg)
        s = 1.0 + u(n) * cfg.scale
        t = u(n, 2) * cfg.translate * 2.0  # affine_grid coordinates span [-1, 1]
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.intensity > 0:
        b = u(n)[:, None, None, None] * cfg.intensity
        c = 1.0 + u(n)[:, None, None, None] * cfg.intensity
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(0, 1)
    return x


def _param_groups(model, cfg: ClassifyConfig) -> list[dict]:
    q = [p for n, p in model.named_parameters() if n.startswith("pqc.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("pqc.")]
    groups = [{"params": rest, "lr": cfg.lr}]
    if q:
        groups.append({"params": q, "lr": cfg.lr * cfg.pqc_lr_mult})
    return groups


def _forward_timed(model, x: torch.Tensor, marks: dict[str, float]) -> torch.Tensor:
    """Forward pass that times the quantum layer: its forward directly; its backward as the time
    between the gradient hooks on its output and on its input (the autograd engine runs the
    layer's backward nodes back to back there: nothing else depends on them)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    h = model.features(x)
    sync()
    t0 = time.perf_counter()
    z = model.pqc(h)
    sync()
    marks["fwd"] = time.perf_counter() - t0
    if z.requires_grad and h.requires_grad:

        def mark(key):
            def hook(grad):
                sync()
                marks[key] = time.perf_counter()

            return hook

        z.register_hook(mark("out"))
        h.register_hook(mark("in"))
    return model.head(model.dropout(z))


def train_classifier(
    cfg: ClassifyConfig,
    train_spec,
    val_spec,
    out: str | Path,
    force: bool = False,
    device: str | None = None,
    data: tuple[ClassData, ClassData] | None = None,
) -> dict[str, Any]:
    """Train, keep the best validation AUC, evaluate it on the validation set; -> summary dict.

    `data`: pre-loaded (train, val) (the comparison reuses one split for every method)."""
    from qmed.models.classifier import build_classifier, describe

    out = Path(out)
    train, val = data if data is not None else load_split(train_spec, val_spec, cfg)
    if len(val) == 0:
        raise QmedInputError(None, "the validation set is empty")
    if len(train) < cfg.batch_size:
        log.warning(
            "%s: only %d training images for batch size %d; using batch size %d",
            train.source,
            len(train),
            cfg.batch_size,
            max(2, len(train)),
        )
    dev = pick_device(device)
    seed_everything(cfg.seed)
    model = build_classifier(cfg.model, len(train.classes), cfg.weights, cfg.pqc_config(), cfg.dropout).to(dev)
    prepare_output_dir(
        out,
        force,
        ("checkpoints",),
        "output directory",
        inputs=input_paths(train_spec, val_spec),
        verb="classify train",
    )
    handler = logging.FileHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for note in dict.fromkeys(train.warnings + val.warnings):  # said on the console while reading; now in the log too
        handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 0, "%s", (note,), None))
    log.addHandler(handler)
    try:
        return _fit(cfg, model, train, val, out, dev, describe(model))
    finally:
        log.removeHandler(handler)
        handler.close()


def _say(msg: str) -> None:
    """To stderr (when the CLI logs INFO) and to RUN/train.log."""
    log.info("%s", msg)


@dataclass
class _Clock:
    """Wall-clock budget of a run (`minutes` None: no budget)."""

    minutes: float | None
    start: float = field(default_factory=time.time)

    def seconds(self) -> float:
        return time.time() - self.start

    def over(self) -> bool:
        return self.minutes is not None and self.seconds() / 60.0 > self.minutes


@dataclass
class _StepTimes:
    """Optimizer steps so far, their total time, and the quantum layer's share of it."""

    steps: int = 0
    step_seconds: float = 0.0
    pqc_seconds: float = 0.0


@dataclass
class _Best:
    """Early stopping on validation AUC (ties: lower validation loss)."""

    auc: float = -math.inf
    loss: float = math.inf
    epoch: int = 0
    since: int = 0  # epochs without improvement

    def update(self, auc: float, loss: float, epoch: int) -> bool:
        if auc > self.auc or (auc == self.auc and loss < self.loss):
            self.auc, self.loss, self.epoch, self.since = auc, loss, epoch, 0
            return True
        self.since += 1
        return False


def _fit(cfg: ClassifyConfig, model, train: ClassData, val: ClassData, out: Path, dev, model_info) -> dict[str, Any]:
    _start_run(cfg, train, val, out, dev, model_info)
    cw = _class_weights(cfg, train, dev)
    opt = torch.optim.Adam(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    bs = max(2, min(cfg.batch_size, len(train)))
    clock, times, best, rows = _Clock(cfg.minutes), _StepTimes(), _Best(), []
    stop_reason = f"epochs={cfg.epochs} reached"
    for epoch in range(1, cfg.epochs + 1):
        train_loss, over_budget = _train_epoch(model, train, cfg, opt, cw, g, bs, dev, times, clock)
        row, m = _validate(model, val, cfg.threshold, dev)
        row = {"epoch": epoch, "steps": times.steps, "train_loss": train_loss, **row, "seconds": clock.seconds()}
        rows.append(row)
        auc = m["auc"] if math.isfinite(m["auc"]) else -row["val_loss"]  # no AUC (one val class): fall back to loss
        improved = best.update(auc, row["val_loss"], epoch)
        _save_epoch(out, model, cfg, train, rows, improved)
        _say(
            f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  val_auc {m['auc']:.4f}  "
            f"val_acc {m['accuracy']:.4f}"
            + (f"  alpha {row['alpha']:+.4f}" if row["alpha"] is not None else "")
            + f"  {row['seconds']:.0f}s"
            + (" *" if improved else "")
        )
        if over_budget or clock.over():
            stop_reason = f"time budget {cfg.minutes} min reached after epoch {epoch}"
            break
        if best.since >= cfg.patience:
            stop_reason = f"early stop: no better val AUC for {cfg.patience} epochs (best epoch {best.epoch})"
            break
    train_seconds = clock.seconds()
    _say(stop_reason)
    model.load_state_dict(read_checkpoint(out / "checkpoints" / "best.pt")["model"])
    model.to(dev)
    ev = evaluate_model(
        model, val, cfg.threshold, out / "eval", n_boot=cfg.n_boot, seed=cfg.seed, device=dev, title=cfg.method
    )
    summary = {
        "method": cfg.method,
        "model": model_info,
        "classes": train.classes,
        "positive": cfg.positive or (train.classes[1] if train.binary else None),
        "train": {"source": train.source, "n": len(train), "counts": dict(zip(train.classes, train.counts()))},
        "val": {"source": val.source, "n": len(val), "counts": dict(zip(val.classes, val.counts()))},
        "synthetic": {
            "source": str(synthetic_folder(cfg.synthetic)),
            "n": sum(n.startswith("synthetic:") for n in train.names),
            "class": synthetic_class(cfg, train.source_classes),
        }
        if cfg.synthetic
        else None,
        "best_epoch": best.epoch,
        "epochs_run": len(rows),
        "steps": times.steps,
        "train_seconds": train_seconds,
        "mean_step_seconds": times.step_seconds / max(1, times.steps),
        "stop_reason": stop_reason,
        "profile": _profile(model, times, bs),
        "alpha": _alpha(model),
        "val_metrics": ev["metrics"],
        "figures": ev["figures"],
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
    }
    write_json(out / "summary.json", summary)
    return summary


def _start_run(cfg: ClassifyConfig, train: ClassData, val: ClassData, out: Path, dev, model_info) -> None:
    """config.json, and the data and the model in the log."""
    write_json(
        out / "config.json",
        {
            **cfg.model_dump(),
            "train": str(train.source),
            "val": str(val.source),
            "classes": train.classes,
            "source_classes": train.source_classes,
        },
    )
    for line in imbalance_lines(train, "train") + imbalance_lines(val, "val"):
        _say(line)
    _say(
        f"model {cfg.method}: {model_info['parameters']:,} parameters"
        + (
            f" (quantum layer {model_info['pqc_parameters']:,}, circuit {model_info['pqc_circuit_parameters']})"
            if cfg.pqc
            else ""
        )
        + f"; weights {cfg.weights}; device {dev}"
    )


def _class_weights(cfg: ClassifyConfig, train: ClassData, dev) -> torch.Tensor | None:
    """Inverse-frequency weights w_c = N / (K·n_c) when cfg.class_weights, else None (plain cross-entropy)."""
    if not cfg.class_weights:
        return None
    counts = np.asarray(train.counts(), dtype=np.float64)
    cw = torch.tensor(len(train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32, device=dev)
    _say(f"class weights: {', '.join(f'{c} {w:.2f}' for c, w in zip(train.classes, cw.tolist()))}")
    return cw


def _train_epoch(
    model,
    train: ClassData,
    cfg: ClassifyConfig,
    opt,
    cw,
    g: torch.Generator,
    bs: int,
    dev,
    times: _StepTimes,
    clock: _Clock,
) -> tuple[float, bool]:
    """One pass over shuffled full batches (a batch of 1 breaks batch norm) -> (mean loss, over the budget?)."""
    model.train()
    perm = torch.randperm(len(train), generator=g)
    tot, seen = 0.0, 0
    for b in range(max(1, len(perm) // bs)):
        idx = perm[b * bs : (b + 1) * bs]
        t0 = time.perf_counter()
        x = as_float(train.images[idx], dev)
        yb = train.labels[idx].to(dev)
        if cfg.augment:
            x = augment_batch(x, cfg, g)
        marks: dict[str, float] = {}
        logits = _forward_timed(model, x, marks) if model.pqc is not None else model(x)
        loss = F.cross_entropy(logits, yb, weight=cw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.step_seconds += time.perf_counter() - t0
        times.pqc_seconds += marks.get("fwd", 0.0) + (
            marks["in"] - marks["out"] if "in" in marks and "out" in marks else 0.0
        )
        times.steps += 1
        tot += float(loss.detach()) * len(idx)
        seen += len(idx)
        if clock.over():
            return tot / max(1, seen), True
    return tot / max(1, seen), False


def _validate(model, val: ClassData, threshold: float, dev) -> tuple[dict[str, Any], dict[str, float]]:
    """-> (the epoch's validation columns of metrics.csv, the validation metrics)."""
    prob = predict_proba(model, val.images, dev)
    yv = val.labels.numpy()
    vloss = float(F.nll_loss(torch.log(torch.from_numpy(prob).clamp_min(1e-12)), torch.from_numpy(yv)))
    m = classification_metrics(yv, prob, threshold)
    row = {
        "val_loss": vloss,
        "val_auc": m["auc"],
        "val_accuracy": m["accuracy"],
        "val_balanced_accuracy": m["balanced_accuracy"],
        "alpha": _alpha(model),
    }
    return row, m


def _save_epoch(out: Path, model, cfg: ClassifyConfig, train: ClassData, rows: list[dict], improved: bool) -> None:
    """checkpoints/best.pt when the epoch improved, checkpoints/last.pt and metrics.csv always."""
    extra = {"epoch": rows[-1]["epoch"], "val_auc": rows[-1]["val_auc"]}
    if improved:
        save_checkpoint(out / "checkpoints" / "best.pt", model, cfg, train, extra)
    save_checkpoint(out / "checkpoints" / "last.pt", model, cfg, train, extra)
    _write_rows(out / "metrics.csv", rows)


def _alpha(model) -> float | None:
    """The quantum layer's residual weight α (None without the layer)."""
    return float(model.pqc.alpha.detach()) if model.pqc is not None else None


def _profile(model, times: _StepTimes, bs: int) -> dict[str, Any]:
    prof: dict[str, Any] = {
        "step_ms": 1000 * times.step_seconds / max(1, times.steps),
        "batch_size": bs,
        "what": "mean training step (batch to device, augmentation, forward, backward, Adam) over the run",
    }
    if model.pqc is not None:
        prof.update(
            pqc_ms=1000 * times.pqc_seconds / max(1, times.steps),
            pqc_share=times.pqc_seconds / max(1e-12, times.step_seconds),
            pqc_what="quantum layer forward + backward per step, measured during training (backward: between gradient hooks on its output and input)",
        )
    return prof


def _write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())
