"""Reading images, masks and probability maps: real files written with PIL / tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw

from qmed.errors import QmedInputError
from qmed.io.images import read_array, read_image, read_mask, read_probability, write_mask_png, write_probability_png


# --------------------------------------------------------------------------------------- helpers
def _ramp(h: int = 6, w: int = 8, top: int = 255, dtype=np.uint8) -> np.ndarray:
    """Values 0..top spread over an HxW grid (both ends present)."""
    return np.round(np.linspace(0, top, h * w)).reshape(h, w).astype(dtype)


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _discs(h: int = 96, w: int = 96, discs=((24, 24, 10), (64, 30, 12), (48, 70, 14)), value: int = 255) -> np.ndarray:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    for x, y, r in discs:
        d.ellipse([x - r, y - r, x + r, y + r], fill=value)
    return np.array(m)


def _assert_one_line_naming(err: QmedInputError, path: Path) -> None:
    msg = str(err)
    assert path.name in msg, msg
    assert "\n" not in msg and "\r" not in msg, msg
    assert err.path is not None and err.path.name == path.name


# ------------------------------------------------------------------------------------ read_image
GRAY8 = _ramp()
RGB8 = np.stack([_ramp(), _ramp()[::-1], np.full((6, 8), 7, np.uint8)], axis=-1)
ALPHA = np.full((6, 8), 128, np.uint8)
G12 = _ramp(top=4095, dtype=np.uint16)  # 12-bit camera data in a 16-bit container
G16_1000 = _ramp(top=1000, dtype=np.uint16)
F01 = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
FWIDE = np.linspace(-3.0, 5.0, 48, dtype=np.float32).reshape(6, 8)


def _write_gray8(p):
    return _png(p / "gray8.png", GRAY8)


def _write_rgb(p):
    return _png(p / "rgb.png", RGB8)


def _write_rgba(p):
    return _png(p / "rgba.png", np.dstack([RGB8, ALPHA]))


def _write_palette(p):
    im = Image.fromarray(RGB8).quantize(colors=256, method=Image.Quantize.MAXCOVERAGE)
    assert im.mode == "P"
    im.save(p / "palette.png")
    return p / "palette.png"


def _write_gray16_png(p):
    return _png(p / "gray16.png", G12)


def _write_tiff16(p):
    tifffile.imwrite(p / "gray16.tif", G16_1000)
    return p / "gray16.tif"


def _write_tiff_lzw(p):
    pytest.importorskip("imagecodecs")
    tifffile.imwrite(p / "lzw.tif", G16_1000, compression="lzw")
    return p / "lzw.tif"


def _write_tiff_f01(p):
    tifffile.imwrite(p / "f01.tif", F01)
    return p / "f01.tif"


def _write_tiff_fwide(p):
    tifffile.imwrite(p / "fwide.tiff", FWIDE)
    return p / "fwide.tiff"


def _write_1x1(p):
    return _png(p / "one.png", np.array([[200]], np.uint8))


def _palette_expected():
    im = Image.fromarray(RGB8).quantize(colors=256, method=Image.Quantize.MAXCOVERAGE).convert("RGB")
    return np.asarray(im, np.float32) / 255.0


IMAGE_CASES = [
    # id, writer, expected shape, expected values (or callable)
    ("gray8_png", _write_gray8, (6, 8, 1), lambda: GRAY8[..., None] / 255.0),
    ("rgb_png", _write_rgb, (6, 8, 3), lambda: RGB8 / 255.0),
    ("rgba_png_alpha_dropped", _write_rgba, (6, 8, 3), lambda: RGB8 / 255.0),
    ("palette_png", _write_palette, (6, 8, 3), _palette_expected),
    ("gray16_png_12bit", _write_gray16_png, (6, 8, 1), lambda: G12[..., None] / 4095.0),
    ("tiff_uint16", _write_tiff16, (6, 8, 1), lambda: G16_1000[..., None] / 1023.0),
    ("tiff_lzw", _write_tiff_lzw, (6, 8, 1), lambda: G16_1000[..., None] / 1023.0),
    ("tiff_float_in_01_kept", _write_tiff_f01, (6, 8, 1), lambda: F01[..., None]),
    ("tiff_float_minmax", _write_tiff_fwide, (6, 8, 1), lambda: ((FWIDE + 3.0) / 8.0)[..., None]),
    ("one_pixel", _write_1x1, (1, 1, 1), lambda: np.array([[[200 / 255.0]]])),
]


@pytest.mark.parametrize("writer,shape,expected", [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_read_image(tmp_path, writer, shape, expected):
    path = writer(tmp_path)
    img = read_image(path)
    assert img.dtype == np.float32
    assert img.shape == shape
    assert img.flags["C_CONTIGUOUS"]
    assert 0.0 <= img.min() and img.max() <= 1.0
    np.testing.assert_allclose(img, np.asarray(expected(), np.float64), rtol=0, atol=1e-6)


def test_read_image_12bit_fills_range(tmp_path):
    img = read_image(_write_gray16_png(tmp_path))
    assert img.max() == pytest.approx(1.0)
    assert img.min() == 0.0


def test_read_image_rgba_ignores_alpha_values(tmp_path):
    a = np.dstack([RGB8, np.zeros((6, 8), np.uint8)])  # fully transparent: colour still read
    img = read_image(_png(tmp_path / "clear.png", a))
    np.testing.assert_allclose(img, RGB8 / 255.0, atol=1e-6)


def test_read_image_gray_alpha(tmp_path):
    img = read_image(_png(tmp_path / "la.png", np.dstack([GRAY8, ALPHA]), mode="LA"))
    assert img.shape == (6, 8, 1)
    np.testing.assert_allclose(img[..., 0], GRAY8 / 255.0, atol=1e-6)


def test_read_image_float_with_nan_refused(tmp_path):
    a = F01.copy()
    a[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a)
    with pytest.raises(QmedInputError, match="NaN") as ei:
        read_image(tmp_path / "nan.tif")
    _assert_one_line_naming(ei.value, tmp_path / "nan.tif")


# ------------------------------------------------------------------------------------- read_mask
THREE_DISCS = _discs()
INSTANCES = np.zeros((20, 30), np.uint16)
INSTANCES[2:6, 2:6] = 1
INSTANCES[2:6, 6:10] = 2  # touches 1: a label map keeps them apart
INSTANCES[10:18, 3:9] = 7  # non-sequential label
INSTANCES[12:15, 20:28] = 300  # needs 16 bits


def _binary(v, dtype):
    a = np.zeros((10, 12), dtype)
    a[2:5, 3:7] = v
    a[7:9, 8:11] = v
    return a


MASK_CASES = [
    # id, array, expected foreground, expected number of objects, expected labels (None: don't care)
    ("zero_one_u8", _binary(1, np.uint8), _binary(1, np.uint8) > 0, 2, None),
    ("zero_255_u8", _binary(255, np.uint8), _binary(1, np.uint8) > 0, 2, None),
    ("zero_65535_u16", _binary(65535, np.uint16), _binary(1, np.uint8) > 0, 2, None),
    ("instance_labels_u16", INSTANCES, INSTANCES > 0, 4, INSTANCES.astype(np.int32)),
    ("discs_connected_components", THREE_DISCS, THREE_DISCS > 0, 3, None),
    ("empty", np.zeros((9, 7), np.uint8), np.zeros((9, 7), bool), 0, np.zeros((9, 7), np.int32)),
    ("rgb_identical_channels", np.dstack([_binary(255, np.uint8)] * 3), _binary(1, np.uint8) > 0, 2, None),
]


@pytest.mark.parametrize(
    "arr,fg_expected,n_objects,labels_expected", [c[1:] for c in MASK_CASES], ids=[c[0] for c in MASK_CASES]
)
def test_read_mask(tmp_path, arr, fg_expected, n_objects, labels_expected):
    path = _png(tmp_path / "mask.png", arr)
    fg, labels = read_mask(path)
    assert fg.dtype == np.bool_ and labels.dtype == np.int32
    assert fg.shape == labels.shape == fg_expected.shape
    np.testing.assert_array_equal(fg, fg_expected)
    np.testing.assert_array_equal(labels > 0, fg)
    assert len(np.unique(labels[labels > 0])) == n_objects
    if labels_expected is not None:
        np.testing.assert_array_equal(labels, labels_expected)


def test_read_mask_binary_components_are_8_connected(tmp_path):
    a = np.zeros((6, 6), np.uint8)
    a[1, 1] = a[2, 2] = 255  # diagonal neighbours: one object
    a[4, 4] = 255
    _, labels = read_mask(_png(tmp_path / "diag.png", a))
    assert labels.max() == 2
    assert labels[1, 1] == labels[2, 2] != labels[4, 4]


def test_read_mask_float_tiff_binary_and_labels(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", _binary(1, np.float32))
    fg, labels = read_mask(tmp_path / "f.tif")
    np.testing.assert_array_equal(fg, _binary(1, np.uint8) > 0)
    tifffile.imwrite(tmp_path / "lab.tif", INSTANCES.astype(np.float32))
    _, labels = read_mask(tmp_path / "lab.tif")
    np.testing.assert_array_equal(labels, INSTANCES)


def _write_rgb_mask(p):
    a = np.dstack([_binary(255, np.uint8), np.zeros((10, 12), np.uint8), _binary(255, np.uint8)])
    return _png(p / "colour_mask.png", a)


def _write_jpeg_mask(p):
    Image.fromarray(_discs()).save(p / "jpeg_mask.jpg", quality=75)
    return p / "jpeg_mask.jpg"


def _write_jpeg_mask_tiny(p):
    tiny = _discs(discs=((10, 10, 2), (40, 12, 3), (70, 60, 2), (20, 80, 3)))
    Image.fromarray(tiny).save(p / "tiny_mask.jpeg", quality=75)
    return p / "tiny_mask.jpeg"


def _write_jpeg_as_png_name(p):
    # JPEG bytes behind a .png name: PIL decodes by content; still refused.
    Image.fromarray(_discs()).save(p / "sneaky_mask.png", format="JPEG", quality=75)
    return p / "sneaky_mask.png"


def _write_jpeg_resaved_png(p):
    # A JPEG'd mask later converted to PNG: the artefacts stay; the content check catches it.
    Image.fromarray(_discs()).save(p / "tmp.jpg", quality=75)
    Image.open(p / "tmp.jpg").save(p / "resaved_mask.png")
    return p / "resaved_mask.png"


def _write_fractional_float(p):
    a = _binary(1, np.float32)
    a[0, 0] = 0.5
    tifffile.imwrite(p / "frac_mask.tif", a)
    return p / "frac_mask.tif"


def _write_negative_labels(p):
    a = _binary(3, np.int16)
    a[0, 0] = -1
    tifffile.imwrite(p / "neg_mask.tif", a)
    return p / "neg_mask.tif"


def _write_nan_mask(p):
    a = _binary(1, np.float32)
    a[0, 0] = np.nan
    tifffile.imwrite(p / "nan_mask.tif", a)
    return p / "nan_mask.tif"


BAD_MASK_CASES = [
    ("rgb_different_channels", _write_rgb_mask, "channels"),
    ("jpeg_q75", _write_jpeg_mask, "JPEG"),
    ("jpeg_tiny_objects", _write_jpeg_mask_tiny, "JPEG"),
    ("jpeg_bytes_png_name", _write_jpeg_as_png_name, "JPEG"),
    ("jpeg_resaved_as_png", _write_jpeg_resaved_png, "JPEG"),
    ("float_fractional", _write_fractional_float, "fractional"),
    ("negative_labels", _write_negative_labels, "negative"),
    ("nan", _write_nan_mask, "NaN"),
]


@pytest.mark.parametrize("writer,words", [c[1:] for c in BAD_MASK_CASES], ids=[c[0] for c in BAD_MASK_CASES])
def test_read_mask_refused(tmp_path, writer, words):
    path = writer(tmp_path)
    with pytest.raises(QmedInputError, match=words) as ei:
        read_mask(path)
    _assert_one_line_naming(ei.value, path)


def test_write_mask_png_round_trip(tmp_path):
    m = THREE_DISCS > 0
    write_mask_png(tmp_path / "out" / "m.png", m)
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "m.png")), np.where(m, 255, 0))
    fg, labels = read_mask(tmp_path / "out" / "m.png")
    np.testing.assert_array_equal(fg, m)
    assert labels.max() == 3
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # no temp files left


# ------------------------------------------------------------------------- read_array: bad files
def _zero_bytes(p):
    (p / "zero.png").write_bytes(b"")
    return p / "zero.png"


def _truncated_png(p):
    _png(p / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    data = (p / "full.png").read_bytes()
    (p / "cut.png").write_bytes(data[: len(data) // 2])
    return p / "cut.png"


def _truncated_tiff(p):
    tifffile.imwrite(p / "full.tif", np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16))
    data = (p / "full.tif").read_bytes()
    (p / "cut.tif").write_bytes(data[: len(data) // 2])
    return p / "cut.tif"


def _corrupt_png(p):
    (p / "garbage.png").write_bytes(b"this is not an image\n" * 20)
    return p / "garbage.png"


def _unsupported_ext(p):
    (p / "anim.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    return p / "anim.gif"


def _missing(p):
    return p / "does_not_exist.png"


def _folder(p):
    (p / "folder.png").mkdir()
    return p / "folder.png"


BAD_FILE_CASES = [
    ("zero_bytes", _zero_bytes, "empty"),
    ("truncated_png", _truncated_png, "truncated or corrupt"),
    ("truncated_tiff", _truncated_tiff, "truncated or corrupt"),
    ("corrupt_png", _corrupt_png, "cannot be decoded"),
    ("unsupported_extension", _unsupported_ext, "unsupported file type"),
    ("missing", _missing, "does not exist"),
    ("folder", _folder, "not a file"),
]


@pytest.mark.parametrize("writer,words", [c[1:] for c in BAD_FILE_CASES], ids=[c[0] for c in BAD_FILE_CASES])
@pytest.mark.parametrize("reader", [read_array, read_image, read_mask, read_probability], ids=lambda f: f.__name__)
def test_bad_files(tmp_path, writer, words, reader):
    path = writer(tmp_path)
    with pytest.raises(QmedInputError, match=words) as ei:
        reader(path)
    _assert_one_line_naming(ei.value, path)


def test_error_names_path_with_spaces_and_unicode(tmp_path):
    folder = tmp_path / "my data" / "ñúcleos"
    folder.mkdir(parents=True)
    path = _truncated_png(folder)
    with pytest.raises(QmedInputError) as ei:
        read_image(path)
    assert str(path) in str(ei.value)


# ------------------------------------------------------------------------------ read_probability
U16 = np.array([[0, 65535, 32768, 1]], np.uint16)
PROB_CASES = [
    ("uint8", lambda p: _png(p / "p8.png", GRAY8), GRAY8 / 255.0),
    ("uint8_binary_01", lambda p: _png(p / "p01.png", _binary(1, np.uint8)), _binary(1, np.uint8).astype(float)),
    ("uint16", lambda p: _png(p / "p16.png", U16), U16 / 65535.0),
    ("float_01", lambda p: (tifffile.imwrite(p / "pf.tif", F01), p / "pf.tif")[1], F01),
]


@pytest.mark.parametrize("writer,expected", [c[1:] for c in PROB_CASES], ids=[c[0] for c in PROB_CASES])
def test_read_probability(tmp_path, writer, expected):
    prob = read_probability(writer(tmp_path))
    assert prob.dtype == np.float32
    assert prob.shape == expected.shape
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-6)


def test_write_probability_png_round_trip(tmp_path):
    prob = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 101)
    write_probability_png(tmp_path / "prob.png", prob)
    back = read_probability(tmp_path / "prob.png")
    np.testing.assert_allclose(back, prob, atol=1 / 65535)


def _prob_nan(p):
    a = F01.copy()
    a[1, 1] = np.nan
    tifffile.imwrite(p / "pnan.tif", a)
    return p / "pnan.tif"


def _prob_above_one(p):
    tifffile.imwrite(p / "pbig.tif", F01 * 1.5)
    return p / "pbig.tif"


def _prob_rgb(p):
    return _png(p / "prgb.png", RGB8)


@pytest.mark.parametrize(
    "writer,words",
    [(_prob_nan, "NaN"), (_prob_above_one, r"expected \[0, 1\]"), (_prob_rgb, "channels")],
    ids=["nan", "float_above_one", "rgb"],
)
def test_read_probability_refused(tmp_path, writer, words):
    path = writer(tmp_path)
    with pytest.raises(QmedInputError, match=words) as ei:
        read_probability(path)
    _assert_one_line_naming(ei.value, path)


def test_atomic_writes_get_the_umask_mode(tmp_path):
    """mkstemp's 0600 must not leak into outputs: with umask 022 a written file is 0644."""
    import importlib
    import os
    import stat

    import qmed.io.files as fileio

    old = os.umask(0o022)
    try:
        importlib.reload(fileio)  # the module reads the umask once, at import
        fileio.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
        importlib.reload(fileio)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
