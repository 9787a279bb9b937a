import pytest
import torch

from qmed.models.projection import DropEdge, EdgeProjection


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_identity_on_rgb_at_init(mode):
    torch.manual_seed(0)
    m = EdgeProjection(mid_channels=16)
    m.train() if mode == "train" else m.eval()
    x = torch.randn(3, 4, 20, 24) * 2 + 0.5
    with torch.no_grad():
        out = m(x)
    assert out.shape == (3, 3, 20, 24)
    assert torch.allclose(out, x[:, :3], atol=1e-6)


def test_gradients_reach_all_parameters():
    torch.manual_seed(0)
    m = EdgeProjection(mid_channels=8).train()
    x = torch.rand(2, 4, 16, 16)
    target = torch.rand(2, 3, 16, 16)
    loss = ((m(x) - target) ** 2).mean()
    loss.backward()
    # first backward: the zero-initialised 1x1 conv gets a gradient (and blocks the rest, by design)
    assert m.conv1.weight.grad.abs().sum() > 0 and m.conv1.bias.grad.abs().sum() > 0
    # after one optimizer step every parameter gets a finite, non-zero gradient
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    m.zero_grad()
    ((m(x) - target) ** 2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # and the output now depends on the edge channel
    x2 = x.clone()
    x2[:, 3] = 1 - x2[:, 3]
    with torch.no_grad():
        assert not torch.allclose(m(x), m(x2))


def test_shapes_and_drop_edge():
    x = torch.rand(2, 4, 9, 7)
    assert EdgeProjection(mid_channels=4)(x).shape == (2, 3, 9, 7)
    assert torch.equal(DropEdge()(x), x[:, :3])
    with pytest.raises(ValueError):
        EdgeProjection()(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError):
        DropEdge()(torch.rand(2, 3, 8, 8))
