import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qmed.models.edge import GaborEdge, edge_channel_numpy, gabor_bank, gabor_kernel, gabor_params


def test_bank_is_24_filters_of_the_paper():
    params = gabor_params()
    assert len(params) == 24
    assert sorted({round(math.degrees(t), 6) for t, _ in params}) == [22.5 * i for i in range(8)]
    assert sorted({lam for _, lam in params}) == [4.0, 10.0, 20.0]


@pytest.mark.parametrize("psi", [0.0, 1.0])  # psi=1 exercises OpenCV's flipped storage order
def test_raw_kernels_match_opencv(psi):
    for theta, lambd in gabor_params():
        ours = gabor_kernel(31, 5.0, theta, lambd, 0.5, psi)
        ref = cv2.getGaborKernel((31, 31), 5.0, theta, lambd, 0.5, psi)
        assert ours.shape == (31, 31)
        assert np.allclose(ours, ref, atol=1e-12), (theta, lambd)


def test_bank_is_raw_kernels_minus_their_mean():
    raw = gabor_bank(zero_mean=False)
    bank = gabor_bank()
    assert bank.shape == (24, 1, 31, 31)
    ref = torch.from_numpy(
        np.stack([cv2.getGaborKernel((31, 31), 5.0, t, lam, 0.5, 0.0) for t, lam in gabor_params()])
    ).float()
    assert torch.allclose(raw[:, 0], ref, atol=1e-6)  # cv2 comparison is before zero-meaning
    assert torch.allclose(bank[:, 0], ref - ref.mean(dim=(1, 2), keepdim=True), atol=1e-6)
    assert bank.sum(dim=(1, 2, 3)).abs().max() < 1e-4


def test_not_trainable_and_kernels_are_buffer():
    g = GaborEdge()
    assert list(g.parameters()) == []
    assert g.kernels.shape == (24, 1, 31, 31)
    assert "kernels" not in g.state_dict()  # non-persistent: rebuilt from the constructor


def test_fft_equals_direct_conv_with_reflect_padding():
    torch.manual_seed(0)
    g = GaborEdge()
    gray = torch.rand(2, 1, 40, 53)
    direct = F.conv2d(F.pad(gray, (15, 15, 15, 15), mode="reflect"), g.kernels)
    fft = g.response(gray)
    assert fft.shape == direct.shape == (2, 24, 40, 53)
    assert torch.allclose(fft, direct, atol=1e-3 * direct.abs().max().item())
    assert torch.allclose(g.max_response(gray), direct.amax(1, keepdim=True), atol=1e-3 * direct.abs().max().item())


def test_output_shape_range_no_nan():
    torch.manual_seed(0)
    out = GaborEdge()(torch.rand(3, 3, 64, 48))
    assert out.shape == (3, 1, 64, 48)
    assert not torch.isnan(out).any()
    assert out.min() >= 0 and out.max() <= 1
    assert out.max() == 1  # robust max scaling saturates the top 1 % of positives


def test_constant_and_flat_images_give_exact_zero():
    x = torch.cat([torch.zeros(1, 3, 32, 32), torch.full((1, 3, 32, 32), 0.7), torch.ones(1, 3, 32, 32)])
    out = GaborEdge()(x)
    assert not torch.isnan(out).any()
    assert torch.equal(out, torch.zeros_like(out))


def test_strong_response_near_vertical_step_edge():
    x = torch.zeros(1, 3, 128, 128)
    x[..., 64:] = 1.0  # vertical step at column 64
    out = GaborEdge()(x)[0, 0]
    near = out[:, 56:72]  # even filters respond as ridges flanking the step
    far = torch.cat([out[:, :16], out[:, -16:]], dim=1)  # > 3σ (15 px) from the step in the flat parts
    assert near.max() > 0.9
    assert far.abs().max() < 1e-4
    # the response runs along the whole edge (rows), not just one spot
    assert (out[:, 56:72].amax(dim=1) > 0.5).all()


def test_batched_images_normalised_independently():
    x = torch.zeros(2, 3, 64, 64)
    x[0, :, :, 32:] = 1.0
    x[1, :, :, 32:] = 0.2  # same edge, 5x weaker: same normalised map
    out = GaborEdge()(x)
    assert torch.allclose(out[0], out[1], atol=1e-4)


def test_numpy_wrapper():
    img = np.zeros((40, 50, 3), np.float32)
    img[:, 25:] = 1
    e = edge_channel_numpy(img)
    assert e.shape == (40, 50) and e.dtype == np.float32
    assert np.allclose(e, edge_channel_numpy((img * 255).astype(np.uint8)), atol=1e-4)
    assert np.allclose(e, edge_channel_numpy(img[..., 0]), atol=1e-6)
