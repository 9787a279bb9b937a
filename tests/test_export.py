"""ONNX export and the ONNX Runtime backend (issue 21): the exportable edge channel and percentile
scaling against the default paths, an export round trip on a tiny-preset model, and torch against
ORT through `qmed predict` (sliding windows, TTA) on real DSB2018 images."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from qmed.cli.app import app
from qmed.data.batches import model_input, normalize_intensity
from qmed.io.images import read_array, read_image
from qmed.models.edge import GaborEdge

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for w in words:
        assert w in res.output, res.output


def real_images(fluo_subset, n=3):
    files = sorted((fluo_subset["val"] / "images").iterdir())[:n]
    return files, [read_image(f) for f in files]


def discs(h: int = 128, w: int = 160) -> torch.Tensor:
    """Bright discs on an exactly flat background: the FFT path's rounding noise makes the flat
    part's response slightly positive, the direct convolution exactly 0 (the case normalise_sorted's
    POSITIVE_TOL is for: with a strict > 0 the two maps differ by about 0.1 here)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    for cy, cx in ((20, 30), (30, 50), (40, 25)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 0.8
    return torch.from_numpy(img)[None, None].expand(1, 3, h, w).contiguous()


def test_conv_edge_matches_fft(fluo_subset):
    fft, conv = GaborEdge(), GaborEdge(mode="conv")
    torch.manual_seed(0)
    batch = [torch.rand(2, 3, 64, 48), torch.cat([torch.zeros(1, 3, 32, 32), torch.full((1, 3, 32, 32), 0.7)]), discs()]
    _, imgs = real_images(fluo_subset)
    batch.append(
        torch.stack(
            [
                torch.from_numpy(np.repeat(normalize_intensity(i, "percentile"), 3, 2).transpose(2, 0, 1).copy())
                for i in imgs
            ]
        )
    )
    for x in batch:
        a, b = fft(x), conv(x)
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-5
    assert torch.equal(conv(batch[1]), torch.zeros(2, 1, 32, 32))  # constant images: exact zeros, as the FFT path
    # the batched, sort-based percentile is torch.nanquantile's, image by image (away from zero responses)
    m = fft.max_response(batch[0].mean(1, keepdim=True))
    m[1] = -1.0  # an image with no positive response
    assert torch.allclose(conv.normalise_sorted(m), fft.normalise(m), atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        GaborEdge(mode="dft")


def test_percentile_scaling_matches_numpy(fluo_subset):
    from qmed.segment.export import PercentileScaling

    _, imgs = real_images(fluo_subset, 2)
    rgb = np.random.default_rng(0).random((40, 64, 3), dtype=np.float32)
    flat = np.full((32, 32, 1), 0.3, np.float32)
    scale = PercentileScaling((1.0, 99.8))
    for img in [*imgs, rgb, flat]:  # gray (1 channel in the file, 3 equal ones in the graph), RGB, flat
        ref = model_input(img, _cfg_percentile())
        got = (
            scale(torch.from_numpy(np.repeat(img, 3 // img.shape[2], 2).transpose(2, 0, 1).copy())[None])[0]
            .numpy()
            .transpose(1, 2, 0)
        )
        assert np.abs(got - ref).max() < 1e-5


def _cfg_percentile():
    from qmed.config import resolve_config

    return resolve_config("tiny", None, {"data": {"normalize": "percentile"}})


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny-preset checkpoint with percentile scaling, random weights, and the edge channel and
    head made to matter (the projection's zero-initialised 1x1 conv and the head scaled up)."""
    from qmed.io import checkpoints
    from qmed.models.segmenter import build

    cfg = _cfg_percentile()
    cfg.predict.tile, cfg.predict.batch_size = 192, 4  # small windows: a 256 px image goes through 4 overlapping ones
    torch.manual_seed(0)
    m = build(cfg.model, pretrained=False)
    torch.nn.init.normal_(m.projection.conv1.weight, std=0.5)
    with torch.no_grad():
        for p in m.net.segmentation_head.parameters():
            p.mul_(20.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    checkpoints.save(path, {"config": cfg.model_dump(), "model": m.state_dict(), "ema_model": None})
    return path


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    out.write_bytes(b"in the way")
    one_line_error(run("export", "--model", tiny_ckpt, "--out", out), "--force")  # refused before any work
    assert out.read_bytes() == b"in the way"
    res = run("export", "--model", tiny_ckpt, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    return out


def test_export_round_trip(exported, tiny_ckpt, fluo_subset):
    import onnx
    import onnxruntime as ort

    from qmed.segment.checkpoint import load_model
    from qmed.segment.predict import pad_multiple

    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert min(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not [n for n in model.graph.node if n.op_type in ("DFT", "STFT")]  # the conv path, not FFT
    side = json.loads(exported.with_name("model.onnx.json").read_text())
    embedded = json.loads({p.key: p.value for p in model.metadata_props}["qmed"])
    assert side == embedded
    for key in ("threshold", "training_crop", "tta", "tile", "preprocessing", "config", "input", "output"):
        assert key in side, key
    assert side["preprocessing"]["normalize"] == "percentile" and side["training_crop"] == 64 and side["tile"] == 192
    assert side["zoom"] == 1.0
    assert side["check"]["max_abs_diff_vs_torch"] < 1e-4

    # the whole graph on images as read (normalised inside it) against the torch path, batched and at two sizes
    torch_model, cfg, _ = load_model(tiny_ckpt)
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    _, imgs = real_images(fluo_subset, 2)
    imgs += [imgs[0][:96, :160], discs()[0, :1].numpy().transpose(1, 2, 0)]
    for group in (imgs[:2], imgs[2:3], imgs[3:]):
        raw = np.stack([np.repeat(i, 3, 2).transpose(2, 0, 1) for i in group])
        got = sess.run(["probability"], {"image": raw})[0]
        x = torch.stack([torch.from_numpy(model_input(i, cfg).transpose(2, 0, 1).copy()) for i in group])
        with torch.no_grad():
            ref = torch.sigmoid(torch_model(pad_multiple(x)[0])).numpy()
        assert got.shape == ref.shape == (len(group), 1, *group[0].shape[:2])
        assert np.abs(got - ref).max() < 1e-3
        assert (ref > 0.5).any() and (ref < 0.5).any()  # not a degenerate model: both classes present


def test_ort_predict_matches_torch_with_tta_and_windows(exported, tiny_ckpt, fluo_subset, tmp_path):
    files, _ = real_images(fluo_subset, 2)
    inp = tmp_path / "in"
    inp.mkdir()
    for f in files:
        (inp / f.name).write_bytes(f.read_bytes())
    common = ["--input", inp, "--tta", "--quiet"]
    assert run("predict", "--model", tiny_ckpt, "--out", tmp_path / "t", *common).exit_code == 0
    res = run("predict", "--backend", "onnxruntime", "--model", exported, "--out", tmp_path / "o", *common)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert meta["backend"] == "onnxruntime" and meta["tta"] == 7 and meta["tile"] == 192
    for f in files:
        pt = read_array(tmp_path / "t" / "probabilities" / f"{f.stem}.png") / 65535.0
        po = read_array(tmp_path / "o" / "probabilities" / f"{f.stem}.png") / 65535.0
        assert np.abs(pt - po).max() < 1e-3
        mt, mo = read_array(tmp_path / "t" / f"{f.stem}.png") > 0, read_array(tmp_path / "o" / f"{f.stem}.png") > 0
        assert np.all(np.abs(pt[mt != mo] - 0.5) < 1e-3)  # masks differ only at the threshold
        assert 0 < mt.mean() < 1


def test_export_and_backend_errors_are_one_line(tmp_path, tiny_ckpt, exported, fluo_subset, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    one_line_error(run("export", "--model", tmp_path / "nope", "--out", tmp_path / "m.onnx"), "does not exist")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    one_line_error(run("export", "--model", foreign, "--out", tmp_path / "m.onnx"), "not a qmed checkpoint")
    img = fluo_subset["val"] / "images"
    one_line_error(
        run("predict", "--backend", "onnxruntime", "--model", tiny_ckpt, "--input", img, "--out", tmp_path / "p"),
        "qmed export",
    )
    one_line_error(
        run("predict", "--backend", "torch", "--model", exported, "--input", img, "--out", tmp_path / "p"),
        "onnxruntime",
    )
    one_line_error(
        run("predict", "--backend", "tf", "--model", tiny_ckpt, "--input", img, "--out", tmp_path / "p"),
        "unknown --backend",
    )
    other = tmp_path / "other.onnx"  # an ONNX file qmed did not write
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(other))
    one_line_error(
        run("predict", "--model", other, "--input", img, "--out", tmp_path / "p"),
        "not an ONNX model written by qmed export",
    )
    monkeypatch.setitem(sys.modules, "onnx", None)  # as when the extra is not installed
    one_line_error(run("export", "--model", tiny_ckpt, "--out", tmp_path / "m.onnx"), "pip install 'qmed[onnx]'")


def test_export_without_percentile_scaling(tmp_path):
    """A run as `auto` trains stained tissue on a CPU (data.normalize=none, the plain U-Net decoder):
    no scaling part, ORT runs the whole graph from "image"."""
    from qmed.config import resolve_config
    from qmed.io import checkpoints
    from qmed.models.segmenter import build
    from qmed.segment.export import export_onnx
    from qmed.segment.onnx_backend import load_onnx

    cfg = resolve_config("tiny", None, {"model": {"arch": "unet"}})
    torch.manual_seed(1)
    m = build(cfg.model, pretrained=False).eval()
    torch.nn.init.normal_(m.projection.conv1.weight, std=0.5)
    checkpoints.save(tmp_path / "t.pt", {"config": cfg.model_dump(), "model": m.state_dict(), "ema_model": None})
    meta = export_onnx(tmp_path / "t.pt", tmp_path / "t.onnx")
    assert meta["preprocessing"] == {
        "normalize": "none",
        "norm_percentiles": [1.0, 99.8],
        "stain_target": None,
        "in_graph": True,
        "normalized_tensor": None,
    }
    forward, cfg2, _ = load_onnx(tmp_path / "t.onnx")
    assert forward.input_name == "image" and cfg2.model_dump() == cfg.model_dump()
    x = discs(64, 96).repeat(2, 1, 1, 1)
    with torch.no_grad():
        assert (forward(x) - torch.sigmoid(m(x))).abs().max() < 1e-4


def test_export_with_reinhard_normalisation(tmp_path, histo_subset):
    """data.normalize=reinhard: the stain normalisation is the graph's first part, and the whole graph
    on a raw H&E image matches the torch path (normalised in numpy by the same torch code)."""
    import onnxruntime as ort

    from qmed.config import resolve_config
    from qmed.data.batches import model_input
    from qmed.io import checkpoints
    from qmed.io.images import read_image
    from qmed.models.segmenter import build
    from qmed.segment.export import export_onnx

    target = (66.0, 19.0, -23.7, 12.4, 13.2, 14.4)
    cfg = resolve_config(
        "tiny", None, {"model": {"arch": "unet"}, "data": {"normalize": "reinhard", "stain_target": target}}
    )
    torch.manual_seed(2)
    m = build(cfg.model, pretrained=False).eval()
    torch.nn.init.normal_(m.projection.conv1.weight, std=0.5)
    checkpoints.save(tmp_path / "r.pt", {"config": cfg.model_dump(), "model": m.state_dict(), "ema_model": None})
    meta = export_onnx(tmp_path / "r.pt", tmp_path / "r.onnx")
    assert (
        meta["preprocessing"]["stain_target"] == list(target)
        and meta["preprocessing"]["normalized_tensor"] == "normalized"
    )
    assert meta["graph"][0].startswith("Reinhard stain normalisation")
    img = read_image(sorted((histo_subset["train"] / "images").glob("*.png"))[0])[:128, :160]
    x = torch.from_numpy(model_input(img, cfg).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        ref = torch.sigmoid(m(x)).numpy()
    sess = ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["probability"], {"image": img.transpose(2, 0, 1)[None].astype(np.float32).copy()})[0]
    assert np.abs(got - ref).max() < 1e-3
