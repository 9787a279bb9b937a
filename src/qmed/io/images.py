"""Read any image or mask file the way a microscope or annotation tool wrote it.

Images come back as float32 HxWxC arrays in [0, 1] with C = 1 (gray) or 3 (RGB; alpha dropped).
Scaling: 8-bit by 255; deeper integer images by the smallest 2**k - 1 >= their maximum (so 12-bit
camera data fills the range instead of sitting in the bottom 6 %); float images are kept when they
lie in [0, 1] and min-max scaled otherwise.

Masks come back as a bool foreground mask plus int32 instance labels: the file's own labels when it
is an instance label map (values 0..N), otherwise connected components (8-connectivity) of the
binary mask. Accepted encodings: 0/1, 0/255, 0/65535, label maps (integer, background 0), and RGB
or RGBA files whose colour channels are identical. Anything else is refused with a message naming
the file, never guessed at.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from qmed.errors import QmedInputError

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")


def is_image_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def read_array(path: str | Path) -> np.ndarray:
    """Decode a file into its raw array (HxW or HxWxC, native dtype). Raises QmedInputError."""
    path = Path(path)
    if not path.exists():
        raise QmedInputError(path, "file does not exist")
    if not path.is_file():
        raise QmedInputError(path, "is not a file")
    if path.stat().st_size == 0:
        raise QmedInputError(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise QmedInputError(path, f"unsupported file type {suffix!r} (use one of {', '.join(IMAGE_EXTENSIONS)})")
    try:
        if suffix in TIFF_EXTENSIONS:
            arr = _read_tiff(path)
        else:
            arr = _read_pil(path)
    except QmedInputError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs the file and the gist
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QmedInputError(
            path, f"cannot be decoded as an image ({msg}); the file may be truncated or corrupt"
        ) from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise QmedInputError(path, f"unsupported array shape {arr.shape} (expected HxW or HxWxC with C in 1..4)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise QmedInputError(path, f"image has no pixels (shape {arr.shape})")
    return arr


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()  # force full decode so truncation surfaces here
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "PA":
                im = im.convert("RGBA")
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                return np.array(im, dtype=np.uint16)
            elif im.mode == "I" and im.format == "PNG":
                # Older Pillow opens 16-bit gray PNGs as 32-bit "I"; PNG has no deeper gray type.
                return np.array(im).astype(np.uint16)
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")
            return np.array(im)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    arr = tifffile.imread(path)
    arr = np.asarray(arr)
    # Multi-page / z-stacks and channel-first layouts: take what a 2-D image reader would expect.
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim > 3:
        raise QmedInputError(path, f"TIFF holds a stack of shape {arr.shape}; qmed reads 2-D images only")
    return arr


def _to_float(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.float64)
        if a.min() < 0:
            a = a - a.min()
        top = float(a.max())
        scale = float(2 ** max(8, int(np.ceil(np.log2(top + 1)))) - 1) if top > 0 else 1.0
        return (a / scale).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise QmedInputError(path, "image contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return a.astype(np.float32)
    raise QmedInputError(path, f"unsupported pixel type {arr.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Return a float32 HxWxC image in [0, 1], C = 1 or 3 (alpha dropped)."""
    path = Path(path)
    arr = read_array(path)
    if arr.ndim == 3:
        if arr.shape[2] == 2:  # gray + alpha
            arr = arr[..., :1]
        elif arr.shape[2] == 4:
            arr = arr[..., :3]
    img = _to_float(arr, path)
    if img.ndim == 2:
        img = img[..., None]
    return np.ascontiguousarray(img)


