"""The Table II ladder's losses (0.5 Dice + 0.3 Focal + 0.2 Boundary, and Dice alone) against hand-computed values.

Conventions checked: soft Dice pooled over the batch with smooth 1; focal -(1 - p_t)^2 log p_t
averaged over pixels; boundary mean(p · φ) with Kervadec's signed distance φ (outside: distance to
the object, inside: -(distance to the background - 1), empty target: 0)."""

import math

import numpy as np
import pytest
import torch

from qmed.segment.losses import HybridLoss, build_loss, signed_distance


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_signed_distance_by_hand():
    # 1 x 4, object in the first two pixels: inside -(2-1), -(1-1); outside 1 and 2 px from the object.
    assert signed_distance(np.array([[1, 1, 0, 0]])).tolist() == [[-1.0, 0.0, 1.0, 2.0]]
    # one object pixel in a 3 x 3 image: 0 on it, 1 beside it, sqrt(2) on the diagonals
    phi = signed_distance(np.pad([[1]], 1))
    r2 = math.sqrt(2)
    assert np.allclose(phi, [[r2, 1, r2], [1, 0, 1], [r2, 1, r2]])
    assert not signed_distance(np.zeros((3, 3))).any()  # no boundary: zeros, as Kervadec's code


def test_hybrid_one_object_by_hand():
    # logits 0 -> p = 0.5 everywhere; target [1, 1, 0, 0].
    # Dice: (2·1 + 1) / (2 + 2 + 1) = 0.6 -> 0.4.   Focal: p_t = 0.5 -> 0.25·ln 2 = 0.17328680.
    # Boundary: φ = [-1, 0, 1, 2] -> mean(0.5·φ) = 0.5·2/4 = 0.25.
    # L = 0.5·0.4 + 0.3·0.17328680 + 0.2·0.25 = 0.2 + 0.05198604 + 0.05 = 0.30198604
    loss = HybridLoss()
    value = loss(torch.zeros(1, 1, 1, 4), t([[1, 1, 0, 0]]))
    assert value.item() == pytest.approx(0.30198604, abs=1e-6)
    assert loss.last["dice"] == pytest.approx(0.4, abs=1e-6)
    assert loss.last["focal"] == pytest.approx(0.17328680, abs=1e-6)
    assert loss.last["boundary"] == pytest.approx(0.25, abs=1e-6)
    assert build_loss("dice")(torch.zeros(1, 1, 1, 4), t([[1, 1, 0, 0]])).item() == pytest.approx(0.4, abs=1e-6)


def test_hybrid_empty_target_by_hand():
    # target all 0; logits [[ln 3, 0], [0, -ln 3]] -> p = [[0.75, 0.5], [0.5, 0.25]].
    # Dice: (0 + 1) / (2 + 0 + 1) = 1/3 -> 2/3.
    # Focal (t = 0, so p_t = 1 - p): p²·(-ln(1 - p)) = 0.5625·ln 4 = 0.77979058, 0.25·ln 2 = 0.17328680 (twice),
    #   0.0625·ln(4/3) = 0.01798013; mean = 1.14434431 / 4 = 0.28608608.
    # Boundary: no object, φ = 0 -> 0.
    # L = 0.5·0.66666667 + 0.3·0.28608608 + 0 = 0.33333333 + 0.08582582 = 0.41915916
    loss = HybridLoss()
    logits = torch.tensor([[math.log(3), 0.0], [0.0, -math.log(3)]])[None, None]
    value = loss(logits, torch.zeros(1, 1, 2, 2))
    assert value.item() == pytest.approx(0.41915916, abs=1e-6)
    assert loss.last["focal"] == pytest.approx(0.28608608, abs=1e-6)
    assert loss.last["boundary"] == 0.0


def test_hybrid_batch_with_an_empty_sample_by_hand():
    # two 1 x 4 samples, logits 0: targets [1, 1, 0, 0] and [0, 0, 0, 0].
    # Dice pooled over the batch: (2·1 + 1) / (4 + 2 + 1) = 3/7 -> 4/7 = 0.57142857.
    # Focal: 0.17328680 at every pixel.  Boundary: 0.5·(-1 + 0 + 1 + 2 + 0·4) / 8 = 0.125.
    # L = 0.28571429 + 0.05198604 + 0.025 = 0.36270033
    target = torch.tensor([[[[1.0, 1, 0, 0]]], [[[0.0, 0, 0, 0]]]])
    assert HybridLoss()(torch.zeros(2, 1, 1, 4), target).item() == pytest.approx(0.36270033, abs=1e-6)


def test_hybrid_boundary_term_in_2d_and_gradient():
    # 3 x 3, one object pixel in the middle, p = 0.5: mean(0.5·φ) = 0.5·(4 + 4·sqrt 2)/9 = 0.53649190
    loss = HybridLoss()
    logits = torch.zeros(1, 1, 3, 3, requires_grad=True)
    loss(logits, torch.from_numpy(np.pad([[1.0]], 1)).float()[None, None]).backward()
    assert loss.last["boundary"] == pytest.approx(0.53649190, abs=1e-6)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
