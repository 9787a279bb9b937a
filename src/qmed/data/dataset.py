"""Folder datasets: pairing images with masks, deterministic splits, and a dataset fingerprint.

Layout (as in ../shared/data): DATA_DIR/images/NAME.ext + DATA_DIR/masks/NAME.ext. A mask may also
carry a common suffix (NAME_mask.png, NAME_label.tif, ...). An explicit list of pairs is a CSV file
with the columns `image,mask` (paths relative to the CSV's folder).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from qmed.data.objects import median_diameter, object_diameter
from qmed.errors import QmedInputError
from qmed.io.images import IMAGE_EXTENSIONS, is_image_file, read_image, read_mask

log = logging.getLogger("qmed")

MASK_SUFFIXES = ("", "_mask", "_masks", "-mask", "_label", "_labels", "_seg", "_gt")
IMAGE_DIR_NAMES = ("images", "image", "imgs")
MASK_DIR_NAMES = ("masks", "mask", "labels", "labelsTr")


@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    mask: Path | None


def list_images(folder: str | Path, warn: bool = True) -> list[Path]:
    """Image files in a folder (not recursive), sorted; other files are ignored with a warning."""
    folder = Path(folder)
    if not folder.exists():
        raise QmedInputError(folder, "folder does not exist")
    if not folder.is_dir():
        raise QmedInputError(folder, "is not a folder")
    files, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if is_image_file(p):
            files.append(p)
        elif p.is_file():
            skipped.append(p.name)
    if skipped and warn:
        log.warning(
            "%s: ignoring %d non-image file(s): %s",
            folder,
            len(skipped),
            ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
        )
    return files


def _subdir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def mask_stem(stem: str) -> str:
    for suf in MASK_SUFFIXES[1:]:
        if stem.endswith(suf):
            return stem[: -len(suf)]
    return stem


def find_pairs(source: str | Path, require_masks: bool = True) -> list[Pair]:
    """All (image, mask) pairs of a dataset folder or CSV list, sorted by name."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _pairs_from_csv(source)
    if not source.exists():
        raise QmedInputError(source, "dataset folder does not exist")
    if not source.is_dir():
        raise QmedInputError(source, "is neither a dataset folder nor a .csv list of pairs")
    img_dir = _subdir(source, IMAGE_DIR_NAMES)
    mask_dir = _subdir(source, MASK_DIR_NAMES)
    if img_dir is None:
        raise QmedInputError(
            source, "no images/ subfolder (expected DATA_DIR/images/NAME.png and DATA_DIR/masks/NAME.png)"
        )
    images = list_images(img_dir)
    if not images:
        raise QmedInputError(img_dir, "folder holds no images (" + ", ".join(IMAGE_EXTENSIONS) + ")")
    _check_unique_stems(images)
    if mask_dir is None:
        if require_masks:
            raise QmedInputError(
                source, "no masks/ subfolder (expected DATA_DIR/masks/NAME.png beside DATA_DIR/images/)"
            )
        return [Pair(p.stem, p, None) for p in images]
    masks = list_images(mask_dir)
    by_stem: dict[str, Path] = {}
    image_stems = {p.stem for p in images}
    for m in masks:
        key = m.stem if m.stem in image_stems else mask_stem(m.stem)
        if key in by_stem:
            raise QmedInputError(m, f"a second mask for image {key!r} (also {by_stem[key].name})")
        by_stem[key] = m
    pairs = []
    for p in images:
        m = by_stem.pop(p.stem, None)
        if m is None and require_masks:
            raise QmedInputError(p, f"image has no mask in {mask_dir} (looked for {p.stem}.* and {p.stem}_mask.*)")
        pairs.append(Pair(p.stem, p, m))
    if by_stem:
        orphan = sorted(by_stem.values())[0]
        raise QmedInputError(
            orphan,
            f"mask has no matching image in {img_dir}" + (f" ({len(by_stem)} such masks)" if len(by_stem) > 1 else ""),
        )
    return pairs


def _check_unique_stems(files: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise QmedInputError(
                f, f"two images share the name {f.stem!r} (also {seen[f.stem].name}); names must be unique"
            )
        seen[f.stem] = f


def _pairs_from_csv(path: Path) -> list[Pair]:
    # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is not None:
            reader.fieldnames = [(f or "").strip().lower() for f in reader.fieldnames]
        if reader.fieldnames is None or not {"image", "mask"} <= set(reader.fieldnames):
            raise QmedInputError(path, "CSV list of pairs needs the columns 'image' and 'mask'")
        pairs = []
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            cells = {k: (row.get(k) or "").strip() for k in ("image", "mask")}
            for k, v in cells.items():
                if not v:
                    raise QmedInputError(path, f"line {reader.line_num}: the '{k}' column is empty")
            img = (path.parent / cells["image"]).resolve()
            msk = (path.parent / cells["mask"]).resolve()
            for f in (img, msk):
                if not f.is_file():
                    raise QmedInputError(f, f"listed in {path.name} but does not exist")
            pairs.append(Pair(img.stem, img, msk))
    if not pairs:
        raise QmedInputError(path, "CSV list holds no pairs")
    _check_unique_stems([p.image for p in pairs])
    return sorted(pairs, key=lambda p: p.name)


def write_pairs_csv(path: str | Path, pairs: list[Pair]) -> Path:
    """A CSV list of pairs (absolute paths) that `find_pairs` reads back: a subset of a dataset
    without copying its files (learning curves, active learning)."""
    import io

    from qmed.io.files import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "mask"])
    w.writerows([str(p.image.resolve()), str(p.mask.resolve())] for p in pairs)
    write_text(path, buf.getvalue())
    return Path(path)


