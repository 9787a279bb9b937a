"""Image classification from few, imbalanced labels (SPEC Q2/Q3): data, training, evaluation, prediction.

Data sources (`spec` strings):
- a class-folder dataset ``ROOT/CLASS/*.png`` (any image type `qmed.io.images` reads; sub-folders of a
  class are searched too). Classes are the folder names, sorted.
- a MedMNIST-style ``.npz`` with ``{split}_images`` (N, H, W) or (N, H, W, 3) uint8 and
  ``{split}_labels`` (N, 1) integer arrays. Choose the split with ``FILE.npz:SPLIT``; without one,
  training reads ``train``, validation ``val``, evaluation and prediction ``test`` when present, else ``val``.
  Class names are the label values as strings ("0", "1", ...).

Binary tasks: ``positive="malignant"`` makes the labels positive-vs-rest (class names
``["rest", "malignant"]``). A dataset with exactly two classes is binary with the second (sorted)
class positive. Otherwise the task is multi-class.

Images are read with `qmed.io.images.read_image` (float in [0, 1]), resized (stretched, no aspect
ratio kept) to ``image_size`` x ``image_size`` (INTER_AREA when shrinking, bilinear when
enlarging: 28x28 MedMNIST at the default 64 px is bilinear upsampling), and held in memory as uint8
(N, C, S, S); gray images stay one channel (the model repeats it to three) unless the set mixes gray
and colour, in which case all become RGB.

Training: cross-entropy (optionally class-weighted, w_c = N / (K·n_c)), Adam with weight decay
(the L2 term), seeded shuffling and augmentation (horizontal flips, rotation ±rotate_deg, scale
±scale, shift ±translate, brightness/contrast ±intensity; vertical flips off by default because
ultrasound and X-ray images have a top), validation every epoch, early stopping on validation AUC
(patience in epochs), an epoch limit and a wall-clock budget (minutes). Checkpoints are atomic
(checkpoints/best.pt: the best validation AUC; last.pt: the latest epoch).

Synthetic images (``synthetic=DIR``, e.g. the output of ``qmed synthesize``): read like a folder to
predict, labelled as ``synthetic_class`` (default: the positive class) and appended to the training
set after the train/validation split, so validation (and evaluation) never sees them.

Metrics (binary; threshold on the positive class's probability, default 0.5): accuracy, balanced
accuracy, ROC AUC (sklearn), F1, sensitivity (recall of positives), specificity (recall of
negatives). Multi-class: accuracy, balanced accuracy (= macro recall = sensitivity), macro one-vs-rest
AUC, macro F1, macro specificity; predictions are the arg-max. Each has a 95 % percentile bootstrap
CI over cases (1000 resamples, seeded); resamples where a metric is undefined (e.g. AUC with one
class) are left out and counted.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qmed.errors import QmedInputError
from qmed.evaluate.stats import bootstrap_indices, percentile_interval
from qmed.io.figures import pyplot, save_figure
from qmed.io.files import atomic_path, check_output, prepare_output_dir, write_json, write_text
from qmed.io.images import IMAGE_EXTENSIONS, is_image_file, read_image
from qmed.runtime import pick_device, seed_everything

log = logging.getLogger("qmed")

CKPT_FORMAT = "qmed-classifier-1"
METRICS = ("auc", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity")
NEGATIVE_NAME = "rest"


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class ClassData:
    images: torch.Tensor  # (N, C, S, S) uint8
    labels: torch.Tensor  # (N,) int64 in 0..K-1 (task labels)
    classes: list[str]  # task class names (binary: ["rest", POSITIVE] or the two classes)
    source_classes: list[str]  # classes of the source (folders or npz label values)
    names: list[str]  # file paths or "FILE.npz:split[i]"
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, idx: Sequence[int]) -> "ClassData":
        idx_t = torch.as_tensor(list(idx), dtype=torch.long)
        return ClassData(self.images[idx_t], self.labels[idx_t], self.classes, self.source_classes,
                         [self.names[i] for i in idx], self.source)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def counts(self) -> list[int]:
        return np.bincount(self.labels.numpy(), minlength=len(self.classes)).tolist()


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """"FILE.npz:val" -> (FILE.npz, "val"); anything else -> (path, None)."""
    s = str(spec)
    if ".npz:" in s:
        head, split = s.rsplit(":", 1)
        return Path(head), split
    return Path(s), None


def class_folders(root: Path) -> dict[str, list[Path]]:
    """{class: sorted image files} of a class-folder dataset; every problem is a QmedInputError."""
    if not root.exists():
        raise QmedInputError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise QmedInputError(root, "is not a folder (give ROOT with one sub-folder per class, or a .npz file)")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        loose = [p for p in root.iterdir() if is_image_file(p)]
        hint = f" (it holds {len(loose)} images directly; put them into one sub-folder per class)" if loose else ""
        raise QmedInputError(root, f"has no class sub-folders{hint}")
    out: dict[str, list[Path]] = {}
    for d in subdirs:
        files = sorted(p for p in d.rglob("*") if is_image_file(p))
        if not files:
            raise QmedInputError(d, f"class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        out[d.name] = files
    if len(out) < 2:
        raise QmedInputError(root, f"needs at least 2 class folders, found {len(out)} ({', '.join(out)})")
    return out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if (h > size and w > size) else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
        if img.ndim == 2:
            img = img[..., None]
    return img


def _stack(imgs: list[np.ndarray]) -> torch.Tensor:
    """HxWxC float [0,1] images of one size -> (N, C, S, S) uint8; gray to RGB if the set mixes both."""
    c = max(im.shape[2] for im in imgs)
    arr = np.empty((len(imgs), c, imgs[0].shape[0], imgs[0].shape[1]), dtype=np.uint8)
    for i, im in enumerate(imgs):
        if im.shape[2] != c:
            im = np.repeat(im, c, axis=2)
        arr[i] = np.clip(np.rint(im * 255.0), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(arr)


def _task_labels(source_labels: list[str], source_classes: list[str], positive: str | None) -> tuple[list[int], list[str]]:
    if positive is not None:
        return [int(s == positive) for s in source_labels], [NEGATIVE_NAME, positive]
    index = {c: i for i, c in enumerate(source_classes)}
    return [index[s] for s in source_labels], list(source_classes)


def load_dataset(spec: str | Path, image_size: int, positive: str | None = None, source_classes: list[str] | None = None,
                 default_split: str = "train") -> ClassData:
    """Read a class-folder dataset or an .npz split, resized to image_size.

    `source_classes`: the training set's classes (at evaluation); a class outside them is an error.
    `positive`: a source class to make the task positive-vs-rest."""
    path, split = split_spec(spec)
    if path.suffix.lower() == ".npz":
        src_labels, imgs, names, found = _load_npz(path, split or default_split, image_size)
        where = Path(f"{path}:{split or default_split}")
    else:
        if split is not None:
            raise QmedInputError(path, "a ':SPLIT' suffix applies only to .npz files")
        folders = class_folders(path)
        found = list(folders)
        src_labels, imgs, names = [], [], []
        for cls, files in folders.items():
            for f in files:
                imgs.append(_resize(read_image(f), image_size))
                src_labels.append(cls)
                names.append(str(f))
        where = path
    if source_classes is None:
        source_classes = found
    else:
        unknown = [c for c in found if c not in source_classes]
        if unknown:
            raise QmedInputError(where, f"has class(es) {', '.join(unknown)} that the model was not trained on (its classes: {', '.join(source_classes)})")
    if positive is not None and positive not in source_classes:
        raise QmedInputError(where, f"positive class {positive!r} not found; classes are: {', '.join(source_classes)}")
    if positive is None and len(source_classes) == 2:
        positive_note = source_classes[1]
        log.info("%s: two classes, treating %r as positive", where, positive_note)
    labels, classes = _task_labels(src_labels, source_classes, positive)
    data = ClassData(_stack(imgs), torch.tensor(labels, dtype=torch.long), classes, list(source_classes), names, str(where))
    return data


def _load_npz(path: Path, split: str, image_size: int) -> tuple[list[str], list[np.ndarray], list[str], list[str]]:
    if not path.is_file():
        raise QmedInputError(path, "file does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except Exception as exc:
        raise QmedInputError(path, f"cannot be read as an .npz archive ({type(exc).__name__})") from None
    ik, lk = f"{split}_images", f"{split}_labels"
    if ik not in keys or lk not in keys:
        splits = sorted(k[: -len("_images")] for k in keys if k.endswith("_images") and f"{k[:-7]}_labels" in keys)
        raise QmedInputError(path, f"has no split {split!r} ({ik} + {lk}); splits found: {', '.join(splits) or 'none'}")
    x, y = z[ik], z[lk]
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise QmedInputError(path, f"{ik} has shape {x.shape}; expected (N, H, W) or (N, H, W, 1|3)")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise QmedInputError(path, f"{lk} has shape {z[lk].shape}; only single-label tasks (N,) or (N, 1) are supported")
    if len(y) != len(x) or len(x) == 0:
        raise QmedInputError(path, f"{ik} and {lk} hold {len(x)} and {len(y)} entries")
    if not np.issubdtype(y.dtype, np.integer):
        raise QmedInputError(path, f"{lk} must hold integer class labels, not {y.dtype}")
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / 255.0
    else:
        xf = x.astype(np.float32)
        lo, hi = float(xf.min()), float(xf.max())
        if lo < 0 or hi > 1:
            xf = (xf - lo) / (hi - lo) if hi > lo else np.zeros_like(xf)
    if xf.ndim == 3:
        xf = xf[..., None]
    imgs = [_resize(im, image_size) for im in xf]
    found = [str(v) for v in sorted(np.unique(y).tolist())]
    if len(found) < 2 and split == "train":
        raise QmedInputError(path, f"{lk} holds a single class ({found[0]}); a classifier needs at least 2")
    return [str(int(v)) for v in y], imgs, [f"{path.name}:{split}[{i}]" for i in range(len(y))], found


def imbalance_lines(data: ClassData, title: str) -> list[str]:
    n = len(data)
    counts = data.counts()
    parts = [f"{c} {k} ({100.0 * k / max(1, n):.1f} %)" for c, k in zip(data.classes, counts)]
    lo, hi = min(counts), max(counts)
    ratio = f"{hi / lo:.2f}:1" if lo > 0 else "inf (a class is missing)"
    return [f"{title}: {n} images; {', '.join(parts)}; majority:minority {ratio}"]


def describe_dataset(spec: str | Path, positive: str | None = None) -> dict[str, Any]:
    """Class counts of a dataset without decoding the images (folders) -> dict."""
    path, split = split_spec(spec)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise QmedInputError(path, "file does not exist")
        z = np.load(path, allow_pickle=False)
        out: dict[str, Any] = {"source": str(path), "splits": {}}
        for k in sorted(z.files):
            if k.endswith("_labels") and (split is None or k == f"{split}_labels"):
                y = np.asarray(z[k]).reshape(len(z[k]), -1)[:, 0]
                vals, cnt = np.unique(y, return_counts=True)
                out["splits"][k[:-7]] = {"counts": {str(int(v)): int(c) for v, c in zip(vals, cnt)},
                                         "image_shape": list(z[k[:-7] + "_images"].shape[1:])}
        if not out["splits"]:
            raise QmedInputError(path, "holds no SPLIT_labels arrays")
        classes = sorted({c for s in out["splits"].values() for c in s["counts"]}, key=lambda v: int(v))
    else:
        folders = class_folders(path)
        out = {"source": str(path), "splits": {"all": {"counts": {c: len(f) for c, f in folders.items()}}}}
        classes = list(folders)
    if positive is not None and positive not in classes:
        raise QmedInputError(path, f"positive class {positive!r} not found; classes are: {', '.join(classes)}")
    for s in out["splits"].values():
        c = s["counts"]
        n = sum(c.values())
        s["n"] = n
        if positive is not None:
            k = c.get(positive, 0)
            s["positive"] = {"class": positive, "n": k, "fraction": k / max(1, n)}
        s["majority_minority_ratio"] = max(c.values()) / min(c.values()) if min(c.values()) > 0 else math.inf
    out["classes"] = classes
    return out


# --------------------------------------------------------------------------------------------
# Config


def check_run_limits(cfg: Any, min_batch: int = 2, why: str = "batch norm") -> None:
    """Checks every training verb shares: cfg.image_size, batch_size, epochs, minutes (None = no budget)."""
    if cfg.image_size < 16:
        raise QmedInputError(None, f"image_size must be at least 16 px, got {cfg.image_size}")
    if cfg.batch_size < min_batch:
        raise QmedInputError(None, f"batch_size must be at least {min_batch} ({why}), got {cfg.batch_size}")
    if cfg.epochs < 1:
        raise QmedInputError(None, f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.minutes is not None and cfg.minutes <= 0:
        raise QmedInputError(None, f"minutes must be positive, got {cfg.minutes}")


@dataclass
class ClassifyConfig:
    model: str = "mobilenet_v2"
    weights: str | None = "imagenet"  # imagenet | a local .pth | offline-mobilenet | None
    pqc: bool = True
    qubits: int = 4
    layers: int = 2
    entangler: str = "strong"
    rotation: str = "Y"
    qdevice: str = "default.qubit"
    diff_method: str = "backprop"
    alpha_init: float = 0.01
    pqc_lr_mult: float = 10.0  # the quantum branch (W_q, circuit, W_r, α) learns at lr × this
    positive: str | None = None
    image_size: int = 128
    batch_size: int = 32
    epochs: int = 30
    minutes: float | None = None
    lr: float = 3e-4
    weight_decay: float = 1e-4  # Adam's L2 term
    dropout: float = 0.2
    patience: int = 6  # epochs without a better validation AUC before stopping
    class_weights: bool = False
    augment: bool = True
    hflip: bool = True
    vflip: bool = False
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    intensity: float = 0.1
    seed: int = 0
    val_fraction: float = 0.2  # only without --val: a stratified seeded split of --data
    synthetic: str | None = None  # images added to the training set only (e.g. qmed synthesize OUT)
    synthetic_class: str | None = None  # their class (default: the positive class)
    threshold: float = 0.5
    n_boot: int = 1000

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassifyConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise QmedInputError(None, f"unknown classify setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def pqc_dict(self) -> dict[str, Any] | None:
        if not self.pqc:
            return None
        return {"n_qubits": self.qubits, "n_layers": self.layers, "entangler": self.entangler, "rotation": self.rotation,
                "device": self.qdevice, "diff_method": self.diff_method, "alpha_init": self.alpha_init}

    def validate(self) -> None:
        check_run_limits(self)
        if not 0.0 < self.threshold < 1.0:
            raise QmedInputError(None, f"threshold must lie in (0, 1), got {self.threshold}")

    @property
    def method(self) -> str:
        return f"{self.model}+pqc(Q={self.qubits},L={self.layers},{self.entangler})" if self.pqc else self.model


# --------------------------------------------------------------------------------------------
# Metrics


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def auc_rows(pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each row (Mann-Whitney U with average ranks for ties; equals sklearn's
    roc_auc_score). pos: (B, n) bool, score: (B, n). NaN for a row with one class only."""
    from scipy.stats import rankdata

    r = rankdata(score, axis=1)
    n_pos = pos.sum(axis=1).astype(np.float64)
    n_neg = pos.shape[1] - n_pos
    u = (r * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return _div(u, n_pos * n_neg)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(a, axis=axis)


def metric_rows(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Metrics of B sets at once: y (B, n) int, prob (B, n, K) -> {metric: (B,)}; NaN where undefined."""
    k = prob.shape[2]
    pred = (prob[..., 1] >= threshold).astype(np.int64) if k == 2 else prob.argmax(axis=2)
    out = {"accuracy": _div((pred == y).sum(axis=1), np.full(len(y), y.shape[1]))}
    if k == 2:
        p, t = pred == 1, y == 1
        tp, fp = (p & t).sum(1), (p & ~t).sum(1)
        fn, tn = (~p & t).sum(1), (~p & ~t).sum(1)
        sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
        out.update(sensitivity=sens, specificity=spec, balanced_accuracy=(sens + spec) / 2, f1=_div(2 * tp, 2 * tp + fp + fn),
                   auc=auc_rows(t, prob[..., 1]))
        return out
    rec, spc, f1s, aucs = [], [], [], []
    for c in range(k):
        p, t = pred == c, y == c
        tp, fp = (p & t).sum(1), (p & ~t).sum(1)
        fn, tn = (~p & t).sum(1), (~p & ~t).sum(1)
        rec.append(_div(tp, tp + fn))
        spc.append(_div(tn, tn + fp))
        f1s.append(_div(2 * tp, 2 * tp + fp + fn))
        aucs.append(auc_rows(t, prob[..., c]))
    rec_m = _nanmean(np.stack(rec, 1), 1)
    # macro one-vs-rest AUC is defined only when every class occurs (as in sklearn)
    out.update(sensitivity=rec_m, balanced_accuracy=rec_m, specificity=_nanmean(np.stack(spc, 1), 1),
               f1=_nanmean(np.stack(f1s, 1), 1), auc=np.stack(aucs, 1).mean(axis=1))
    return out


def predictions(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    if prob.shape[1] == 2:
        return (prob[:, 1] >= threshold).astype(np.int64)
    return prob.argmax(axis=1)


def classification_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Point metrics of labels `y` (N,) and class probabilities `prob` (N, K); NaN where undefined.
    AUC is sklearn's roc_auc_score (binary: on the positive class's probability; multi-class:
    one-vs-rest, macro), NaN when a class is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    rows = metric_rows(y[None], prob[None], threshold)
    out = {m: float(v[0]) for m, v in rows.items()}
    k = prob.shape[1]
    if len(np.unique(y)) == k and len(y) > 0:
        out["auc"] = float(roc_auc_score(y, prob[:, 1]) if k == 2 else
                           roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(k))))
    else:
        out["auc"] = float("nan")
    return {m: out[m] for m in METRICS}


def bootstrap_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                      ci: float = 0.95) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """-> ({metric: {value, ci_low, ci_high, n_boot}}, {metric: bootstrap values}).

    Percentile bootstrap over cases: `n_boot` resamples with replacement from a generator seeded
    with `seed`; resamples where a metric is undefined (e.g. AUC of a resample with one class)
    are dropped, and n_boot counts the rest."""
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    point = classification_metrics(y, prob, threshold)
    n = len(y)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for idx in bootstrap_indices(n, n_boot if n > 1 else 0, seed, max_elements=4_000_000 // max(1, prob.shape[1])):
        for m, v in metric_rows(y[idx], prob[idx], threshold).items():
            parts[m].append(v)
    summary, arrays = {}, {}
    for m in METRICS:
        b = np.concatenate(parts[m]) if parts[m] else np.zeros(0)
        arrays[m] = b[np.isfinite(b)]
        lo, hi = percentile_interval(b, ci)
        summary[m] = {"value": point[m], "ci_low": lo, "ci_high": hi, "n_boot": int(arrays[m].size)}
    return summary, arrays


# --------------------------------------------------------------------------------------------
# Figures


def write_figures(y: np.ndarray, prob: np.ndarray, classes: list[str], boots: dict[str, np.ndarray], out: Path,
                  threshold: float = 0.5, title: str = "") -> dict[str, str]:
    """ROC curve, confusion matrix and bootstrap violin plot as PNGs under `out`."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    k = prob.shape[1]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    targets = [(1, classes[1])] if k == 2 else list(enumerate(classes))
    for c, name in targets:
        yc = (y == c).astype(int)
        if 0 < yc.sum() < len(yc):
            fpr, tpr, _ = roc_curve(yc, prob[:, c])
            from sklearn.metrics import auc as _auc

            ax.plot(fpr, tpr, label=f"{name} (AUC {_auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity (FPR)")
    ax.set_ylabel("sensitivity (TPR)")
    ax.set_title(f"ROC {title}".strip())
    ax.legend(loc="lower right", fontsize=8)
    paths["roc"] = str(out / "roc.png")
    save_figure(fig, out / "roc.png", dpi=110, tight=True)

    pred = predictions(prob, threshold)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y, pred):
        cm[t, p] += 1
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), classes, rotation=30)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion {title}".strip())
    paths["confusion"] = str(out / "confusion.png")
    save_figure(fig, out / "confusion.png", dpi=110, tight=True)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [m for m in METRICS if boots.get(m) is not None and len(boots[m]) > 1]
    if names:
        ax.violinplot([boots[m] for m in names], showmedians=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"bootstrap distributions ({max((len(boots[m]) for m in names), default=0)} resamples) {title}".strip())
    paths["violin"] = str(out / "bootstrap_violin.png")
    save_figure(fig, out / "bootstrap_violin.png", dpi=110, tight=True)
    return paths


