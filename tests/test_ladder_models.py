"""The Table II ladder's networks and HQ-UNet: built through `build` (edge channel + projection front
end), forward and backward at 64 x 64, and the HQ-UNet / classical twin parameter match."""

import pytest
import torch

from qmed.config import resolve_config
from qmed.errors import QmedInputError
from qmed.models.common import count_parameters
from qmed.models.hq_unet import circuit_parameters
from qmed.models.segmenter import build


def model(arch: str, **model_over):
    # attention None: smp's SCSE on the last block's (absent) skip never gets a gradient
    cfg = resolve_config("tiny", overrides={"model": {"arch": arch, "attention": None, **model_over}})
    torch.manual_seed(0)
    return build(cfg.model)


@pytest.mark.parametrize(
    "arch,over",
    [
        ("attention_unet", {}),
        ("attention_unet", {"dropout": 0.2, "input_mode": "stem4"}),
        ("ms_attention_unet", {}),
        ("hq_unet", {}),
        ("hq_unet", {"hq": {"core": "classical"}}),
        ("hq_unet", {"hq": {"placement": "pooled"}, "input_mode": "none"}),
    ],
)
def test_forward_backward_64(arch, over):
    m = model(arch, **over).train()
    x = torch.rand(2, 3, 64, 64)
    y = m(x)
    assert y.shape == (2, 1, 64, 64) and torch.isfinite(y).all()
    y.mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None for n, g in grads.items() if n.startswith("net.")), [
        n for n, g in grads.items() if g is None
    ]
    if arch == "hq_unet":
        core = [g for n, g in grads.items() if ".bottleneck.layer.circuit." in n]
        assert core and any(g.abs().sum() > 0 for g in core)  # gradient reaches the circuit (or the twin's MLP)


def test_ladder_parts_are_where_the_docstring_says():
    att, ms = model("attention_unet"), model("ms_attention_unet", dropout=0.1)
    names = {type(m).__name__ for m in att.modules()}
    assert "AttentionGate" in names and "ASPP" not in names and "SqueezeExcite" not in names
    names = {type(m).__name__ for m in ms.modules()}
    assert {"AttentionGate", "ASPP", "SqueezeExcite"} <= names
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in ms.modules()) == 5  # one per decoder block


def test_hq_unet_and_classical_twin_have_equal_size():
    quantum, twin, plain = model("hq_unet"), model("hq_unet", hq={"core": "classical"}), model("unet")
    nq, nt, n_plain = count_parameters(quantum), count_parameters(twin), count_parameters(plain)
    core_q = count_parameters(quantum.net.decoder.bottleneck.layer.circuit)
    core_t = count_parameters(twin.net.decoder.bottleneck.layer.circuit)
    assert core_q == circuit_parameters(4, 2, "strong") == 24
    assert abs(core_t - core_q) <= 0.1 * core_q  # 22 vs 24: the closest an integer MLP width gets
    assert abs(nt - nq) / nq < 0.001  # whole networks: well within a few percent
    assert abs(n_plain - nq) / nq < 0.01  # the plain U-Net lacks only the compress/expand layer


def test_dropout_refused_for_smp_archs():
    with pytest.raises(QmedInputError, match="model.dropout"):
        model("unet", dropout=0.2)
