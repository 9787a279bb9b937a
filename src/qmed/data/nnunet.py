"""Convert datasets between qmed's layout and nnU-Net v2's raw format (2-D, PNG).

qmed layout: DATA/images/NAME.ext + DATA/masks/NAME.ext (any mask encoding `qmed.io.images` reads).

nnU-Net v2 raw layout written by `to_nnunet` (the convention of nnU-Net's own 2-D natural-image
example, `nnunetv2/dataset_conversion/Dataset120_RoadSegmentation.py`, read by its
`NaturalImage2DIO`):

    RAW/DatasetXXX_Name/dataset.json
    RAW/DatasetXXX_Name/imagesTr/NAME_0000.png   one file per case: gray (1 channel) or RGB (3 channels
                                                 in one PNG; NaturalImage2DIO splits them into R, G, B)
    RAW/DatasetXXX_Name/labelsTr/NAME.png        uint8, 0 = background, 1 = foreground
    RAW/DatasetXXX_Name/imagesTs/NAME_0000.png   the --val images, if given
    RAW/DatasetXXX_Name/labelsTs/NAME.png        their masks (nnU-Net ignores labelsTs; kept for scoring)

dataset.json: channel_names {"0": "gray"} or {"0": "R", "1": "G", "2": "B"}, labels
{"background": 0, LABEL: 1}, numTraining, file_ending ".png", and
overwrite_image_reader_writer "NaturalImage2DIO" so nnU-Net does not have to guess the reader.
Any channel name other than "CT"/"noNorm"/"rescale_to_0_1"/"rgb_to_0_1" gets nnU-Net's per-image
z-score normalisation, its default for non-CT images.

Pixels are kept as they are where PNG can hold them (8- or 16-bit gray or RGB; alpha dropped, as
qmed drops it); other images (float, 32-bit TIFF) are written as 16-bit PNG of qmed's [0, 1] reading.
A dataset that mixes gray and RGB images is written as RGB throughout (gray repeated), because
nnU-Net needs the same channels for every case. Masks become 0/1 (instance label maps merged).

`from_nnunet` reads a DatasetXXX_Name folder back into qmed's layout (images as stored, masks 0/255):
imagesTr/labelsTr to OUT, and imagesTs (+ labelsTs when present) to VAL_OUT if given. Only 2-D image
file endings are read (.png, .bmp, .tif/.tiff); cases stored as one file per channel (NAME_0000,
NAME_0001, NAME_0002) are stacked. Label maps with several foreground classes are merged into one
foreground (with a warning); nnU-Net's "ignore" label counts as background.

Everything is written into a hidden staging folder and renamed into place at the end, so an
interrupted conversion leaves no half-written dataset.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np

from qmed.data.dataset import Pair, find_pairs
from qmed.errors import QmedInputError
from qmed.io.files import check_output, commit_staged, staging_dir, write_atomic, write_json
from qmed.io.images import read_array, read_image, read_mask, write_mask_png

log = logging.getLogger("qmed")

NNUNET_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
_NAME_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def nnunet_dataset_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise QmedInputError(
            None, f"--dataset-id must be between 1 and 999 (nnU-Net uses three digits), got {dataset_id}"
        )
    if not _NAME_RX.match(name):
        raise QmedInputError(
            None,
            f"--name {name!r}: use letters, digits, '_' or '-' (it becomes part of the folder Dataset{int(dataset_id):03d}_NAME)",
        )
    return f"Dataset{int(dataset_id):03d}_{name}"


# -- writing PNG ---------------------------------------------------------------------------------


def _write_png(path: Path, arr: np.ndarray) -> None:
    """uint8/uint16, HxW or HxWx3 (RGB order) -> PNG, atomically (cv2 writes 16-bit RGB, PIL does not)."""
    import cv2

    a = np.ascontiguousarray(arr)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)

    def write(p: Path) -> None:
        if not cv2.imwrite(str(p), a):
            raise QmedInputError(path, "could not be written as PNG")

    write_atomic(path, write)


def _png_pixels(path: Path) -> np.ndarray:
    """The image's pixels as PNG can store them: uint8/uint16, HxW or HxWx3, alpha dropped."""
    arr = read_array(path)
    if arr.ndim == 3:
        if arr.shape[2] == 2:  # gray + alpha
            arr = arr[..., 0]
        elif arr.shape[2] == 4:
            arr = arr[..., :3]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    img = read_image(path)  # float32 [0, 1], HxWx{1,3}, qmed's own reading of the file
    img = img[..., 0] if img.shape[2] == 1 else img
    return np.clip(np.rint(img.astype(np.float64) * 65535.0), 0, 65535).astype(np.uint16)