def split_pairs(
    pairs: list[Pair], val_fraction: float = 0.2, seed: int = 0, group_pattern: str | None = None
) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/val split. With `group_pattern` (a regex whose first match or group of a
    name is its group, e.g. patient ID), all images of a group land on the same side."""
    if not 0.0 < val_fraction < 1.0:
        raise QmedInputError(None, f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(pairs) < 2:
        raise QmedInputError(
            pairs[0].image.parent if pairs else None,
            f"need at least 2 images to split into train and val, found {len(pairs)}",
        )
    ordered = sorted(pairs, key=lambda p: p.name)
    if group_pattern:
        rx = re.compile(group_pattern)

        def group_of(name: str) -> str:
            m = rx.search(name)
            if m is None:
                return name
            g = m.group(1) if m.groups() else None
            return g if g is not None else m.group(0)
    else:

        def group_of(name: str) -> str:
            return name

    groups = sorted({group_of(p.name) for p in ordered})
    if len(groups) < 2:
        raise QmedInputError(
            ordered[0].image.parent,
            f"all {len(ordered)} images fall into one group {groups[0]!r} (group pattern {group_pattern!r}); need at least 2 groups to split into train and val",
        )
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    n_val = max(1, int(round(val_fraction * len(ordered))))
    val_groups: set[str] = set()
    count = 0
    sizes = {g: 0 for g in groups}
    for p in ordered:
        sizes[group_of(p.name)] += 1
    for g in groups:
        if count >= n_val or len(val_groups) == len(groups) - 1:
            break
        val_groups.add(g)
        count += sizes[g]
    train = [p for p in ordered if group_of(p.name) not in val_groups]
    val = [p for p in ordered if group_of(p.name) in val_groups]
    return train, val


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 HxWxC, mask bool HxW, labels int32 HxW), sizes checked."""
    img = read_image(pair.image)
    if pair.mask is None:
        raise QmedInputError(pair.image, "image has no mask")
    fg, labels = read_mask(pair.mask)
    if fg.shape != img.shape[:2]:
        raise QmedInputError(
            pair.mask,
            f"mask is {fg.shape[1]}x{fg.shape[0]} but its image {pair.image.name} is {img.shape[1]}x{img.shape[0]}",
        )
    return img, fg, labels


# An image is colour when its channels differ by more than this on average ([0, 1] scale): gray
# images saved as RGB repeat one channel exactly, while stained tissue differs by 0.05-0.2.
COLOUR_SPREAD = 0.02


def appearance(img: np.ndarray, fg: np.ndarray) -> tuple[bool, float, float]:
    """(colour?, median background intensity, median foreground intensity) of one image in [0, 1]
    (intensity = the mean over channels; NaN where the mask has no pixel of that kind)."""
    x = np.asarray(img, dtype=np.float32)
    is_colour = bool(
        x.shape[2] >= 3 and float(np.abs(x[..., :3] - x[..., :3].mean(axis=2, keepdims=True)).mean()) > COLOUR_SPREAD
    )
    gray = x.mean(axis=2)
    bg = float(np.median(gray[~fg])) if (~fg).any() else float("nan")
    fgv = float(np.median(gray[fg])) if fg.any() else float("nan")
    return is_colour, bg, fgv


def modality(colour_fraction: float, background: float, foreground: float) -> str:
    """fluorescence (gray, objects brighter than a dark background), brightfield-stain (colour,
    objects darker than a light background: H&E and similar), or gray / colour (anything else)."""
    colour = colour_fraction >= 0.5
    known = np.isfinite(background) and np.isfinite(foreground)
    if not colour and known and foreground > background and background < 0.35:
        return "fluorescence"
    if colour and known and foreground < background:
        return "brightfield-stain"
    return "colour" if colour else "gray"