def single_channel(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr
    colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
    if colour.shape[2] == 3 and not (
        np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
    ):
        raise QmedInputError(
            path,
            f"{what} has {arr.shape[2]} channels with different values (an RGB {what}); save it as a single-channel image",
        )
    return colour[..., 0]


def read_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (foreground bool HxW, instance labels int32 HxW)."""
    path = Path(path)
    return _mask_from_array(single_channel(read_array(path), path, "mask"), path)


def _mask_from_array(arr: np.ndarray, path: Path, what: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise QmedInputError(path, f"{what} contains NaN or infinite values")
        if np.all(np.isin(arr, (0.0, 1.0))):
            arr = arr.astype(np.uint8)
        elif np.all(arr >= 0) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise QmedInputError(
                path, f"{what} holds fractional values; expected 0/1, 0/255 or integer instance labels"
            )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise QmedInputError(path, f"{what} has negative values; expected 0/1, 0/255 or instance labels >= 0")
    values = np.unique(arr)
    nonzero = values[values > 0]
    if nonzero.size == 0:
        fg = np.zeros(arr.shape, dtype=bool)
        return fg, np.zeros(arr.shape, dtype=np.int32)
    if nonzero.size == 1:  # binary: 0/1, 0/255, 0/65535 or a single labelled object
        fg = arr > 0
        labels, _ = ndimage.label(fg, structure=np.ones((3, 3), dtype=int))
        return fg, labels.astype(np.int32)
    # Several foreground values: an instance label map, unless it was saved lossily. A JPEG file
    # can never hold trustworthy labels; a lossy-saved binary mask re-saved as PNG leaves a halo of
    # values near 0 and 255 around every edge.
    if _is_jpeg(path):
        raise QmedInputError(
            path,
            f"{what} is a JPEG file with {values.size} distinct values; JPEG compression alters mask values, so save masks losslessly (PNG/TIFF) as 0/255 or labels",
        )
    if arr.dtype == np.uint8 and values.max() >= 250 and _looks_lossy(arr):
        raise QmedInputError(
            path,
            f"{what} has {values.size} distinct values around 0 and 255, as a JPEG-compressed binary mask does; save masks losslessly (PNG/TIFF) as 0/255 or labels",
        )
    fg = arr > 0
    return fg, arr.astype(np.int32)


def _is_jpeg(path: Path) -> bool:
    """True when the file's content is JPEG (whatever its extension says)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


def _looks_lossy(arr: np.ndarray) -> bool:
    fg = arr[arr > 0]
    high = np.count_nonzero(fg >= 200)
    # A label map with values up to 255 has ~all labels equally common; a JPEG'd binary mask has
    # most foreground pixels near 255 and a thin spread of intermediate values.
    return high >= 0.5 * fg.size


def read_probability(path: str | Path) -> np.ndarray:
    """Read a predicted mask or probability map as float32 HxW in [0, 1].

    uint8 maps are divided by 255, uint16 by 65535, floats must already lie in [0, 1]. A binary
    file 0/1 stays 0/1.
    """
    path = Path(path)
    return _probability_from_array(single_channel(read_array(path), path, "prediction"), path)


def _probability_from_array(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise QmedInputError(path, "probability map contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise QmedInputError(
                path, f"probability map values span [{arr.min():.3g}, {arr.max():.3g}]; expected [0, 1]"
            )
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        vmax = int(arr.max())
        if arr.min() < 0:
            raise QmedInputError(path, "prediction has negative values")
        if vmax <= 1:
            return arr.astype(np.float32)
        if arr.dtype == np.uint16:
            return arr.astype(np.float32) / 65535.0
        if vmax <= 255:
            return arr.astype(np.float32) / 255.0
        raise QmedInputError(
            path, f"prediction has integer values up to {vmax}; expected 0/1, 0..255 or 16-bit 0..65535"
        )
    raise QmedInputError(path, f"unsupported pixel type {arr.dtype}")


# What a prediction file holds (`qmed evaluate --pred-kind`); "auto" decides per file.
PREDICTION_KINDS = ("auto", "mask", "probability", "labels")


def _label_pattern(arr: np.ndarray) -> bool:
    """Piecewise constant with one piece per value, as an instance label map is.

    Two figures over the 4-neighbour pixel pairs: (a) pairs of two different non-zero values
    (objects touching; a probability map's every ramp step) per pair of a zero and a non-zero
    value (an object's edge): at most 0.19 on the 523 DSB2018 label maps here, at least 0.84
    on probability maps, even one disc's with a half-pixel ramp; labels need < 0.5. (b) 4-connected
    regions of one value per distinct value: at most 1.43 on those label maps (labels cut in two),
    7.5 or more on probability maps (each level is a ring around every object); labels need <= 2."""
    from skimage.measure import label

    touching = edges = 0
    for a, b in ((arr[:, :-1], arr[:, 1:]), (arr[:-1], arr[1:])):
        nz_a, nz_b = a != 0, b != 0
        touching += int(np.count_nonzero(nz_a & nz_b & (a != b)))
        edges += int(np.count_nonzero(nz_a != nz_b))
    if touching >= 0.5 * edges:
        return False
    n_values = np.unique(arr[arr != 0]).size
    return int(label(arr, background=0, connectivity=1).max()) <= 2 * n_values


def prediction_kind(arr: np.ndarray) -> str:
    """What a decoded single-channel prediction holds: "mask" (no non-zero value, or one that reads
    as probability 1: 0/1, 0/255 in 8 bit, 0/65535 in 16 bit, bool, float 0/1), "labels" (integer values, or integral floats, with several
    non-zero values in the pattern of an instance label map, see _label_pattern) or "probability"
    (anything else, e.g. 8-bit 0..255 or 16-bit 0..65535 maps, floats in [0, 1])."""
    if arr.dtype == np.bool_:
        return "mask"
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            return "probability"  # refused when read, with the reason
        if np.all(np.isin(arr, (0.0, 1.0))):
            return "mask"
        integral = float(arr.max()) > 1 and float(arr.min()) >= 0 and np.all(arr == np.round(arr))
        return "labels" if integral and _label_pattern(arr) else "probability"
    nonzero = np.unique(arr[arr != 0])
    if nonzero.size == 0 or (nonzero.size == 1 and int(nonzero[0]) in _full_scale(arr.dtype)):
        return "mask"  # reads as 0/1 as a probability map too, so the same for any threshold
    if nonzero.size >= 2 and _label_pattern(arr):
        return "labels"
    return "probability"  # e.g. 0/20000 in 16 bit: 0.31 everywhere it is not 0


def _full_scale(dtype) -> tuple[int, ...]:
    # The integer values that read_probability takes for 1.0 (besides 1 itself).
    return (1, 255) if dtype == np.uint8 else (1, 65535) if dtype == np.uint16 else (1,)


def read_prediction(path: str | Path, kind: str = "auto") -> tuple[str, np.ndarray]:
    """Read a prediction file as what it holds -> (kind, array), decoding it once:
    "labels": int32 instance labels (checked as read_mask checks masks); "mask": bool, foreground
    = any non-zero value; "probability": float32 in [0, 1] as read_probability. `kind` "auto"
    decides with prediction_kind; any other PREDICTION_KINDS value is taken as said."""
    path = Path(path)
    if kind not in PREDICTION_KINDS:
        raise QmedInputError(None, f"unknown prediction kind {kind!r}; use one of {', '.join(PREDICTION_KINDS)}")
    arr = single_channel(read_array(path), path, "prediction")
    if kind == "auto":
        kind = prediction_kind(arr)
    if kind == "labels":
        return kind, _mask_from_array(arr, path, "label map")[1]
    if kind == "mask":
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise QmedInputError(path, "prediction contains NaN or infinite values")
        return kind, arr != 0
    return kind, _probability_from_array(arr, path)


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a binary mask as 0/255 8-bit PNG, atomically."""
    from PIL import Image

    from qmed.io.files import write_atomic

    img = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    write_atomic(path, lambda p: img.save(p, format="PNG"))


def write_probability_png(path: str | Path, prob: np.ndarray) -> None:
    """Write a probability map as 16-bit PNG (value * 65535), atomically."""
    from PIL import Image

    from qmed.io.files import write_atomic

    q = np.clip(np.rint(np.asarray(prob, dtype=np.float64) * 65535.0), 0, 65535).astype(np.uint16)
    img = Image.fromarray(q)
    write_atomic(path, lambda p: img.save(p, format="PNG"))


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write an instance label map (0 = background), atomically: a 16-bit PNG for .png (labels up
    to 65535, else ValueError), a uint16 or uint32 TIFF for .tif/.tiff."""
    from qmed.io.files import write_atomic

    path = Path(path)
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError("label map has negative values")
    if path.suffix.lower() in TIFF_EXTENSIONS:
        import tifffile

        arr = labels.astype(np.uint16 if top <= 65535 else np.uint32)
        write_atomic(path, lambda p: tifffile.imwrite(p, arr, compression="zlib"))
        return
    if top > 65535:
        raise ValueError(f"{top} labels do not fit a 16-bit PNG; write a .tif")
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint16))
    write_atomic(path, lambda p: img.save(p, format="PNG"))
