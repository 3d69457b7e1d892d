"""ATSS on hand-made grids, and against a literal loop implementation of the ATSS paper."""

import math

import torch

from meddet.models.assigner import ATSSAssigner
from meddet.models.box_ops import grid_anchors


def _two_level_anchors():
    # Level A: 4x4 cells of stride 8, centres 4, 12, 20, 28, anchors 16 px wide.
    # Level B: 2x2 cells of stride 16, centres 8, 24, anchors 32 px wide.
    levels = grid_anchors([(4, 4), (2, 2)], [8, 16], anchor_scale=2.0, center_offset=0.5)
    return torch.cat(levels), [lv.shape[0] for lv in levels]


def test_hand_computed_single_box():
    anchors, num_level = _two_level_anchors()
    gt = torch.tensor([[5.0, 0.0, 23.0, 14.0]])  # centre (14, 7), area 252
    # Candidates (topk=3 on A, but only 4 anchors on B so k=min(3,4)=3 there too):
    #   A: (12,4) d²=13, (12,12) d²=29, (20,4) d²=45        (next is (20,12) d²=61)
    #   B: (8,8) d²=37, (24,8) d²=101, (8,24) d²=325        ((24,24) d²=389)
    # IoUs: A(12,4)  [4,-4,20,12] ∩ gt = 15*12 = 180, union 328 -> 0.548780
    #       A(12,12) [4,4,20,20]  ∩ gt = 15*10 = 150, union 358 -> 0.418994
    #       A(20,4)  [12,-4,28,12] ∩ gt = 11*12 = 132, union 376 -> 0.351064
    #       B(8,8)   [-8,-8,24,24] ⊇ gt: 252 / 1024               -> 0.246094
    #       B(24,8)  [8,-8,40,24]  ∩ gt = 15*14 = 210, union 1066 -> 0.196998
    #       B(8,24)  [-8,8,24,40]  ∩ gt = 18*6 = 108, union 1168  -> 0.092466
    ious = [180 / 328, 150 / 358, 132 / 376, 252 / 1024, 210 / 1066, 108 / 1168]
    mean = sum(ious) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in ious) / 5)  # unbiased, as in mmdetection
    thr = mean + std  # 0.309066 + 0.164165 = 0.473232: only A(12,4) reaches it
    assert ious[0] >= thr > ious[1]
    res = ATSSAssigner(topk=3).assign(anchors, num_level, gt, torch.tensor([1]), num_classes=2)
    pos = res.pos_mask.nonzero().squeeze(1).tolist()
    assert pos == [1]  # row 0, column 1 of level A: centre (12, 4)
    assert res.labels[1].item() == 1 and (res.labels[res.labels != 1] == 2).all()
    assert res.gt_inds.tolist() == [0 if i == 1 else -1 for i in range(anchors.shape[0])]
    torch.testing.assert_close(res.boxes[1], gt[0])
    assert abs(res.max_iou[1].item() - 180 / 328) < 1e-6


def test_centre_must_lie_inside_the_box():
    anchors, num_level = _two_level_anchors()
    # A narrow box at the left border, centre (1.5, 5): its best candidate, anchor 0 centred at
    # (4, 4), passes the IoU threshold but its centre lies right of x2 = 3.
    gt = torch.tensor([[0.0, 0.0, 3.0, 10.0]])
    no_centre_rule = ATSSAssigner(topk=3, center_eps=-100.0)
    assert no_centre_rule.assign(anchors, num_level, gt, torch.tensor([0]), 2).pos_mask.nonzero(
    ).squeeze(1).tolist() == [0]
    res = ATSSAssigner(topk=3).assign(anchors, num_level, gt, torch.tensor([0]), 2)
    assert not res.pos_mask.any()


def test_no_boxes_means_all_background():
    anchors, num_level = _two_level_anchors()
    res = ATSSAssigner().assign(anchors, num_level, torch.zeros(0, 4),
                                torch.zeros(0, dtype=torch.long), 3)
    assert not res.pos_mask.any() and (res.labels == 3).all() and (res.gt_inds == -1).all()
    assert res.boxes.shape == (anchors.shape[0], 4)


def _reference_atss(anchors, num_level, gts, topk):
    """ATSS, Algorithm 1 of Zhang et al. 2020, written with plain Python loops."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    a_list, g_list = anchors.tolist(), gts.tolist()
    best = [(-1.0, -1)] * len(a_list)
    for g, box in enumerate(g_list):
        gx, gy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        cand, start = [], 0
        for n in num_level:
            dists = []
            for i in range(start, start + n):
                ax, ay = (a_list[i][0] + a_list[i][2]) / 2, (a_list[i][1] + a_list[i][3]) / 2
                dists.append((math.hypot(ax - gx, ay - gy), i))
            cand += [i for _, i in sorted(dists)[:topk]]
            start += n
        vals = [iou(a_list[i], box) for i in cand]
        mean = sum(vals) / len(vals)
        thr = mean + math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        for i, v in zip(cand, vals):
            ax, ay = (a_list[i][0] + a_list[i][2]) / 2, (a_list[i][1] + a_list[i][3]) / 2
            inside = min(ax - box[0], ay - box[1], box[2] - ax, box[3] - ay) > 0.01
            if v >= thr and inside and v > best[i][0]:
                best[i] = (v, g)
    return [g for _, g in best]


def test_matches_reference_loop_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    levels = grid_anchors([(16, 16), (8, 8), (4, 4)], [8, 16, 32], anchor_scale=8.0)
    anchors, num_level = torch.cat(levels), [lv.shape[0] for lv in levels]
    for _ in range(5):
        xy = torch.rand(6, 2, generator=gen) * 100
        wh = torch.rand(6, 2, generator=gen) * 60 + 4
        # Irrational-ish offsets avoid exact distance ties, where the top-k order is arbitrary.
        gts = torch.cat([xy, xy + wh], dim=1) + 0.123
        res = ATSSAssigner(topk=9).assign(anchors, num_level, gts,
                                          torch.arange(6) % 2, num_classes=2)
        assert res.gt_inds.tolist() == _reference_atss(anchors, num_level, gts, 9)
        assert res.pos_mask.sum() > 0
