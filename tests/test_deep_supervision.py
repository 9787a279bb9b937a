"""UNet++ deep supervision (model.deep_supervision, train.deep_supervision_weights): auxiliary heads
on the nested nodes X^{0,1..3} in training mode only, their loss weighed around the configured loss,
and the default model left exactly as it was."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from qmed.config import resolve_config
from qmed.errors import QmedInputError
from qmed.models.segmenter import build, nested_nodes
from qmed.segment.losses import (
    DeepSupervisionLoss,
    DiceBCELoss,
    DiceLoss,
    StabilizedLoss,
    loss_from_config,
    main_logits,
)

AUX_KEYS = {f"aux_heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")}


def tiny(deep_supervision: bool, **model):
    return resolve_config("tiny", overrides={"model": {"deep_supervision": deep_supervision, **model}})


def test_default_is_off_and_the_default_state_dict_is_unchanged():
    cfg = resolve_config("tiny")
    assert cfg.model.deep_supervision is False and cfg.train.deep_supervision_weights == [0.5, 0.25, 0.125]
    plain = build(cfg.model, pretrained=False)
    assert not hasattr(plain, "aux_heads") and not any(k.startswith("aux_heads") for k in plain.state_dict())
    ds = build(tiny(True).model, pretrained=False)
    assert set(ds.state_dict()) - set(plain.state_dict()) == AUX_KEYS
    assert set(plain.state_dict()) <= set(ds.state_dict())
    assert isinstance(loss_from_config(cfg.train), StabilizedLoss)  # no wrapper unless asked


def test_supervised_nodes_are_the_papers_top_level_nested_nodes():
    """smp's x_{d}_{l}: l the resolution. X^{0,3}, X^{0,2}, X^{0,1} are x_1_3, x_2_3, x_3_3, all at half
    the input size (the level x_0_4 upsamples to the input for the main head)."""
    model = build(tiny(True).model, pretrained=False)
    assert model.aux_nodes == nested_nodes(model.net) == ("x_1_3", "x_2_3", "x_3_3")
    shapes = {}
    for name, block in model.net.decoder.blocks.items():
        block.register_forward_hook(lambda _m, _a, out, name=name: shapes.__setitem__(name, tuple(out.shape[-2:])))
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert (
        {shapes[n] for n in model.aux_nodes} == {(32, 32)}
        and shapes["x_0_3"] == (32, 32)
        and shapes["x_0_4"] == (64, 64)
    )
    assert shapes["x_0_1"] == (8, 8) and shapes["x_0_2"] == (16, 16)  # smp's x_0_j: the main path's lower levels
    assert [h.in_channels for h in model.aux_heads] == [
        model.net.decoder.blocks[n].out_channels for n in model.aux_nodes
    ]
    assert all(h.kernel_size == (1, 1) and h.out_channels == 1 for h in model.aux_heads)


def test_train_mode_returns_main_and_three_auxiliary_outputs_eval_mode_the_main_only():
    torch.manual_seed(0)
    model = build(tiny(True).model, pretrained=False)
    x = torch.rand(2, 3, 64, 64)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 4
    assert all(o.shape == (2, 1, 64, 64) for o in out)
    blocks = model.net.decoder.blocks
    assert not any(blocks[n]._forward_hooks for n in model.aux_nodes)  # the hooks live for one call only
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 64, 64)


def test_main_output_is_the_plain_models_output():
    """Same weights: the deep-supervision model's main output is the plain model's, in both modes."""
    torch.manual_seed(0)
    plain = build(tiny(False).model, pretrained=False)
    ds = build(tiny(True).model, pretrained=False)
    missing, unexpected = ds.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == AUX_KEYS and not unexpected
    x = torch.rand(2, 3, 64, 64)
    plain.train(), ds.train()
    torch.testing.assert_close(ds(x)[0], plain(x))
    plain.eval(), ds.eval()
    with torch.no_grad():
        torch.testing.assert_close(ds(x), plain(x))


def test_auxiliary_heads_get_gradients():
    model = build(tiny(True).model, pretrained=False).train()
    y = (torch.rand(2, 1, 64, 64) > 0.7).float()
    loss = loss_from_config(tiny(True).train, deep_supervision=True)(model(torch.rand(2, 3, 64, 64)), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux_heads.parameters())


def test_weighted_loss_by_hand():
    """Soft Dice (smooth 1) on an all-foreground 2x2 target, T = 1: logit 0 (p = 1/2) gives
    1 - (2·2 + 1)/(2 + 4 + 1) = 2/7, logit +100 (p = 1) gives 1 - 9/9 = 0, logit -100 (p = 0) gives
    1 - 1/5 = 4/5. Weights 1 (main), 1/2, 1/4, 1/8:
    L = (2/7 + 0.5·0 + 0.25·4/5 + 0.125·2/7) / 1.875."""
    t = torch.ones(1, 1, 2, 2)
    zero, up, down = torch.zeros_like(t), torch.full_like(t, 100.0), torch.full_like(t, -100.0)
    loss = DeepSupervisionLoss(DiceLoss(), [0.5, 0.25, 0.125])
    expected = (2 / 7 + 0.5 * 0 + 0.25 * 4 / 5 + 0.125 * 2 / 7) / 1.875
    got = loss((zero, up, down, zero), t)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert loss.last["loss"] == pytest.approx(expected, rel=1e-6) and loss.last["loss_main"] == pytest.approx(
        2 / 7, rel=1e-6
    )
    # A single tensor (eval-style output) is the wrapped loss alone.
    assert float(loss(zero, t)) == pytest.approx(2 / 7, rel=1e-6)
    with pytest.raises(ValueError, match="3 deep-supervision weights"):
        loss((zero, up), t)


@pytest.mark.parametrize("base", [DiceBCELoss(), StabilizedLoss(), DiceLoss()], ids=["dice_bce", "stabilized", "dice"])
def test_wrapper_is_the_weighted_mean_of_per_output_losses(base):
    torch.manual_seed(1)
    t = (torch.rand(2, 1, 8, 8) > 0.6).float()
    outs = tuple(torch.randn(2, 1, 8, 8) * s for s in (1.0, 2.0, 0.5, 3.0))
    w = [0.5, 0.25, 0.125]
    per = [float(base(o, t)) for o in outs]
    expected = (per[0] + sum(wk * lk for wk, lk in zip(w, per[1:]))) / (1 + sum(w))
    got = DeepSupervisionLoss(base, w)(outs, t)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert main_logits(outs) is outs[0] and main_logits(outs[0]) is outs[0]


def test_hybrid_loss_through_the_config():
    cfg = resolve_config("tiny", overrides={"model": {"deep_supervision": True}, "train": {"loss": "hybrid"}})
    loss = loss_from_config(cfg.train, deep_supervision=True)
    t = torch.zeros(1, 1, 8, 8)
    t[..., 2:6, 2:6] = 1
    outs = tuple(torch.randn(1, 1, 8, 8) for _ in range(4))
    per = [float(loss.base(o, t)) for o in outs]
    assert float(loss(outs, t)) == pytest.approx(
        (per[0] + 0.5 * per[1] + 0.25 * per[2] + 0.125 * per[3]) / 1.875, rel=1e-5
    )


def test_config_refuses_other_archs_and_bad_weights():
    for arch in ("unet", "attention_unet", "hq_unet"):
        with pytest.raises(QmedInputError, match="deep_supervision needs arch 'unetplusplus'") as info:
            tiny(True, arch=arch)
        assert "\n" not in str(info.value)
    tiny(False, arch="unet")  # off: any arch
    with pytest.raises(QmedInputError, match="deep_supervision_weights"):
        resolve_config("tiny", overrides={"train": {"deep_supervision_weights": [0.5, 0.25]}})
    with pytest.raises(QmedInputError, match="deep_supervision_weights"):
        resolve_config("tiny", overrides={"train": {"deep_supervision_weights": [0.5, -0.25, 0.1]}})


def test_tiny_train_with_deep_supervision_loads_and_predicts(fluo_subset, tmp_path):
    from PIL import Image

    from qmed.cli.app import app
    from qmed.segment.checkpoint import load_model
    from qmed.segment.predict import forward_views

    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            str(a)
            for a in (
                "train",
                "--preset",
                "tiny",
                "--data",
                fluo_subset["train"],
                "--val",
                fluo_subset["val"],
                "--out",
                out,
                "--quiet",
                "--set",
                "model.deep_supervision=true",
                "--epochs",
                1,
            )
        ],
    )
    assert res.exit_code == 0, res.output
    state = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert state["config"]["model"]["deep_supervision"] is True and AUX_KEYS <= set(state["model"])
    row = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(row) == 2 and np.isfinite(float(dict(zip(row[0].split(","), row[1].split(",")))["train_loss"]))
    model, cfg, _ = load_model(out)
    assert cfg.model.deep_supervision and not model.training
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
        assert forward_views(model, torch.rand(1, 3, 64, 64), tta=7, amp=False).shape == (
            1,
            1,
            64,
            64,
        )  # TTA: main only
    one = tmp_path / "one"  # one image keeps it quick
    one.mkdir()
    first = min((fluo_subset["val"] / "images").iterdir())
    shutil.copy(first, one / first.name)
    preds = tmp_path / "preds"
    res = runner.invoke(app, [str(a) for a in ("predict", "--model", out, "--input", one, "--out", preds, "--quiet")])
    assert res.exit_code == 0, res.output
    names = [first.stem]
    assert sorted(p.stem for p in preds.glob("*.png")) == names
    assert set(np.unique(np.array(Image.open(preds / f"{names[0]}.png")))) <= {0, 255}
    assert json.loads((preds / "predict.json").read_text())["n_images"] == len(names)
