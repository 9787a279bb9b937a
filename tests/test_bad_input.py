"""Bad input across inspect, train, predict and evaluate: a table of cases.

Each case builds files in a temporary folder and runs one CLI command. A case that must fail expects
exit code 2, a single-line message naming the file and the problem, no traceback, and no output
written. A case that must work (16-bit and float TIFF, 1x1 images, images smaller than the crop,
non-image files mixed in, paths with spaces and unicode) expects exit code 0.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from qmed.cli.app import app

runner = CliRunner()
RNG = np.random.default_rng(0)


def blob_mask(h=64, w=64):
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (min(h, w) // 5) ** 2).astype(np.uint8) * 255
    m[2:6, w - 8 : w - 3] = 255
    return m


def image_for(mask):
    noise = RNG.integers(0, 30, mask.shape)
    return np.clip(noise + (mask > 0) * 180, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n=4, size=(64, 64), name="img") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = blob_mask(*size)
        Image.fromarray(image_for(m)).save(root / "images" / f"{name}{i}.png")
        Image.fromarray(m).save(root / "masks" / f"{name}{i}.png")
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    data = make_dataset(root / "data", n=4)
    res = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(data),
            "--out",
            str(root / "run"),
            "--quiet",
            "--no-report",
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output
    return root / "run"


# Each builder gets (tmp, model_run) and returns (argv, the file or folder the message must name,
# the output path that must not exist afterwards or None).
def _inspect(tmp, mutate):
    d = make_dataset(tmp / "d")
    named = mutate(d)
    return ["inspect", str(d)], named, None


def _train(tmp, mutate, extra=()):
    d = make_dataset(tmp / "d")
    named = mutate(d)
    out = tmp / "run"
    return ["train", "--preset", "tiny", "--data", str(d), "--out", str(out), "--quiet", *extra], named, out


def _predict(tmp, model_run, make_input):
    inp = tmp / "in"
    inp.mkdir()
    named = make_input(inp)
    out = tmp / "preds"
    return ["predict", "--model", str(model_run), "--input", str(inp), "--out", str(out)], named, out


def _evaluate(tmp, mutate_pred, mutate_truth=lambda d: None):
    truth = make_dataset(tmp / "truth")
    pred = tmp / "pred"
    shutil.copytree(truth / "masks", pred)
    named = mutate_pred(pred) or mutate_truth(truth)
    out = tmp / "scores.json"
    return ["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(out)], named, out


def corrupt_png(d):
    p = d / "images" / "img1.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    return p


def truncated_png(d):
    p = d / "images" / "img2.png"
    truncate(p)
    return p


def zero_byte(d):
    p = d / "images" / "img0.png"
    p.write_bytes(b"")
    return p


def image_without_mask(d):
    (d / "masks" / "img3.png").unlink()
    return d / "images" / "img3.png"


def mask_without_image(d):
    (d / "images" / "img3.png").unlink()
    return d / "masks" / "img3.png"


def mask_other_size(d):
    p = d / "masks" / "img1.png"
    Image.fromarray(blob_mask(48, 64)).save(p)
    return p


def jpeg_mask(d):
    p = d / "masks" / "img2.png"
    p.unlink()
    q = d / "masks" / "img2.jpg"
    Image.fromarray(blob_mask()).save(q, quality=75)
    return q


def rgb_mask(d):
    p = d / "masks" / "img1.png"
    m = blob_mask()
    Image.fromarray(np.stack([m, np.roll(m, 3, axis=1), m * 0], axis=2)).save(p)
    return p


def empty_images_folder(d):
    for p in (d / "images").iterdir():
        p.unlink()
    return d / "images"


def truncated_tiff_pred(pred):
    p = pred / "img1.png"
    m = np.array(Image.open(p))
    p.unlink()
    q = pred / "img1.tif"
    tifffile.imwrite(q, m, compression="lzw")
    truncate(q)
    return q


def nan_probability(pred):
    p = pred / "img0.png"
    p.unlink()
    prob = np.full((64, 64), 0.2, np.float32)
    prob[5, 5] = np.nan
    tifffile.imwrite(pred / "img0.tif", prob)
    return pred / "img0.tif"


def missing_prediction(pred):
    (pred / "img2.png").unlink()
    return "img2"


def three_channel_truth(truth):
    return rgb_mask(truth)


def one_image_only(d):
    for i in (1, 2, 3):
        (d / "images" / f"img{i}.png").unlink()
        (d / "masks" / f"img{i}.png").unlink()
    return d


def unknown_config_key(tmp):
    cfg = tmp / "my config.yaml"
    cfg.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    return cfg


def wrong_type_config(tmp):
    cfg = tmp / "cfg.yaml"
    cfg.write_text("data:\n  crop: big\n")
    return cfg


def foreign_checkpoint(tmp, model_run):
    import torch

    state = torch.load(model_run / "checkpoints" / "best.pt", weights_only=False)
    state["config"]["model"]["encoder"] = "resnet18"
    p = tmp / "foreign.pt"
    torch.save(state, p)
    return p


def not_a_checkpoint(tmp):
    p = tmp / "weights.pt"
    p.write_bytes(b"garbage" * 100)
    return p


FAILING = {
    "inspect: corrupt PNG": lambda t, m: _inspect(t, corrupt_png),
    "inspect: zero-byte image": lambda t, m: _inspect(t, zero_byte),
    "inspect: image without mask": lambda t, m: _inspect(t, image_without_mask),
    "inspect: JPEG-compressed mask": lambda t, m: _inspect(t, jpeg_mask),
    "inspect: empty folder": lambda t, m: _inspect(t, empty_images_folder),
    "train: truncated PNG": lambda t, m: _train(t, truncated_png),
    "train: mask without image": lambda t, m: _train(t, mask_without_image),
    "train: mask of another size": lambda t, m: _train(t, mask_other_size),
    "train: RGB mask": lambda t, m: _train(t, rgb_mask),
    "train: one image, no --val": lambda t, m: _train(t, one_image_only),
    "train: config with unknown key": lambda t, m: (lambda c: _train(t, lambda d: c, ("--config", str(c))))(
        unknown_config_key(t)
    ),
    "train: config with wrong type": lambda t, m: (lambda c: _train(t, lambda d: c, ("--config", str(c))))(
        wrong_type_config(t)
    ),
    "predict: zero-byte image": lambda t, m: _predict(t, m, lambda i: (i / "a.png").write_bytes(b"") or i / "a.png"),
    "predict: truncated image among good ones": lambda t, m: _predict(
        t,
        m,
        lambda i: (
            Image.fromarray(image_for(blob_mask())).save(i / "good.png"),
            Image.fromarray(image_for(blob_mask())).save(i / "zbad.png"),
            truncate(i / "zbad.png"),
            i / "zbad.png",
        )[-1],
    ),
    "predict: empty input folder": lambda t, m: _predict(t, m, lambda i: i),
    "evaluate: truncated LZW TIFF prediction": lambda t, m: _evaluate(t, truncated_tiff_pred),
    "evaluate: NaN in probability map": lambda t, m: _evaluate(t, nan_probability),
    "evaluate: missing prediction": lambda t, m: _evaluate(t, missing_prediction),
    "evaluate: 3-channel truth mask": lambda t, m: _evaluate(t, lambda p: None, three_channel_truth),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_bad_input_fails_cleanly(case, tmp_path, model_run):
    argv, named, out = FAILING[case](tmp_path, model_run)
    res = runner.invoke(app, argv)
    msg = res.output.strip()
    assert res.exit_code == 2, f"{case}: exit {res.exit_code}: {msg}"
    assert "Traceback" not in msg
    last = msg.splitlines()[-1]
    assert last.startswith("error: "), msg
    named_str = named.name if isinstance(named, Path) else str(named)
    assert named_str in last, f"{case}: message does not name {named_str}: {last}"
    if out is not None:
        assert not out.exists(), f"{case}: partial output {out} left behind"
    leftovers = [p for p in tmp_path.rglob(".*") if ".tmp" in p.name or p.name.startswith(".preds")]
    assert not leftovers, leftovers


def test_checkpoint_from_another_architecture(tmp_path, model_run):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(image_for(blob_mask())).save(inp / "a.png")
    for ckpt in (foreign_checkpoint(tmp_path, model_run), not_a_checkpoint(tmp_path)):
        res = runner.invoke(app, ["predict", "--model", str(ckpt), "--input", str(inp), "--out", str(tmp_path / "p")])
        assert res.exit_code == 2 and ckpt.name in res.output.strip().splitlines()[-1], res.output
        assert not (tmp_path / "p").exists()


# --- inputs that must work -------------------------------------------------------------------


def test_16bit_and_float_tiff_train_and_predict(tmp_path, model_run):
    d = tmp_path / "tiff data"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    for i in range(3):
        m = blob_mask()
        img16 = image_for(m).astype(np.uint16) * 16  # 12-bit camera data
        tifffile.imwrite(d / "images" / f"s{i}.tif", img16)
        tifffile.imwrite(d / "masks" / f"s{i}.tif", (m > 0).astype(np.uint16) * (i + 1))
    res = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(d),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--no-report",
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output
    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "f.tif", image_for(blob_mask()).astype(np.float32) / 255.0)
    tifffile.imwrite(inp / "g.tiff", image_for(blob_mask()).astype(np.float32) * 7.5)  # outside [0, 1]: min-max scaled
    res = runner.invoke(app, ["predict", "--model", str(model_run), "--input", str(inp), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["f.png", "g.png"]


def test_tiny_images_are_padded(tmp_path, model_run):
    d = tmp_path / "small"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    for i, size in enumerate([(40, 50), (1, 1), (30, 64)]):
        m = np.zeros(size, np.uint8)
        m[size[0] // 2, size[1] // 2] = 255
        Image.fromarray(image_for(m)).save(d / "images" / f"t{i}.png")
        Image.fromarray(m).save(d / "masks" / f"t{i}.png")
    res = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(d),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--no-report",
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["predict", "--model", str(model_run), "--input", str(d / "images"), "--out", str(tmp_path / "p")]
    )
    assert res.exit_code == 0, res.output
    assert np.array(Image.open(tmp_path / "p" / "t1.png")).shape == (1, 1)


def test_non_image_files_ignored_with_warning(tmp_path, caplog):
    d = make_dataset(tmp_path / "d")
    (d / "images" / "notes.txt").write_text("hello")
    (d / "masks" / "Thumbs.db").write_bytes(b"\0")
    res = runner.invoke(app, ["inspect", str(d)])
    assert res.exit_code == 0, res.output
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "notes.txt" in warned and "ignoring" in warned and "Thumbs.db" in warned


def test_unicode_path_with_spaces(tmp_path, model_run):
    d = make_dataset(tmp_path / "mes données" / "ñúcleos train")
    res = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(d),
            "--out",
            str(tmp_path / "sortie é"),
            "--quiet",
            "--no-report",
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tmp_path / "sortie é"),
            "--input",
            str(d / "images"),
            "--out",
            str(tmp_path / "prédictions"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--pred", str(tmp_path / "prédictions"), "--truth", str(d)])
    assert res.exit_code == 0, res.output
