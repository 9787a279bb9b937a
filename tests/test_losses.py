import math

import numpy as np
import pytest
import torch

from qmed.segment.losses import DiceBCELoss, StabilizedLoss, boundary_distance, build_loss

L3 = math.log(3.0)
LN43 = math.log(4 / 3)
LN2 = math.log(2.0)


def case_a():
    # sigmoid(ln 3) = 0.75, sigmoid(0) = 0.5, sigmoid(-ln 3) = 0.25
    logits = torch.tensor([[[[L3, 0.0], [-L3, -L3]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    return logits, target


def test_stabilized_hand_case_2x2():
    logits, target = case_a()
    loss_fn = StabilizedLoss()
    loss = loss_fn(logits, target)
    # P = [.75, .5, .25, .25] (clamps inactive), T = [1, 0, 0, 0]
    # TP = .75, FP = .5 + .25 + .25 = 1, FN = .25, u = ΣP + ΣT = 1.75 + 1 = 2.75
    # dice = (2·.75 + 1) / (2.75 + 1) = 2.5 / 3.75 = 2/3              -> L_dice = 1/3
    # tversky = (.75 + 1) / (.75 + .7·1 + .3·.25 + 1) = 1.75 / 2.525  -> L_tv = .775 / 2.525
    # r = 1/4 -> pos_weight = (3/4)/(1/4) = 3
    # BCE = mean[3·(-ln .75), -ln .5, -ln .75, -ln .75] = (5 ln(4/3) + ln 2) / 4
    l_dice, l_tv, l_bce = 1 / 3, 0.775 / 2.525, (5 * LN43 + LN2) / 4
    expected = 0.5 * l_dice + 0.3 * l_bce + 0.2 * l_tv
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss_fn.last["dice"] == pytest.approx(l_dice, abs=1e-6)
    assert loss_fn.last["tversky"] == pytest.approx(l_tv, abs=1e-6)
    assert loss_fn.last["bce"] == pytest.approx(l_bce, abs=1e-6)
    assert loss_fn.last["pos_weight"] == pytest.approx(3.0)
    assert loss_fn.last["loss"] == pytest.approx(expected, abs=1e-6)


def test_stabilized_per_sample_mean_batch_of_two():
    la, ta = case_a()
    logits = torch.cat([la, torch.zeros_like(la)])
    target = torch.cat([ta, torch.zeros_like(ta)])
    loss_fn = StabilizedLoss()
    loss = loss_fn(logits, target)
    # sample A as above: dice 2/3, tversky 1.75/2.525
    # sample B: P = .5 everywhere, T = 0: TP = 0, FP = 2, FN = 0, u = 2
    #   dice = 1/3, tversky = 1 / (.7·2 + 1) = 1/2.4
    # L_dice = 1 - (2/3 + 1/3)/2 = 1/2; L_tv = 1 - (1.75/2.525 + 1/2.4)/2
    # r = 1/8 -> pos_weight = 7; BCE = [7 ln(4/3) + ln2 + 2 ln(4/3) + 4 ln2] / 8 = (9 ln(4/3) + 5 ln2) / 8
    l_dice, l_tv, l_bce = 0.5, 1 - (1.75 / 2.525 + 1 / 2.4) / 2, (9 * LN43 + 5 * LN2) / 8
    assert loss.item() == pytest.approx(0.5 * l_dice + 0.3 * l_bce + 0.2 * l_tv, abs=1e-6)
    assert loss_fn.last["pos_weight"] == pytest.approx(7.0)


def test_stabilized_all_empty_batch():
    loss_fn = StabilizedLoss()
    loss = loss_fn(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    # r = 0 -> pos_weight = 1 (documented); P = .5: TP = 0, FP = 2, FN = 0, u = 2
    # dice = 1/3, tversky = 1/2.4, BCE = ln 2
    expected = 0.5 * (2 / 3) + 0.3 * LN2 + 0.2 * (1 - 1 / 2.4)
    assert torch.isfinite(loss)
    assert loss_fn.last["pos_weight"] == 1.0
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_stabilized_perfect_prediction_shows_clamping():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    logits = (target * 2 - 1) * 100.0
    loss_fn = StabilizedLoss()
    loss = loss_fn(logits, target)
    # logits clamped to ±10: p = σ(10), q = σ(-10) = 1 - p ≈ 4.54e-5 (eps = 1e-7 clamp inactive)
    # TP = 2p, FP = 2q, FN = 2q, u = 2p + 2q + 2 = 4
    # dice = (4p + 1)/5 -> L_dice = 4q/5;  tversky = (2p + 1)/(2p + 1.4q + .6q + 1) = (2p+1)/3 -> L_tv = 2q/3
    # BCE on raw logits ±100: ln(1 + e^-100) ≈ 0;  r = 1/2 -> pos_weight = 1
    q = 1 / (1 + math.exp(10.0))
    assert loss_fn.last["dice"] == pytest.approx(4 * q / 5, rel=1e-2)
    assert loss_fn.last["tversky"] == pytest.approx(2 * q / 3, rel=1e-2)
    assert loss_fn.last["dice"] > 0 and loss_fn.last["tversky"] > 0  # not exactly 0: the clamp is visible
    assert loss_fn.last["bce"] < 1e-30
    assert loss.item() == pytest.approx(0.5 * 4 * q / 5 + 0.2 * 2 * q / 3, rel=1e-2)
    # the other reading (BCE on clamped logits): BCE = ln(1 + e^-10) ≈ 4.54e-5 per pixel
    # (rel 5e-2: torch evaluates it as (1-t)·z + ln(1+e^-|z|) + max(-z, 0), i.e. -10 + 10.0000454 in float32)
    loss_fn2 = StabilizedLoss(bce_on_clamped=True)
    loss_fn2(logits, target)
    assert loss_fn2.last["bce"] == pytest.approx(math.log1p(math.exp(-10.0)), rel=5e-2)


def test_pos_weight_clamps():
    loss_fn = StabilizedLoss()
    sparse = torch.zeros(1, 1, 32, 32)
    sparse[0, 0, 5, 5] = 1  # r = 1/1024 -> (1-r)/r = 1023 -> clamped to 50
    loss_fn(torch.zeros_like(sparse), sparse)
    assert loss_fn.last["pos_weight"] == 50.0
    dense = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])  # r = 3/4 -> 1/3 -> clamped to 1
    loss_fn(torch.zeros_like(dense), dense)
    assert loss_fn.last["pos_weight"] == 1.0
    mid = torch.zeros(1, 1, 2, 5)
    mid[0, 0, 0, 0] = 1  # r = 1/10 -> 9, inside the clamp range
    loss_fn(torch.zeros_like(mid), mid)
    assert loss_fn.last["pos_weight"] == pytest.approx(9.0)


def test_gradient_finite_for_huge_logits():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    signs = torch.where(torch.rand(2, 1, 8, 8) > 0.5, 1.0, -1.0)
    logits = (signs * 1e4).requires_grad_()
    loss = StabilizedLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    # confidently wrong pixels still get a gradient (from BCE on raw logits)
    wrong = (signs > 0) != (target > 0)
    assert wrong.any() and (logits.grad[wrong] != 0).all()


def test_dice_bce_hand_case():
    logits, target = case_a()
    loss_fn = DiceBCELoss()
    loss = loss_fn(logits, target)
    # dice = (2·.75 + 1)/(1.75 + 1 + 1) = 2/3; BCE (no pos_weight) = (3 ln(4/3) + ln 2)/4
    expected = 0.5 * (1 / 3) + 0.5 * (3 * LN43 + LN2) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # batch-pooled Dice: add an empty sample with logits 0 (P = .5 on 4 pixels)
    loss2 = loss_fn(torch.cat([logits, torch.zeros_like(logits)]), torch.cat([target, torch.zeros_like(target)]))
    # dice = (2·.75 + 1)/(1.75 + 2 + 1 + 1) = 2.5/5.75; BCE = (3 ln(4/3) + ln2 + 4 ln2)/8
    expected2 = 0.5 * (1 - 2.5 / 5.75) + 0.5 * (3 * LN43 + 5 * LN2) / 8
    assert loss2.item() == pytest.approx(expected2, abs=1e-6)


def test_dice_bce_per_image_dice_hand_case():
    logits, target = case_a()
    # sample 1 as in test_dice_bce_hand_case (Dice 2/3); sample 2 empty with logits 0: P = .5 on 4
    # pixels, Dice = (0 + 1)/(2 + 0 + 1) = 1/3. Mean of the two Dice losses: (1/3 + 2/3)/2 = 1/2
    fn = DiceBCELoss(per_image=True)
    fn(torch.cat([logits, torch.zeros_like(logits)]), torch.cat([target, torch.zeros_like(target)]))
    assert fn.last["dice"] == pytest.approx(0.5, abs=1e-6)
    assert fn.last["bce"] == pytest.approx((3 * LN43 + 5 * LN2) / 8, abs=1e-6)  # BCE unchanged
    # one sample: the same as the pooled Dice
    assert DiceBCELoss(per_image=True)(logits, target).item() == pytest.approx(
        DiceBCELoss()(logits, target).item(), abs=1e-6
    )


def test_boundary_distance_hand_case():
    # outline rings: foreground pixels 2 and 4 (next to background) and background pixels 1 and 5
    d = boundary_distance(np.array([[0, 0, 1, 1, 1, 0]]))
    assert d.tolist() == [[1, 0, 0, 1, 0, 0]]
    assert np.isinf(boundary_distance(np.zeros((3, 3)))).all()
    assert np.isinf(boundary_distance(np.ones((3, 3)))).all()


def test_dice_bce_border_weighted_bce_hand_case():
    target = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 3)
    logits = torch.tensor([0.0, 0.0, 2.0]).view(1, 1, 1, 3)
    loss_fn = DiceBCELoss(boundary_weight=1.0, boundary_sigma=1.0)
    loss_fn(logits, target)
    # d = [0, 0, 1] -> w = [2, 2, 1 + e^-0.5]; bce = [ln 2, ln 2, ln(1 + e^2)]
    w3 = 1 + math.exp(-0.5)
    expected = (4 * LN2 + w3 * math.log(1 + math.e**2)) / (4 + w3)
    assert loss_fn.last["bce"] == pytest.approx(expected, abs=1e-6)
    # no outline (empty or all-foreground target): w = 1, the plain BCE
    for t in (torch.zeros_like(target), torch.ones_like(target)):
        assert DiceBCELoss(boundary_weight=5.0)(logits, t).item() == pytest.approx(
            DiceBCELoss()(logits, t).item(), abs=1e-6
        )


def test_build_loss():
    assert isinstance(build_loss("stabilized"), StabilizedLoss)
    assert isinstance(build_loss("dice_bce"), DiceBCELoss)
    assert build_loss("stabilized", alpha=0.5).alpha == 0.5
    with pytest.raises(ValueError):
        build_loss("focal")
    with pytest.raises(ValueError):
        StabilizedLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


def test_trainer_builds_the_configured_border_weights():
    from qmed.config import resolve_config
    from qmed.errors import QmedInputError
    from qmed.segment.losses import loss_from_config

    cfg = resolve_config("cpu", overrides=["train.boundary_weight=5", "train.boundary_sigma=2"])
    fn = loss_from_config(cfg.train)
    assert isinstance(fn, DiceBCELoss) and (fn.boundary_weight, fn.boundary_sigma) == (5.0, 2.0)
    paper = loss_from_config(resolve_config("paper").train)
    assert isinstance(paper, StabilizedLoss) and paper.max_pos_weight == 50.0
    # the border weights belong to Dice + BCE: asked for with another loss, the config refuses
    with pytest.raises(QmedInputError) as err:
        resolve_config("paper", overrides=["train.boundary_weight=5"])
    # one line, without pydantic's "Value error, " prefix
    assert str(err.value).endswith(
        "config field 'train': boundary_weight applies to loss 'dice_bce' only, not 'stabilized'"
    )
    assert loss_from_config(resolve_config("cpu", overrides=["train.dice_per_image=true"]).train).per_image
    with pytest.raises(Exception, match="dice_per_image"):
        resolve_config("paper", overrides=["train.dice_per_image=true"])