# -- qmed -> nnU-Net -----------------------------------------------------------------------------


def _check_names(pairs: list[Pair], source: Path) -> None:
    for p in pairs:
        if re.search(r"_\d{4}$", p.name):
            # harmless for nnU-Net (it strips the channel suffix from the end only), but say so
            log.info("%s: name ends in _NNNN; nnU-Net will see it as %s_0000.png", p.image, p.name)
        if "/" in p.name or p.name.startswith("."):
            raise QmedInputError(p.image, "name cannot be used as an nnU-Net case identifier")
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        raise QmedInputError(source, "two images share a name; nnU-Net case identifiers must be unique")


def to_nnunet(
    data: str | Path,
    out_raw: str | Path,
    dataset_id: int = 501,
    name: str = "Qmed",
    val: str | Path | None = None,
    label_name: str = "foreground",
    force: bool = False,
) -> Path:
    """Write DATA (and VAL as the test split) as OUT_RAW/DatasetXXX_Name. Returns the dataset folder."""
    data, out_raw = Path(data), Path(out_raw)
    ds_name = nnunet_dataset_name(dataset_id, name)
    if not re.match(r"^[A-Za-z][A-Za-z0-9_ \-]*$", label_name) or label_name == "background":
        raise QmedInputError(None, f"--label-name {label_name!r}: use a word other than 'background'")
    train_pairs = find_pairs(data)
    val_pairs = find_pairs(val) if val is not None else []
    _check_names(train_pairs, data)
    if val is not None:
        _check_names(val_pairs, Path(val))
        clash = sorted({p.name for p in train_pairs} & {p.name for p in val_pairs})
        if clash:
            log.warning(
                "%d name(s) appear in both --data and --val (e.g. %s); nnU-Net keeps imagesTr and imagesTs apart, so this is allowed",
                len(clash),
                clash[0],
            )
    if out_raw.exists() and not out_raw.is_dir():
        raise QmedInputError(out_raw, "is not a folder")
    if out_raw.is_dir():
        other = [
            p
            for p in out_raw.glob(f"Dataset{int(dataset_id):03d}_*")
            if p.name != ds_name and not p.name.startswith(".")
        ]
        if other:
            raise QmedInputError(
                other[0],
                f"another dataset already uses ID {int(dataset_id):03d}; nnU-Net finds datasets by ID, so pick another --dataset-id",
            )
    dest = out_raw / ds_name
    check_output(dest, force, inputs=[data, val])

    # Read every image first: sizes, channels and masks are checked before anything is written.
    items = []
    for split, pairs in (("Tr", train_pairs), ("Ts", val_pairs)):
        for p in pairs:
            img = _png_pixels(p.image)
            fg, _ = read_mask(p.mask)
            if fg.shape != img.shape[:2]:
                raise QmedInputError(
                    p.mask,
                    f"mask is {fg.shape[1]}x{fg.shape[0]} but its image {p.image.name} is {img.shape[1]}x{img.shape[0]}",
                )
            items.append((split, p, img, fg))
    rgb = any(img.ndim == 3 for _, _, img, _ in items)
    if rgb and any(img.ndim == 2 for _, _, img, _ in items):
        log.warning(
            "%s: gray and RGB images mixed; writing all as RGB (gray repeated), as nnU-Net needs the same channels for every case",
            data,
        )
    bits = {img.dtype for _, _, img, _ in items}
    if len(bits) > 1:
        log.warning(
            "%s: 8- and 16-bit images mixed; nnU-Net normalises each image (z-score), so this is harmless", data
        )

    stage = staging_dir(dest, force, inputs=[data, val], verb="convert")
    try:
        for split, p, img, fg in items:
            if rgb and img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            _write_png(stage / f"images{split}" / f"{p.name}_0000.png", img)
            _write_png(stage / f"labels{split}" / f"{p.name}.png", fg.astype(np.uint8))
        channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "gray"}
        write_json(
            stage / "dataset.json",
            {
                "channel_names": channels,
                "labels": {"background": 0, label_name: 1},
                "numTraining": len(train_pairs),
                "file_ending": ".png",
                "overwrite_image_reader_writer": "NaturalImage2DIO",
                "name": name,
                "description": f"converted by qmed from {data.resolve()}"
                + (f" (imagesTs: {Path(val).resolve()})" if val is not None else ""),
            },
        )
        commit_staged(stage, dest)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return dest


