"""QFL, DFL and GIoU against the formulas of the GFL paper on hand-made tensors."""

import math

import torch

from meddet.models.losses import (
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
    weighted_sum,
)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _qfl(logit: float, y: float, beta: float = 2.0) -> float:
    s = _sig(logit)
    return -abs(y - s) ** beta * ((1 - y) * math.log(1 - s) + y * math.log(s))


def test_qfl_hand_values():
    logits = torch.tensor([[0.5, -1.0], [2.0, -3.0], [-0.2, 1.5]])
    labels = torch.tensor([0, 2, 1])  # 2 == num_classes: background
    scores = torch.tensor([0.8, 0.9, 0.3])  # the background row's score is ignored
    loss = quality_focal_loss(logits, labels, scores, beta=2.0)
    expected = torch.tensor([
        _qfl(0.5, 0.8) + _qfl(-1.0, 0.0),
        _qfl(2.0, 0.0) + _qfl(-3.0, 0.0),
        _qfl(-0.2, 0.0) + _qfl(1.5, 0.3),
    ])
    torch.testing.assert_close(loss, expected)


def test_qfl_is_zero_at_its_target_and_bce_for_beta_zero():
    y = 0.7
    logit = math.log(y / (1 - y))  # sigmoid(logit) == y: the focal factor |y - σ|^β vanishes
    loss = quality_focal_loss(torch.tensor([[logit, -30.0]]), torch.tensor([0]), torch.tensor([y]))
    assert loss.item() < 1e-10
    # β = 0 turns QFL into plain binary cross-entropy with soft targets.
    bce = -(0.3 * math.log(1 - _sig(0.4)) + 0.7 * math.log(_sig(0.4)))
    loss0 = quality_focal_loss(torch.tensor([[0.4]]), torch.tensor([0]), torch.tensor([0.7]),
                               beta=0.0)
    assert abs(loss0.item() - bce) < 1e-6


def test_dfl_between_two_bins():
    logits = torch.tensor([[0.1, 0.5, 1.2, -0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([2.3, 1.0])
    s = logits.softmax(1)
    # -((y_r - y) log S_l + (y - y_l) log S_r): y = 2.3 -> 0.7 log S_2 + 0.3 log S_3;
    # an integer target puts all weight on its own bin.
    expected = torch.stack([
        -(0.7 * s[0, 2].log() + 0.3 * s[0, 3].log()),
        -s[1, 1].log(),
    ])
    torch.testing.assert_close(distribution_focal_loss(logits, target), expected)


def test_dfl_minimised_by_the_two_bin_distribution():
    # The minimiser puts mass 0.7 / 0.3 on bins 2 / 3; its integral recovers y = 2.3 exactly.
    logits = torch.full((1, 5), -1e4)
    logits[0, 2], logits[0, 3] = math.log(0.7), math.log(0.3)
    loss = distribution_focal_loss(logits, torch.tensor([2.3]))
    entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert abs(loss.item() - entropy) < 1e-5
    assert abs((logits.softmax(1) @ torch.arange(5.0)).item() - 2.3) < 1e-5


def test_giou_loss_hand_values():
    p = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]])
    t = torch.tensor([[0.0, 0, 2, 2], [2, 0, 3, 1]])
    torch.testing.assert_close(giou_loss(p, t), torch.tensor([0.0, 1 + 1 / 3]))


def test_weighted_sum():
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert weighted_sum(loss).item() == 6.0
    assert weighted_sum(loss, torch.tensor([0.5, 0.0, 1.0]), 2.0).item() == 1.75