def _median_or_nan(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


# A mask with at most this many distinct non-zero values, one of which covers several separate
# regions, is a class map (e.g. 1 = tumour, 2 = stroma), not instance labels: one value per object.
CLASS_MAP_MAX_VALUES = 4


def looks_like_class_map(labels: np.ndarray) -> bool:
    """Several (2..CLASS_MAP_MAX_VALUES) non-zero values, at least one of them in several separate
    (8-connected) regions. Binary masks never qualify: their labels are their connected components."""
    values = np.unique(labels[labels > 0])
    if not 2 <= values.size <= CLASS_MAP_MAX_VALUES:
        return False
    return any(ndimage.label(labels == v, structure=np.ones((3, 3), dtype=int))[1] > 1 for v in values)


def data_warnings(n_pairs: int, n_empty: int, class_maps: list[tuple[str, list[int]]]) -> list[str]:
    """One line per kind of suspect mask set: all masks empty; masks that look like class maps."""
    out = []
    if n_empty == n_pairs:
        out.append(
            f"every mask is empty ({n_pairs} of {n_pairs}): there is no foreground to learn; check that masks/ holds the annotations"
        )
    if class_maps:
        name, values = class_maps[0]
        out.append(
            f"{len(class_maps)} of {n_pairs} masks hold a few values that each cover several separate regions "
            f"(e.g. {name}: values 0/{'/'.join(map(str, values))}): they look like class maps, not instance labels; "
            "qmed merges every non-zero value into one foreground and counts each value as one object"
        )
    return out


def fingerprint(pairs: list[Pair], warn: bool = True) -> dict:
    """What the dataset looks like: sizes, channels, foreground, emptiness, objects; "warnings" lists
    suspect masks (data_warnings), each also logged as a warning when `warn`.

    Drives `--preset auto`'s settings (qmed.data.planning.plan), which `qmed inspect` prints."""
    if not pairs:
        raise QmedInputError(None, "cannot fingerprint an empty dataset (no image/mask pairs)")
    sizes, channels, fg_frac, n_objects, obj_sizes, diameters = [], [], [], [], [], []
    colour, bg_level, fg_level = [], [], []
    class_maps: list[tuple[str, list[int]]] = []
    digest = hashlib.sha1()
    for pair in pairs:
        img, fg, labels = load_pair(pair)
        if looks_like_class_map(labels):
            class_maps.append((pair.mask.name, np.unique(labels[labels > 0]).tolist()))
        c, b, f = appearance(img, fg)
        colour.append(c)
        bg_level.append(b)
        fg_level.append(f)
        sizes.append(img.shape[:2])
        channels.append(img.shape[2])
        fg_frac.append(float(fg.mean()))
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        n_objects.append(int(ids.size))
        obj_sizes.extend(counts.tolist())
        diameters.append(object_diameter(fg))
        digest.update(pair.name.encode())
        digest.update(np.packbits(fg).tobytes())
    sizes_arr = np.array(sizes)
    fg_arr = np.array(fg_frac)
    obj_arr = np.array(obj_sizes) if obj_sizes else np.zeros(0)
    size_counts: dict[str, int] = {}
    for h, w in sizes:
        size_counts[f"{w}x{h}"] = size_counts.get(f"{w}x{h}", 0) + 1
    min_side = int(sizes_arr.min())
    median_side = float(np.median(sizes_arr))
    fp = {
        "n_pairs": len(pairs),
        "sizes": dict(sorted(size_counts.items(), key=lambda kv: -kv[1])),
        "min_side": min_side,
        "median_side": median_side,
        "channels": sorted(set(channels)),
        "foreground_fraction": {
            "min": float(fg_arr.min()),
            "median": float(np.median(fg_arr)),
            "max": float(fg_arr.max()),
            "mean": float(fg_arr.mean()),
        },
        "empty_fraction": float(np.mean(fg_arr == 0)),
        "objects_per_image": {
            "min": int(min(n_objects)),
            "median": float(np.median(n_objects)),
            "max": int(max(n_objects)),
        },
        "object_size_px": {
            "n": int(obj_arr.size),
            "median": float(np.median(obj_arr)) if obj_arr.size else 0.0,
            "p5": float(np.percentile(obj_arr, 5)) if obj_arr.size else 0.0,
            "p95": float(np.percentile(obj_arr, 95)) if obj_arr.size else 0.0,
            "small_lt_50": int(np.sum(obj_arr < 50)),
        },
        # What `qmed train` records as predict.object_diameter (binary masks, median of image medians).
        "object_diameter_px": median_diameter(diameters),
        # What the images look like, for `qmed train`'s automatic settings (qmed.data.planning).
        "colour_fraction": float(np.mean(colour)),
        "background_intensity": _median_or_nan(bg_level),
        "foreground_intensity": _median_or_nan(fg_level),
        "modality": modality(float(np.mean(colour)), _median_or_nan(bg_level), _median_or_nan(fg_level)),
        "hash": digest.hexdigest()[:12],
        "warnings": data_warnings(len(pairs), int(np.sum(fg_arr == 0)), class_maps),
    }
    if warn:
        for line in fp["warnings"]:
            log.warning("%s: %s", pairs[0].mask.parent if pairs[0].mask else "dataset", line)
    return fp