# -- nnU-Net -> qmed -----------------------------------------------------------------------------


def _load_dataset_json(ds: Path) -> dict:
    f = ds / "dataset.json"
    if not ds.is_dir():
        raise QmedInputError(ds, "nnU-Net dataset folder does not exist")
    if not f.is_file():
        raise QmedInputError(ds, "has no dataset.json; expected an nnU-Net v2 raw dataset folder (DatasetXXX_Name)")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QmedInputError(f, f"is not valid JSON ({exc})") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise QmedInputError(f, f"lacks the key {key!r}")
    if "modality" in meta and "channel_names" not in meta:
        raise QmedInputError(
            f, "looks like an nnU-Net v1 / MSD dataset.json; convert it with nnUNetv2_convert_old_nnUNet_dataset first"
        )
    ending = str(meta["file_ending"]).lower()
    if ending not in NNUNET_2D_ENDINGS:
        raise QmedInputError(
            f, f"file_ending {meta['file_ending']!r}: qmed reads 2-D image files only ({', '.join(NNUNET_2D_ENDINGS)})"
        )
    return meta


def _foreground_values(meta: dict, source: Path) -> tuple[set[int] | None, int | None]:
    """-> (label values that count as foreground, or None for 'any non-zero'; the ignore label)."""
    labels = meta["labels"]
    ignore = labels.get("ignore")
    ignore = int(ignore) if isinstance(ignore, (int, float)) else None
    fg: set[int] = set()
    for k, v in labels.items():
        if k in ("background", "ignore"):
            continue
        for x in v if isinstance(v, (list, tuple)) else [v]:  # regions list several labels
            fg.add(int(x))
    fg.discard(0)
    if len(fg) > 1:
        log.warning(
            "%s: %d foreground labels (%s); qmed is binary, so they are merged into one foreground",
            source,
            len(fg),
            ", ".join(k for k in labels if k not in ("background", "ignore")),
        )
    return (fg or None), ignore


def _read_case_image(files: list[Path], n_channels: int) -> np.ndarray:
    arrays = [_png_pixels(f) for f in files]
    if len(arrays) == 1:
        img = arrays[0]
        if img.ndim == 3 and n_channels not in (3,):
            raise QmedInputError(files[0], f"holds {img.shape[2]} colour channels but dataset.json names {n_channels}")
        return img
    if any(a.ndim != 2 for a in arrays):
        raise QmedInputError(files[0], "a case stored as one file per channel must have single-channel files")
    if len({a.shape for a in arrays}) > 1 or len({a.dtype for a in arrays}) > 1:
        raise QmedInputError(files[0], "the channel files of this case differ in size or bit depth")
    if len(arrays) != 3:
        raise QmedInputError(files[0], f"case has {len(arrays)} channels; qmed reads gray (1) or RGB (3) images")
    return np.stack(arrays, axis=-1)


def _case_files(folder: Path, ending: str, n_channels: int) -> dict[str, list[Path]]:
    rx = re.compile(r"^(?P<name>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$", re.IGNORECASE)
    cases: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        m = rx.match(f.name)
        if m is None:
            if f.name.lower().endswith(ending):
                raise QmedInputError(f, f"image name lacks nnU-Net's channel suffix (expected NAME_0000{ending})")
            continue
        cases.setdefault(m["name"], {})[int(m["ch"])] = f
    out = {}
    for name, chans in cases.items():
        if sorted(chans) == [0]:
            out[name] = [chans[0]]
        elif sorted(chans) == list(range(n_channels)):
            out[name] = [chans[i] for i in range(n_channels)]
        else:
            raise QmedInputError(
                folder, f"case {name!r} has channel files {sorted(chans)}, dataset.json names {n_channels} channel(s)"
            )
    return out


