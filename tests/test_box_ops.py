"""Box geometry and the integral codec against hand-computed values."""

import math

import pytest
import torch

from meddet.models.box_ops import (
    aligned_giou,
    aligned_iou,
    bbox2distance,
    box_iou,
    distance2bbox,
    grid_anchors,
    integral,
)


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    iou = box_iou(a, b)
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 1 / 4, 0.0]])
    torch.testing.assert_close(iou, expected)
    assert box_iou(a, torch.zeros(0, 4)).shape == (2, 0)


def test_aligned_iou_and_giou_hand_values():
    p = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 4]])
    t = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [0, 0, 4, 4]])
    torch.testing.assert_close(aligned_iou(p, t), torch.tensor([1 / 7, 0.0, 1.0]))
    # Row 0: enclosing box [0,0,3,3] has area 9 -> GIoU = 1/7 - (9 - 7)/9.
    # Row 1: disjoint unit squares, enclosing [0,0,3,1] area 3 -> 0 - (3 - 2)/3.
    expected = torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0])
    torch.testing.assert_close(aligned_giou(p, t), expected)


def test_distance_codec_round_trip_and_clamps():
    pts = torch.tensor([[10.0, 20.0], [0.0, 0.0]])
    boxes = torch.tensor([[4.0, 15.0, 30.0, 21.0], [-1.0, -2.0, 3.0, 40.0]])
    dist = bbox2distance(pts, boxes)
    torch.testing.assert_close(dist, torch.tensor([[6.0, 5.0, 20.0, 1.0], [1.0, 2.0, 3.0, 40.0]]))
    torch.testing.assert_close(distance2bbox(pts, dist), boxes)
    # GFL clamps DFL targets just below reg_max so the right-hand bin exists.
    clamped = bbox2distance(pts, boxes, max_dis=16.0, eps=0.1)
    assert clamped.max().item() == pytest.approx(15.9)
    clipped = distance2bbox(pts, dist, max_shape=(32, 25))
    torch.testing.assert_close(clipped, torch.tensor([[4.0, 15.0, 25.0, 21.0], [0, 0, 3, 32.0]]))


def test_integral_one_hot_and_two_bin():
    reg_max = 16
    logits = torch.full((4, reg_max + 1), -1e4)
    logits[0, 5] = 0.0  # one-hot at bin 5 -> distance 5
    logits[1, 3] = logits[1, 4] = 0.0  # equal mass on bins 3 and 4 -> 3.5
    logits[2, 2], logits[2, 7] = math.log(0.25), math.log(0.75)  # 0.25*2 + 0.75*7 = 5.75
    logits[3] = 0.0  # uniform -> mean of 0..16 = 8
    out = integral(logits.reshape(1, -1), reg_max)
    torch.testing.assert_close(out, torch.tensor([[5.0, 3.5, 5.75, 8.0]]))
    with pytest.raises(ValueError, match="4\\*\\(reg_max\\+1\\)"):
        integral(torch.zeros(3, 10), reg_max)


def test_grid_anchors_layout():
    (a,) = grid_anchors([(2, 3)], [8], anchor_scale=8.0)
    assert a.shape == (6, 4)
    # mmdetection's GFL layout: centres on cell corners (x * stride), side 8 * stride = 64.
    torch.testing.assert_close(a[0], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    torch.testing.assert_close(a[1], torch.tensor([-24.0, -32.0, 40.0, 32.0]))  # row-major
    torch.testing.assert_close(a[3], torch.tensor([-32.0, -24.0, 32.0, 40.0]))
    (b,) = grid_anchors([(1, 1)], [16], anchor_scale=2.0, center_offset=0.5)
    torch.testing.assert_close(b[0], torch.tensor([-8.0, -8.0, 24.0, 24.0]))
