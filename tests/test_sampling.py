import numpy as np
import pytest

from qmed.data.sampling import complexity_score, complexity_weights, make_sampler


def square_map(squares, size=64):
    """Label map with one labelled axis-aligned rectangle per (r, c, h, w)."""
    lab = np.zeros((size, size), np.int32)
    for i, (r, c, h, w) in enumerate(squares, start=1):
        lab[r : r + h, c : c + w] = i
    return lab


def test_features_by_hand():
    f = complexity_score(square_map([(10, 10, 20, 20)]))
    # 20x20 square: area 400, boundary = its 4·20 - 4 = 76 rim pixels
    assert f["n_objects"] == 1 and f["fg_area"] == 400
    assert f["boundary_pixels"] == 76
    assert f["boundary_per_area"] == pytest.approx(76 / 400)
    assert f["fg_fraction"] == pytest.approx(400 / 64**2)
    assert not f["has_small"]
    # touching instances: the shared edge counts as boundary on both sides
    f2 = complexity_score(square_map([(10, 10, 20, 10), (10, 20, 20, 10)]))
    assert f2["n_objects"] == 2 and f2["boundary_pixels"] == 2 * (2 * 20 + 2 * 10 - 4)
    # image border is not a boundary: a mask filling the image has none
    assert complexity_score(np.ones((8, 8), np.int32))["boundary_pixels"] == 0
    # small object (7x7 = 49 px < 50) detected; 8x8 = 64 px is not small
    assert complexity_score(square_map([(0, 0, 7, 7)]))["has_small"]
    assert not complexity_score(square_map([(0, 0, 8, 8)]))["has_small"]
    # non-contiguous labels and bool masks
    assert complexity_score(square_map([(0, 0, 8, 8)]) * 7)["n_objects"] == 1
    assert complexity_score(square_map([(0, 0, 8, 8), (20, 20, 8, 8)]) > 0)["n_objects"] == 2


def test_empty_image():
    f = complexity_score(np.zeros((16, 16), np.int32))
    assert f == {
        "n_objects": 0,
        "fg_area": 0,
        "fg_fraction": 0.0,
        "boundary_pixels": 0,
        "boundary_per_area": 0.0,
        "min_area": 0,
        "has_small": False,
    }


def feat(n, bpa, small=False):
    return {"n_objects": n, "boundary_per_area": bpa, "has_small": small}


def test_small_structures_get_exactly_1_5x():
    w = complexity_weights([feat(3, 0.2), feat(3, 0.2, small=True), feat(5, 0.4), feat(0, 0.0)])
    assert w[1] / w[0] == pytest.approx(1.5, rel=1e-12)
    w2 = complexity_weights([feat(3, 0.2), feat(3, 0.2, small=True)], small_boost=2.0)
    assert w2[1] / w2[0] == pytest.approx(2.0, rel=1e-12)


def test_formula_and_empty_base_weight_by_hand():
    feats = [feat(0, 0.0), feat(2, 0.1), feat(4, 0.3), feat(40, 0.2, small=True)]
    w = complexity_weights(feats)
    # medians over non-empty images: n -> median(2, 4, 40) = 4; bpa -> median(.1, .3, .2) = .2
    # raw: empty 1.0
    #      1 + .5·(.1/.2) + .5·(2/4)          = 1.5
    #      1 + .5·(.3/.2) + .5·(4/4)          = 2.25
    #      (1 + .5·(.2/.2) + .5·min(10, 3))·1.5 = 3.0·1.5 = 4.5   (count capped at 3x the median)
    raw = np.array([1.0, 1.5, 2.25, 4.5])
    assert np.allclose(w, raw / raw.mean())
    assert w.mean() == pytest.approx(1.0)
    assert w[0] == pytest.approx(1.0 / raw.mean())  # the documented base weight, after mean-normalisation


def test_more_objects_or_boundary_weigh_more_from_masks():
    one = complexity_score(square_map([(5, 5, 20, 20)]))  # bpa 76/400 = .19
    four = complexity_score(square_map([(2, 2, 20, 20), (2, 30, 20, 20), (30, 2, 20, 20), (30, 30, 20, 20)]))
    thin = complexity_score(square_map([(5, 5, 10, 40)]))  # same area, boundary 96/400 = .24
    empty = complexity_score(np.zeros((64, 64), np.int32))
    w = complexity_weights([one, four, thin, empty])
    assert w[1] > w[0]  # more objects
    assert w[2] > w[0]  # more boundary per area
    assert w[3] < w[:3].min()  # empty is lightest
    assert w.mean() == pytest.approx(1.0)


def test_all_empty_dataset_and_no_images():
    w = complexity_weights([feat(0, 0.0)] * 3)
    assert np.allclose(w, 1.0)
    assert complexity_weights([]).size == 0


def test_sampler_deterministic_and_weighted():
    w = complexity_weights([feat(1, 0.1), feat(1, 0.1), feat(1, 0.1), feat(10, 0.5, small=True)])
    draws = list(make_sampler(w, 4000, seed=0))
    assert draws == list(make_sampler(w, 4000, seed=0))
    assert draws != list(make_sampler(w, 4000, seed=1))
    counts = np.bincount(draws, minlength=4) / 4000
    expected = w / w.sum()
    assert expected[3] > 2 * expected[0]
    assert np.allclose(counts, expected, atol=0.03)  # binomial sd <= 0.008 at n = 4000
    assert counts[3] > 2 * counts[0]


# -- data.sampler=hard -----------------------------------------------------------------------------


def test_hardness_weights_hand_computed():
    from qmed.data.sampling import hardness_weights

    # seen losses 0.1, 0.2, 0.4, 1.2 -> median 0.3 -> ratios 1/3, 2/3, 4/3, 4 -> clipped to [1/3, 3];
    # the unseen image (NaN) gets 1. Raw [1/3, 2/3, 4/3, 3, 1], sum 19/3, mean 19/15.
    w = hardness_weights(np.array([0.1, 0.2, 0.4, 1.2, np.nan]))
    raw = np.array([1 / 3, 2 / 3, 4 / 3, 3.0, 1.0])
    np.testing.assert_allclose(w, raw / (19 / 15))
    assert w.mean() == pytest.approx(1.0)


def test_hardness_weights_degenerate():
    from qmed.data.sampling import hardness_weights

    np.testing.assert_allclose(hardness_weights(np.full(3, np.nan)), np.ones(3))  # first epoch: uniform
    np.testing.assert_allclose(hardness_weights(np.zeros(4)), np.ones(4))  # all perfect: median 0, uniform
    assert hardness_weights(np.zeros(0)).size == 0


def test_per_sample_dice_loss_hand_computed():
    import torch

    from qmed.segment.losses import per_sample_dice_loss

    big = 40.0  # sigmoid(±40) is 1 or 0 to float precision
    t = torch.zeros(2, 1, 2, 2)
    t[0, 0, 0, :] = 1  # sample 0: 2 foreground pixels
    logits = torch.full((2, 1, 2, 2), -big)
    logits[0, 0, 0, 0] = big  # predicts 1 of the 2 -> 1 - (2*1 + 1) / (1 + 2 + 1) = 0.25
    # sample 1: empty truth, empty prediction -> 1 - (0 + 1) / (0 + 0 + 1) = 0
    np.testing.assert_allclose(per_sample_dice_loss(logits, t).numpy(), [0.25, 0.0], atol=1e-6)