def _convert_split(ds: Path, split: str, meta: dict, stage: Path, require_labels: bool) -> int:
    ending = str(meta["file_ending"]).lower()
    n_ch = len(meta["channel_names"])
    img_dir, lab_dir = ds / f"images{split}", ds / f"labels{split}"
    if not img_dir.is_dir():
        raise QmedInputError(ds, f"has no images{split}/ folder")
    cases = _case_files(img_dir, ending, n_ch)
    if not cases:
        raise QmedInputError(img_dir, f"holds no NAME_0000{ending} images")
    has_labels = lab_dir.is_dir()
    if require_labels and not has_labels:
        raise QmedInputError(ds, f"has no labels{split}/ folder")
    fg_values, ignore = _foreground_values(meta, ds / "dataset.json")
    (stage / "images").mkdir(parents=True, exist_ok=True)
    for name, files in sorted(cases.items()):
        img = _read_case_image(files, n_ch)
        _write_png(stage / "images" / f"{name}.png", img)
        if not has_labels:
            continue
        lab = next(
            (lab_dir / f"{name}{e}" for e in (ending, ending.upper()) if (lab_dir / f"{name}{e}").is_file()), None
        )
        if lab is None:
            raise QmedInputError(img_dir / files[0].name, f"has no label file {name}{ending} in {lab_dir}")
        arr = read_array(lab)
        if arr.ndim == 3:
            from qmed.io.images import single_channel

            arr = single_channel(arr, lab, "label map")
        if arr.shape != img.shape[:2]:
            raise QmedInputError(
                lab, f"label map is {arr.shape[1]}x{arr.shape[0]} but its image is {img.shape[1]}x{img.shape[0]}"
            )
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            if not np.all(arr == np.round(arr)):
                raise QmedInputError(lab, "label map holds fractional values")
            arr = arr.astype(np.int64)
        arr = arr.astype(np.int64)
        if fg_values is None:
            fg = arr > 0
        else:
            unknown = set(np.unique(arr).tolist()) - fg_values - {0} - ({ignore} if ignore is not None else set())
            if unknown:
                raise QmedInputError(lab, f"label values {sorted(unknown)[:5]} are not in dataset.json's labels")
            fg = np.isin(arr, list(fg_values))
        if ignore is not None and np.any(arr == ignore):
            log.warning("%s: pixels with the ignore label %d are written as background", lab, ignore)
        (stage / "masks").mkdir(exist_ok=True)
        write_mask_png(stage / "masks" / f"{name}.png", fg)
    return len(cases)


def from_nnunet(
    dataset: str | Path, out: str | Path, val_out: str | Path | None = None, force: bool = False
) -> tuple[int, int]:
    """imagesTr/labelsTr -> OUT/images + OUT/masks (0/255); imagesTs[/labelsTs] -> VAL_OUT. Returns the counts."""
    ds, out = Path(dataset), Path(out)
    meta = _load_dataset_json(ds)
    val_out = Path(val_out) if val_out is not None else None
    if val_out is not None:
        if val_out.resolve() == out.resolve():
            raise QmedInputError(val_out, "--val must differ from --out")
        if not (ds / "imagesTs").is_dir():
            raise QmedInputError(ds, "has no imagesTs/ folder to write to --val")
    for dest in (out, val_out):  # refuse before writing anything
        if dest is not None:
            check_output(dest, force, inputs=[ds])
    n_ts = 0
    stages = []
    try:
        stage = staging_dir(out, force, inputs=[ds], verb="convert")
        stages.append((stage, out))
        n_tr = _convert_split(ds, "Tr", meta, stage, require_labels=True)
        if val_out is not None:
            vstage = staging_dir(val_out, force, inputs=[ds], verb="convert")
            stages.append((vstage, val_out))
            n_ts = _convert_split(ds, "Ts", meta, vstage, require_labels=False)
        for s, dest in stages:
            commit_staged(s, dest)
    finally:
        for s, _ in stages:
            if s.exists():
                shutil.rmtree(s, ignore_errors=True)
    return n_tr, n_ts