# --------------------------------------------------------------------------------------------
# Training




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


def _as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        out.append(torch.softmax(model(_as_float(images[s : s + batch_size], device)).float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2), dtype=np.float32)


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: ClassifyConfig, data: ClassData, extra: dict[str, Any]) -> None:
    state = {"format": CKPT_FORMAT, "config": asdict(cfg), "classes": data.classes, "source_classes": data.source_classes,
             "channels": int(data.images.shape[1]), "model": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        va.extend(idx[:k].tolist())
        tr.extend(idx[k:].tolist())
    return sorted(tr), sorted(va)


def load_split(train_spec, val_spec, cfg: ClassifyConfig) -> tuple[ClassData, ClassData]:
    """(train, val); synthetic images (cfg.synthetic) join the training set after the split, never val."""
    train = load_dataset(train_spec, cfg.image_size, cfg.positive, default_split="train")
    if val_spec is None:
        tr, va = stratified_split(train.labels.numpy(), cfg.val_fraction, cfg.seed)
        log.warning("no --val given: validating on %d of %d images split off %s (stratified, seed %d)", len(va), len(train), train.source, cfg.seed)
        return add_synthetic(train.subset(tr), cfg), train.subset(va)
    val = load_dataset(val_spec, cfg.image_size, cfg.positive, source_classes=train.source_classes, default_split="val")
    if train.images.shape[1] != val.images.shape[1]:  # gray train, RGB val (or back): use RGB for both
        train.images = train.images.expand(-1, 3, -1, -1).contiguous() if train.images.shape[1] == 1 else train.images
        val.images = val.images.expand(-1, 3, -1, -1).contiguous() if val.images.shape[1] == 1 else val.images
    return add_synthetic(train, cfg), val


def synthetic_folder(spec: str | Path) -> Path:
    """A folder of images, or the output folder of `qmed synthesize` (its images/ sub-folder)."""
    p = Path(spec)
    return p / "images" if (p / "images").is_dir() else p


def synthetic_class(cfg: ClassifyConfig, source_classes: list[str]) -> str:
    cls = cfg.synthetic_class or cfg.positive or (source_classes[1] if len(source_classes) == 2 else None)
    if cls is None:
        raise QmedInputError(None, f"--synthetic needs --synthetic-class (or --positive) on a {len(source_classes)}-class dataset")
    if cls not in source_classes:
        raise QmedInputError(None, f"synthetic class {cls!r} not found; classes are: {', '.join(source_classes)}")
    return cls


def add_synthetic(train: ClassData, cfg: ClassifyConfig) -> ClassData:
    """The training set plus cfg.synthetic's images, labelled as cfg.synthetic_class (default: the
    positive class; a two-class dataset: its second class). Channels follow the training set."""
    if not cfg.synthetic:
        return train
    cls = synthetic_class(cfg, train.source_classes)
    folder = synthetic_folder(cfg.synthetic)
    images, names = load_images(folder, cfg.image_size)
    c = train.images.shape[1]
    if images.shape[1] != c:  # gray synthetic into RGB training data, or back
        images = images.expand(-1, 3, -1, -1) if c == 3 else images.float().mean(1, keepdim=True).round().to(torch.uint8)
    label = _task_labels([cls], train.source_classes, cfg.positive)[0][0]
    log.info("training set: + %d synthetic %s images from %s (never in validation)", len(names), cls, folder)
    return ClassData(torch.cat([train.images, images.contiguous()]), torch.cat([train.labels, torch.full((len(names),), label)]),
                     train.classes, train.source_classes, train.names + [f"synthetic:{n}" for n in names], train.source)


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


def train_classifier(cfg: ClassifyConfig, train_spec, val_spec, out: str | Path, force: bool = False, device: str | None = None,
                     data: tuple[ClassData, ClassData] | None = None) -> dict[str, Any]:
    """Train, keep the best validation AUC, evaluate it on the validation set; -> summary dict.

    `data`: pre-loaded (train, val) (the comparison reuses one split for every method)."""
    from qmed.models.classifier import build_classifier, describe

    cfg.validate()
    out = Path(out)
    train, val = data if data is not None else load_split(train_spec, val_spec, cfg)
    if len(val) == 0:
        raise QmedInputError(None, "the validation set is empty")
    if len(train) < cfg.batch_size:
        log.warning("%s: only %d training images for batch size %d; using batch size %d", train.source, len(train), cfg.batch_size, max(2, len(train)))
    dev = pick_device(device)
    seed_everything(cfg.seed)
    model = build_classifier(cfg.model, len(train.classes), cfg.weights, cfg.pqc_dict(), cfg.dropout).to(dev)
    prepare_output_dir(out, force, ("checkpoints",), "output directory")
    handler = logging.FileHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        return _fit(cfg, model, train, val, out, dev, describe(model))
    finally:
        log.removeHandler(handler)
        handler.close()


def _fit(cfg, model, train: ClassData, val: ClassData, out: Path, dev, model_info) -> dict[str, Any]:
    def say(msg: str) -> None:  # to stderr (when the CLI logs INFO) and to RUN/train.log
        log.info("%s", msg)

    write_json(out / "config.json", {**asdict(cfg), "train": str(train.source), "val": str(val.source),
                                     "classes": train.classes, "source_classes": train.source_classes})
    for line in imbalance_lines(train, "train") + imbalance_lines(val, "val"):
        say(line)
    say(f"model {cfg.method}: {model_info['parameters']:,} parameters" +
        (f" (quantum layer {model_info['pqc_parameters']:,}, circuit {model_info['pqc_circuit_parameters']})" if cfg.pqc else "") +
        f"; weights {cfg.weights}; device {dev}")
    counts = np.asarray(train.counts(), dtype=np.float64)
    cw = None
    if cfg.class_weights:
        cw = torch.tensor(len(train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32, device=dev)
        say(f"class weights: {', '.join(f'{c} {w:.2f}' for c, w in zip(train.classes, cw.tolist()))}")
    opt = torch.optim.Adam(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    bs = max(2, min(cfg.batch_size, len(train)))
    yv = val.labels.numpy()
    start = time.time()
    rows: list[dict[str, Any]] = []
    best_auc, best_loss, best_epoch, since_best, steps, step_seconds, pqc_seconds = -math.inf, math.inf, 0, 0, 0, 0.0, 0.0
    stop_reason = f"epochs={cfg.epochs} reached"
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        n_full = len(perm) // bs  # drop the last partial batch (a batch of 1 breaks batch norm)
        tot, seen, over_budget = 0.0, 0, False
        for b in range(max(1, n_full)):
            idx = perm[b * bs : (b + 1) * bs]
            t0 = time.perf_counter()
            x = _as_float(train.images[idx], dev)
            yb = train.labels[idx].to(dev)
            if cfg.augment:
                x = augment_batch(x, cfg, g)
            marks: dict[str, float] = {}
            logits = _forward_timed(model, x, marks) if model.pqc is not None else model(x)
            loss = F.cross_entropy(logits, yb, weight=cw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_seconds += time.perf_counter() - t0
            pqc_seconds += marks.get("fwd", 0.0) + (marks["in"] - marks["out"] if "in" in marks and "out" in marks else 0.0)
            steps += 1
            tot += float(loss.detach()) * len(idx)
            seen += len(idx)
            if cfg.minutes is not None and (time.time() - start) / 60.0 > cfg.minutes:
                over_budget = True
                break
        prob = predict_proba(model, val.images, dev)
        vloss = float(F.nll_loss(torch.log(torch.from_numpy(prob).clamp_min(1e-12)), torch.from_numpy(yv)))
        m = classification_metrics(yv, prob, cfg.threshold)
        alpha = float(model.pqc.alpha.detach()) if model.pqc is not None else None
        row = {"epoch": epoch, "steps": steps, "train_loss": tot / max(1, seen), "val_loss": vloss, "val_auc": m["auc"],
               "val_accuracy": m["accuracy"], "val_balanced_accuracy": m["balanced_accuracy"], "alpha": alpha,
               "seconds": time.time() - start}
        rows.append(row)
        auc = m["auc"] if math.isfinite(m["auc"]) else -vloss  # no AUC (one val class): fall back to loss
        improved = auc > best_auc or (auc == best_auc and vloss < best_loss)
        mark = ""
        if improved:
            best_auc, best_loss, best_epoch, since_best = auc, vloss, epoch, 0
            save_checkpoint(out / "checkpoints" / "best.pt", model, cfg, train, {"epoch": epoch, "val_auc": m["auc"]})
            mark = " *"
        else:
            since_best += 1
        save_checkpoint(out / "checkpoints" / "last.pt", model, cfg, train, {"epoch": epoch, "val_auc": m["auc"]})
        _write_rows(out / "metrics.csv", rows)
        say(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  val_loss {vloss:.4f}  val_auc {m['auc']:.4f}  "
            f"val_acc {m['accuracy']:.4f}" + (f"  alpha {alpha:+.4f}" if alpha is not None else "") + f"  {row['seconds']:.0f}s{mark}")
        if over_budget or (cfg.minutes is not None and (time.time() - start) / 60.0 > cfg.minutes):
            stop_reason = f"time budget {cfg.minutes} min reached after epoch {epoch}"
            break
        if since_best >= cfg.patience:
            stop_reason = f"early stop: no better val AUC for {cfg.patience} epochs (best epoch {best_epoch})"
            break
    train_seconds = time.time() - start
    say(stop_reason)
    state = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.to(dev)
    prof: dict[str, Any] = {"step_ms": 1000 * step_seconds / max(1, steps), "batch_size": bs,
                            "what": "mean training step (batch to device, augmentation, forward, backward, Adam) over the run"}
    if model.pqc is not None:
        prof.update(pqc_ms=1000 * pqc_seconds / max(1, steps), pqc_share=pqc_seconds / max(1e-12, step_seconds),
                    pqc_what="quantum layer forward + backward per step, measured during training (backward: between gradient hooks on its output and input)")
    ev = evaluate_model(model, val, cfg.threshold, out / "eval", n_boot=cfg.n_boot, seed=cfg.seed, device=dev, title=cfg.method)
    summary = {
        "method": cfg.method, "model": model_info, "classes": train.classes, "positive": cfg.positive or (train.classes[1] if train.binary else None),
        "train": {"source": train.source, "n": len(train), "counts": dict(zip(train.classes, train.counts()))},
        "val": {"source": val.source, "n": len(val), "counts": dict(zip(val.classes, val.counts()))},
        "synthetic": {"source": str(synthetic_folder(cfg.synthetic)), "n": sum(n.startswith("synthetic:") for n in train.names),
                      "class": synthetic_class(cfg, train.source_classes)} if cfg.synthetic else None,
        "best_epoch": best_epoch, "epochs_run": len(rows), "steps": steps, "train_seconds": train_seconds,
        "mean_step_seconds": step_seconds / max(1, steps), "stop_reason": stop_reason, "profile": prof,
        "alpha": float(model.pqc.alpha.detach()) if model.pqc is not None else None,
        "val_metrics": ev["metrics"], "figures": ev["figures"], "device": str(dev), "torch_threads": torch.get_num_threads(),
    }
    write_json(out / "summary.json", summary)
    return summary


def _write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Loading a run, evaluation, prediction


def load_classifier(model_path: str | Path, device: str | torch.device = "cpu"):
    """A run directory (checkpoints/best.pt, else last.pt) or a checkpoint file -> (model, config, state)."""
    from qmed.io.checkpoints import read, resolve_checkpoint
    from qmed.models.classifier import build_classifier

    p = resolve_checkpoint(model_path)
    state = read(p, CKPT_FORMAT, "qmed classifier checkpoint (written by qmed classify train)")
    cfg = ClassifyConfig.from_dict(state["config"])
    model = build_classifier(cfg.model, len(state["classes"]), None, cfg.pqc_dict(), cfg.dropout)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise QmedInputError(p, f"weights do not fit the model in its config ({str(exc).splitlines()[0][:120]})") from None
    return model.to(device).eval(), cfg, state


def evaluate_model(model, data: ClassData, threshold: float, out: Path | None, n_boot: int = 1000, seed: int = 0,
                   device=None, title: str = "") -> dict[str, Any]:
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    prob = predict_proba(model, data.images, dev)
    y = data.labels.numpy()
    metrics, boots = bootstrap_metrics(y, prob, threshold, n_boot=n_boot, seed=seed)
    res: dict[str, Any] = {"source": data.source, "n": len(data), "counts": dict(zip(data.classes, data.counts())),
                           "classes": data.classes, "threshold": threshold, "n_boot": n_boot, "seed": seed, "metrics": metrics,
                           "conventions": {"ci": "95% percentile bootstrap over cases (seeded); resamples where a metric is undefined are dropped",
                                           "binary": "positive = classes[1]; predicted positive when its probability >= threshold",
                                           "multiclass": "arg-max prediction; macro averages; AUC one-vs-rest macro"},
                           "figures": {}}
    if out is not None:
        out = Path(out)
        res["figures"] = write_figures(y, prob, data.classes, boots, out / "figures", threshold, title)
        write_json(out / "metrics.json", res)
        _write_predictions(out / "predictions.csv", data.names, prob, data.classes, threshold, y)
    return res


def _write_predictions(path: Path, names: list[str], prob: np.ndarray, classes: list[str], threshold: float, y: np.ndarray | None = None) -> None:
    pred = predictions(prob, threshold) if len(prob) else np.zeros(0, dtype=int)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "predicted"] + [f"prob_{c}" for c in classes] + (["true"] if y is not None else []))
    for i, n in enumerate(names):
        w.writerow([n, classes[int(pred[i])]] + [f"{v:.6f}" for v in prob[i]] + ([classes[int(y[i])]] if y is not None else []))
    write_text(path, buf.getvalue())


def evaluate_run(model_path, data_spec, out: Path | None = None, n_boot: int | None = None, seed: int | None = None,
                 threshold: float | None = None, device: str | None = None) -> dict[str, Any]:
    dev = pick_device(device)
    model, cfg, state = load_classifier(model_path, dev)
    data = load_dataset(data_spec, cfg.image_size, cfg.positive, source_classes=state["source_classes"],
                        default_split=_eval_split(data_spec))
    if data.images.shape[1] != state.get("channels", data.images.shape[1]) and data.images.shape[1] == 1:
        data.images = data.images.expand(-1, 3, -1, -1).contiguous()
    if data.classes != state["classes"]:
        raise QmedInputError(data_spec, f"classes {data.classes} do not match the model's {state['classes']}")
    return evaluate_model(model, data, cfg.threshold if threshold is None else threshold, out,
                          n_boot=cfg.n_boot if n_boot is None else n_boot, seed=cfg.seed if seed is None else seed, device=dev, title=cfg.method)


def _eval_split(spec) -> str:
    """Default .npz split for evaluation and prediction: test when the file has one, else val."""
    path, split = split_spec(spec)
    if path.suffix.lower() == ".npz" and split is None and path.is_file():
        try:
            with np.load(path) as z:
                return "test" if "test_images" in z.files else "val"
        except Exception:
            return "test"  # unreadable: _load_npz reports it
    return split or "test"


def list_inputs(spec: str | Path) -> list[Path]:
    p = Path(spec)
    if not p.exists():
        raise QmedInputError(p, "input does not exist")
    if p.is_file():
        if not is_image_file(p):
            raise QmedInputError(p, f"is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        return [p]
    files = sorted(f for f in p.rglob("*") if is_image_file(f))
    if not files:
        raise QmedInputError(p, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_images(spec: str | Path, image_size: int, default_split: str = "train") -> tuple[torch.Tensor, list[str]]:
    """Unlabelled images -> ((N, C, S, S) uint8, names): a folder (searched recursively, so class
    sub-folders are fine and their names are ignored), one image file, or FILE.npz[:SPLIT]."""
    path, split = split_spec(spec)
    if path.suffix.lower() == ".npz":
        _, imgs, names, _ = _load_npz(path, split or default_split, image_size)
    else:
        files = list_inputs(path)
        imgs = [_resize(read_image(f), image_size) for f in files]
        names = [str(f) for f in files]
    return _stack(imgs), names


def predict_files(model_path, input_spec, out_csv: Path, threshold: float | None = None, device: str | None = None) -> int:
    """Class probabilities for every image under `input_spec` (folder, image, or FILE.npz:SPLIT) -> CSV."""
    dev = pick_device(device)
    model, cfg, state = load_classifier(model_path, dev)
    x, names = load_images(input_spec, cfg.image_size, _eval_split(input_spec))
    if x.shape[1] == 1 and state.get("channels", 1) == 3:
        x = x.expand(-1, 3, -1, -1)
    prob = predict_proba(model, x, dev)
    _write_predictions(Path(out_csv), names, prob, state["classes"], cfg.threshold if threshold is None else threshold)
    return len(names)


# --------------------------------------------------------------------------------------------
# Comparison


BASELINES = ("resnet18", "mobilenet_v2", "densenet121", "vgg16", "efficientnet_b0")
PQC_METHOD = "mobilenet_v2+pqc"


@dataclass
class CompareRow:
    method: str
    status: str = "ok"
    summary: dict[str, Any] = field(default_factory=dict)


def compare(base: ClassifyConfig, train_spec, val_spec, out: Path, methods: Sequence[str], weights_files: dict[str, str],
            force: bool = False, device: str | None = None) -> list[CompareRow]:
    """Train every method on one split with one budget (base.minutes per method); -> rows."""
    from qmed.models.classifier import build_classifier

    out = Path(out)
    check_output(out, force, "output directory")
    data = load_split(train_spec, val_spec, base)
    rows: list[CompareRow] = []
    for method in methods:
        use_pqc = method.endswith("+pqc")
        name = method[: -len("+pqc")] if use_pqc else method
        cfg = ClassifyConfig.from_dict({**asdict(base), "model": name, "pqc": use_pqc,
                                        "weights": weights_files.get(name, base.weights)})
        try:  # weights first: an unavailable download skips the row instead of ending the comparison
            build_classifier(cfg.model, len(data[0].classes), cfg.weights, None)
        except QmedInputError as exc:
            log.warning("%s: skipped (%s)", method, exc)
            rows.append(CompareRow(method, f"skipped: {exc}"))
            continue
        log.info("=== %s ===", method)
        summary = train_classifier(cfg, None, None, out / method.replace("+", "_"), force=True, device=device, data=data)
        rows.append(CompareRow(method, "ok", summary))
    table = compare_table(rows)
    write_text(out / "compare.md", table + "\n")
    write_json(out / "compare.json", [{"method": r.method, "status": r.status, **({"summary": r.summary} if r.summary else {})} for r in rows])
    return rows


def compare_table(rows: Sequence[CompareRow]) -> str:
    head = "| method | AUC [95 % CI] | accuracy | balanced acc. | F1 | sensitivity | specificity | steps | seconds | PQC share of step |"
    ncol = head.count("|") - 1
    lines = [head, "|" + "---|" * ncol]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.method} | {r.status} |" + " |" * (ncol - 2))
            continue
        s, m = r.summary, r.summary["val_metrics"]
        share = s["profile"].get("pqc_share")
        lines.append(f"| {r.method} | {m['auc']['value']:.4f} [{m['auc']['ci_low']:.4f}, {m['auc']['ci_high']:.4f}] | "
                     f"{m['accuracy']['value']:.4f} | {m['balanced_accuracy']['value']:.4f} | {m['f1']['value']:.4f} | "
                     f"{m['sensitivity']['value']:.4f} | {m['specificity']['value']:.4f} | {s['steps']} | {s['train_seconds']:.0f} | "
                     f"{'' if share is None else f'{100 * share:.1f} %'} |")
    return "\n".join(lines)
