"""MC-Dropout uncertainty: on a stub whose dropout variance is known per image, the most uncertain images are picked."""

import numpy as np
import pytest
from torch import nn

from qmed.errors import QmedInputError
from qmed.experiments.active import enable_mc_dropout, mc_dropout_scores, select_most_uncertain


class Stub(nn.Module):
    """logit = dropout(c) for an image of constant intensity c: with p = 0.5 the probability is
    σ(2c) or σ(0) = 0.5 with equal chance, so its variance is (σ(2c) - 0.5)² / 4, growing with c.
    A BatchNorm layer checks that MC-Dropout leaves it in eval mode."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        assert not self.bn.training and self.drop.training
        return self.drop(x[:, :1])


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_selection_picks_the_highest_variance_images():
    intensities = [0.1, 0.9, 0.3, 0.7, 0.5, 0.0]
    images = [np.full((20, 24, 3), c, dtype=np.float32) for c in intensities]
    stub = Stub()
    scores = mc_dropout_scores(stub, images, passes=400, seed=0)
    expected = (sigmoid(2 * np.array(intensities)) - 0.5) ** 2 / 4
    assert np.allclose(scores, expected, rtol=0.25, atol=1e-6)
    assert scores[5] == 0.0  # c = 0: every pass gives 0.5
    assert select_most_uncertain(scores, 2) == [1, 3]
    assert select_most_uncertain(scores, 3) == [1, 3, 4]
    assert stub.training  # the caller's mode is restored
    np.testing.assert_array_equal(scores, mc_dropout_scores(stub, images, passes=400, seed=0))  # seeded


def test_ties_and_bounds():
    assert select_most_uncertain(np.array([0.2, 0.5, 0.5, 0.1]), 3) == [1, 2, 0]
    assert select_most_uncertain(np.array([0.2]), 5) == [0]


def test_needs_dropout_and_two_passes():
    m = nn.Sequential(nn.Conv2d(3, 1, 1))
    with pytest.raises(QmedInputError, match="dropout"):
        mc_dropout_scores(m, [np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(QmedInputError, match="2 passes"):
        mc_dropout_scores(Stub(), [np.zeros((8, 8, 3), np.float32)], passes=1)
    assert enable_mc_dropout(Stub()) == 1
