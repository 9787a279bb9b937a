"""Classification data (SPEC Q2/Q3): class folders and MedMNIST .npz files, splits, synthetic images.

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

Without a validation set, a stratified seeded split of the training set (``val_fraction``) validates.

Synthetic images (``synthetic=DIR``, e.g. the output of ``qmed synthesize``): read like a folder to
predict, labelled as ``synthetic_class`` (default: the positive class) and appended to the training
set after the train/validation split, so validation (and evaluation) never sees them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qmed.config import ClassifyConfig
from qmed.data.dataset import IMAGE_DIR_NAMES, MASK_DIR_NAMES
from qmed.errors import QmedInputError
from qmed.io.images import IMAGE_EXTENSIONS, is_image_file, read_image

log = logging.getLogger("qmed")

NEGATIVE_NAME = "rest"


# --------------------------------------------------------------------------------------------
# Labelled datasets


@dataclass
class ClassData:
    images: torch.Tensor  # (N, C, S, S) uint8
    labels: torch.Tensor  # (N,) int64 in 0..K-1 (task labels)
    classes: list[str]  # task class names (binary: ["rest", POSITIVE] or the two classes)
    source_classes: list[str]  # classes of the source (folders or npz label values)
    names: list[str]  # file paths or "FILE.npz:split[i]"
    source: str
    warnings: list[str] = field(default_factory=list)  # said when read; the run repeats them into its train.log

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, idx: Sequence[int]) -> ClassData:
        idx_t = torch.as_tensor(list(idx), dtype=torch.long)
        return ClassData(
            self.images[idx_t],
            self.labels[idx_t],
            self.classes,
            self.source_classes,
            [self.names[i] for i in idx],
            self.source,
            self.warnings,
        )

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def counts(self) -> list[int]:
        return np.bincount(self.labels.numpy(), minlength=len(self.classes)).tolist()


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """ "FILE.npz:val" -> (FILE.npz, "val"); anything else -> (path, None)."""
    s = str(spec)
    if ".npz:" in s:
        head, split = s.rsplit(":", 1)
        return Path(head), split
    return Path(s), None


def class_folders(root: Path, warnings: list[str] | None = None) -> dict[str, list[Path]]:
    """{class: sorted image files} of a class-folder dataset; every problem is a QmedInputError.
    Symlinked folders are no classes (a warning, also appended to `warnings`)."""
    if not root.exists():
        raise QmedInputError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise QmedInputError(root, "is not a folder (give ROOT with one sub-folder per class, or a .npz file)")
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    links = sorted(p.name for p in entries if p.is_symlink())
    if links:  # a link to another class's folder would count its images twice
        note = f"{root}: ignoring {len(links)} symlinked folder(s), which are not classes: {', '.join(links[:5])}"
        log.warning("%s", note)
        if warnings is not None:
            warnings.append(note)
    subdirs = sorted(p for p in entries if not p.is_symlink())
    names = {p.name.lower() for p in subdirs}
    if names & set(IMAGE_DIR_NAMES) and names & set(MASK_DIR_NAMES):
        raise QmedInputError(
            root,
            "holds images/ and masks/: a segmentation dataset, not one sub-folder per class "
            "(train a segmenter with qmed train --data, or give ROOT/CLASS/*.png)",
        )
    if not subdirs:
        loose = [p for p in root.iterdir() if is_image_file(p)]
        hint = f" (it holds {len(loose)} images directly; put them into one sub-folder per class)" if loose else ""
        raise QmedInputError(root, f"has no class sub-folders{hint}")
    out: dict[str, list[Path]] = {}
    for d in subdirs:
        files = sorted(p for p in d.rglob("*") if is_image_file(p))  # rglob does not enter symlinked folders
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


def _task_labels(
    source_labels: list[str], source_classes: list[str], positive: str | None
) -> tuple[list[int], list[str]]:
    if positive is not None:
        return [int(s == positive) for s in source_labels], [NEGATIVE_NAME, positive]
    index = {c: i for i, c in enumerate(source_classes)}
    return [index[s] for s in source_labels], list(source_classes)


def load_dataset(
    spec: str | Path,
    image_size: int,
    positive: str | None = None,
    source_classes: list[str] | None = None,
    default_split: str = "train",
) -> ClassData:
    """Read a class-folder dataset or an .npz split, resized to image_size.

    `source_classes`: the training set's classes (at evaluation); a class outside them is an error.
    `positive`: a source class to make the task positive-vs-rest."""
    path, split = split_spec(spec)
    notes: list[str] = []
    if path.suffix.lower() == ".npz":
        src_labels, imgs, names, found = _load_npz(path, split or default_split, image_size)
        where = Path(f"{path}:{split or default_split}")
    else:
        if split is not None:
            raise QmedInputError(path, "a ':SPLIT' suffix applies only to .npz files")
        folders = class_folders(path, notes)
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
            raise QmedInputError(
                where,
                f"has class(es) {', '.join(unknown)} that the model was not trained on (its classes: {', '.join(source_classes)})",
            )
    if positive is not None and positive not in source_classes:
        raise QmedInputError(where, f"positive class {positive!r} not found; classes are: {', '.join(source_classes)}")
    if positive is None and len(source_classes) == 2:
        positive_note = source_classes[1]
        log.info("%s: two classes, treating %r as positive", where, positive_note)
    labels, classes = _task_labels(src_labels, source_classes, positive)
    data = ClassData(
        _stack(imgs), torch.tensor(labels, dtype=torch.long), classes, list(source_classes), names, str(where), notes
    )
    return data


def _open_npz(path: Path):
    """The archive, opened: a missing, truncated or foreign file is one QmedInputError."""
    if not path.is_file():
        raise QmedInputError(path, "file does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        z.files  # noqa: B018 - a NpzFile has them; an .npy or pickle does not
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, numpy and OS errors alike
        raise QmedInputError(
            path, f"cannot be read as an .npz archive ({type(exc).__name__}); the file may be truncated or corrupt"
        ) from None
    return z


def _npz_member(z, key: str, path: Path) -> np.ndarray:
    """One array of the archive; a member cut short or corrupted (bad CRC, zlib error) is one QmedInputError."""
    try:
        return z[key]
    except Exception as exc:  # noqa: BLE001
        raise QmedInputError(
            path, f"{key} cannot be read ({type(exc).__name__}); the file may be truncated or corrupt"
        ) from None


def _npz_splits(keys) -> list[str]:
    """The splits of an archive: SPLIT where SPLIT_images and SPLIT_labels are both there."""
    keys = set(keys)
    return sorted(k[: -len("_images")] for k in keys if k.endswith("_images") and f"{k[:-7]}_labels" in keys)


def _load_npz(path: Path, split: str, image_size: int) -> tuple[list[str], list[np.ndarray], list[str], list[str]]:
    z = _open_npz(path)
    keys = set(z.files)
    ik, lk = f"{split}_images", f"{split}_labels"
    if ik not in keys or lk not in keys:
        raise QmedInputError(
            path, f"has no split {split!r} ({ik} + {lk}); splits found: {', '.join(_npz_splits(keys)) or 'none'}"
        )
    x, y = _npz_member(z, ik, path), _npz_member(z, lk, path)
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise QmedInputError(path, f"{ik} has shape {x.shape}; expected (N, H, W) or (N, H, W, 1|3)")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise QmedInputError(
            path, f"{lk} has shape {z[lk].shape}; only single-label tasks (N,) or (N, 1) are supported"
        )
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
        z = _open_npz(path)
        splits = _npz_splits(z.files)
        if split is not None and split not in splits:
            raise QmedInputError(
                path,
                f"has no split {split!r} ({split}_images + {split}_labels); splits found: {', '.join(splits) or 'none'}",
            )
        out: dict[str, Any] = {"source": str(path), "splits": {}}
        for name in splits:
            if split is None or name == split:
                y = np.asarray(_npz_member(z, f"{name}_labels", path))
                y = y.reshape(len(y), -1)[:, 0]
                vals, cnt = np.unique(y, return_counts=True)
                out["splits"][name] = {
                    "counts": {str(int(v)): int(c) for v, c in zip(vals, cnt)},
                    "image_shape": list(_npz_member(z, f"{name}_images", path).shape[1:]),
                }
        if not out["splits"]:
            raise QmedInputError(path, "holds no splits (SPLIT_images + SPLIT_labels arrays)")
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


def default_eval_split(spec: str | Path) -> str:
    """Default .npz split for evaluation and prediction: test when the file has one, else val."""
    path, split = split_spec(spec)
    if path.suffix.lower() == ".npz" and split is None and path.is_file():
        try:
            with np.load(path) as z:
                return "test" if "test_images" in z.files else "val"
        except Exception:
            return "test"  # unreadable: _load_npz reports it
    return split or "test"


# --------------------------------------------------------------------------------------------
# Unlabelled images (prediction, SimCLR, the DDPM, synthetic training images)


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


def as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, C, S, S) uint8 -> float in [0, 1] on `device` (what the classifiers take)."""
    return images.to(device, non_blocking=True).float().div_(255.0)


# --------------------------------------------------------------------------------------------
# The training and validation sets


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
        log.warning(
            "no --val given: validating on %d of %d images split off %s (stratified, seed %d)",
            len(va),
            len(train),
            train.source,
            cfg.seed,
        )
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
        raise QmedInputError(
            None, f"--synthetic needs --synthetic-class (or --positive) on a {len(source_classes)}-class dataset"
        )
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
        images = (
            images.expand(-1, 3, -1, -1) if c == 3 else images.float().mean(1, keepdim=True).round().to(torch.uint8)
        )
    label = _task_labels([cls], train.source_classes, cfg.positive)[0][0]
    log.info("training set: + %d synthetic %s images from %s (never in validation)", len(names), cls, folder)
    return ClassData(
        torch.cat([train.images, images.contiguous()]),
        torch.cat([train.labels, torch.full((len(names),), label)]),
        train.classes,
        train.source_classes,
        train.names + [f"synthetic:{n}" for n in names],
        train.source,
    )
