"""The batched ATSS assignment and GFL loss against the per-image implementation they replaced.

The references below are the previous per-image code (one ``assign`` per image with boolean-mask
indexing, and a loss that gathers the positives with ``nonzero``), kept verbatim as private
functions. Assignments must be identical; losses and gradients equal to float tolerance (the
batched loss sums over every location with zero weights off the positives, so the order of
float additions differs).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from meddet.engine.trainer import _fetch_scalars
from meddet.models import box_ops as bo
from meddet.models.assigner import ATSSAssigner
from meddet.models.detector import GFLDetector
from meddet.models.gfl_head import GFLHead
from meddet.models.losses import (
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
    weighted_sum,
)

STRIDES = (8, 16, 32, 64, 128)
SIZE = 256
NUM_CLASSES = 3


def _reference_assign(assigner, anchors, num_level_anchors, gt_boxes, gt_labels, num_classes):
    """The previous ``ATSSAssigner.assign``: one image, boolean-mask writes."""
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    gt_inds = torch.full((num_anchors,), -1, dtype=torch.long)
    if num_gt == 0 or num_anchors == 0:
        return _reference_result(gt_inds, anchors.new_zeros(num_anchors), gt_boxes, gt_labels,
                                 num_classes)
    ious = bo.box_iou(anchors, gt_boxes)
    anchor_ctr = bo.box_centers(anchors)
    dist = (anchor_ctr[:, None, :] - bo.box_centers(gt_boxes)[None]).square().sum(-1)
    candidates, start = [], 0
    for n in num_level_anchors:
        k = min(assigner.topk, n)
        if k > 0:
            candidates.append(dist[start:start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    cand_idx = torch.cat(candidates, dim=0)
    cand_iou = ious.gather(0, cand_idx)
    std = cand_iou.std(0) if cand_iou.shape[0] > 1 else torch.zeros_like(cand_iou[0])
    cand_pos = cand_iou >= (cand_iou.mean(0) + std)[None, :]
    ctr = anchor_ctr[cand_idx]
    inside = torch.stack([ctr[..., 0] - gt_boxes[None, :, 0], ctr[..., 1] - gt_boxes[None, :, 1],
                          gt_boxes[None, :, 2] - ctr[..., 0], gt_boxes[None, :, 3] - ctr[..., 1]],
                         dim=-1).amin(-1) > assigner.center_eps
    cand_pos &= inside
    pos = torch.zeros_like(ious, dtype=torch.bool)
    pos.scatter_(0, cand_idx, cand_pos)
    max_iou, argmax = torch.where(pos, ious, torch.full_like(ious, -1.0)).max(dim=1)
    is_pos = max_iou >= 0
    gt_inds[is_pos] = argmax[is_pos]
    return _reference_result(gt_inds, max_iou.clamp(min=0), gt_boxes, gt_labels, num_classes)


def _reference_result(gt_inds, max_iou, gt_boxes, gt_labels, num_classes):
    pos = gt_inds >= 0
    labels = torch.full_like(gt_inds, num_classes)
    boxes = gt_boxes.new_zeros((gt_inds.shape[0], 4))
    if pos.any():
        labels[pos] = gt_labels[gt_inds[pos]]
        boxes[pos] = gt_boxes[gt_inds[pos]]
    return {"gt_inds": gt_inds, "labels": labels, "boxes": boxes, "pos_mask": pos,
            "max_iou": max_iou * pos}


def _reference_loss(det, cls_scores, bbox_preds, targets):
    """The previous ``GFLDetector.loss``: per-image assignment, positives gathered by index."""
    sizes = [(c.shape[-2], c.shape[-1]) for c in cls_scores]
    levels = bo.grid_anchors(sizes, det.strides, anchor_scale=det.anchor_scale)
    num_level = [a.shape[0] for a in levels]
    anchors = torch.cat(levels)
    points = bo.box_centers(anchors)
    strides = torch.cat([torch.full((n,), float(s)) for n, s in zip(num_level, det.strides)])
    per_image = [_reference_assign(det.assigner, anchors, num_level, t["boxes"], t["labels"],
                                   det.num_classes) for t in targets]
    cls_flat, reg_flat = det.flatten_outputs(cls_scores, bbox_preds)
    batch, num_loc = cls_flat.shape[:2]
    cls_flat = cls_flat.reshape(batch * num_loc, -1).float()
    reg_flat = reg_flat.reshape(batch * num_loc, -1).float()
    labels = torch.cat([r["labels"] for r in per_image])
    pos_idx = torch.cat([r["pos_mask"] for r in per_image]).nonzero().squeeze(1)
    num_pos = pos_idx.numel()
    quality = cls_flat.new_zeros(batch * num_loc)
    if num_pos > 0:
        stride = strides.repeat(batch)[pos_idx][:, None]
        pts = points.repeat(batch, 1)[pos_idx] / stride
        tgt_boxes = torch.cat([r["boxes"] for r in per_image])[pos_idx] / stride
        pos_reg = reg_flat[pos_idx]
        weight = cls_flat.detach().sigmoid().amax(dim=1)[pos_idx]
        pred_boxes = bo.distance2bbox(pts, bo.integral(pos_reg, det.reg_max))
        quality[pos_idx] = bo.aligned_iou(pred_boxes.detach(), tgt_boxes)
        weight_sum = weight.sum().clamp(min=1.0 if det.box_loss_norm == "mmdet" else 1e-6)
        loss_giou = weighted_sum(giou_loss(pred_boxes, tgt_boxes), weight, weight_sum)
        tgt_dist = bo.bbox2distance(pts, tgt_boxes, float(det.reg_max), eps=det.dfl_eps)
        dfl = distribution_focal_loss(pos_reg.reshape(-1, det.reg_max + 1), tgt_dist.reshape(-1))
        loss_dfl = weighted_sum(dfl, weight.repeat_interleave(4), 4 * weight_sum)
    else:
        loss_giou = loss_dfl = reg_flat.sum() * 0.0
    qfl = quality_focal_loss(cls_flat, labels, quality, beta=det.qfl_beta)
    loss_qfl = weighted_sum(qfl, None, max(float(num_pos), 1.0))
    total = det.det_scale * (det.lambda_qfl * loss_qfl + det.mu_dfl * loss_dfl
                             + (1.0 - det.lambda_qfl - det.mu_dfl) * loss_giou)
    pos_iou = quality[pos_idx].mean() if num_pos else quality.sum()
    return per_image, {"loss": total, "loss_qfl": loss_qfl, "loss_dfl": loss_dfl,
                       "loss_giou": loss_giou, "num_pos": torch.tensor(float(num_pos)),
                       "pos_iou": pos_iou}


def _detector(box_loss_norm: str = "mmdet") -> GFLDetector:
    head = GFLHead(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=1,
                   norm_groups=4)
    return GFLDetector(name="t", num_classes=NUM_CLASSES, backbone=nn.Identity(),
                       neck=nn.Identity(), head=head, nmode="none", strides=STRIDES,
                       box_loss_norm=box_loss_norm)


def _target(boxes) -> dict:
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.arange(boxes.shape[0]) % NUM_CLASSES}


def _random_boxes(gen, n, lo, hi):
    wh = lo + torch.rand(n, 2, generator=gen) * (hi - lo)
    xy = torch.rand(n, 2, generator=gen) * (SIZE - wh)
    return torch.cat([xy, xy + wh], dim=1)


def _batch(gen) -> list[dict]:
    """Images with 0, 1 and many boxes; small boxes (P3), large ones (P5-P7); exact ties."""
    many = torch.cat([_random_boxes(gen, 5, 6, 20), _random_boxes(gen, 4, 100, 140),
                      _random_boxes(gen, 3, 180, 256)])
    # Grid-aligned: non-square boxes centred halfway between anchor centres (the 9th nearest
    # anchor is one of several at equal distance, with different IoUs, so the top-k's choice
    # among ties matters), boxes centred on anchors, and a duplicated box (equal IoUs in the
    # final argmax).
    tied = torch.tensor([[8.0, 12.0, 48.0, 44.0], [100.0, 96.0, 148.0, 136.0],
                         [16.0, 10.0, 96.0, 70.0], [12.0, 12.0, 36.0, 36.0],
                         [12.0, 12.0, 36.0, 36.0], [0.0, 0.0, 64.0, 64.0],
                         [40.0, 8.0, 56.0, 120.0], [20.0, 20.0, 21.0, 21.0]])
    return [_target(torch.zeros(0, 4)), _target(_random_boxes(gen, 1, 8, 40)), _target(many),
            _target(tied), _target(_random_boxes(gen, 1, 200, 256)),
            _target(_random_boxes(gen, 3, 4, 256))]


def _head_outputs(gen, batch, scale=1.0):
    sizes = [math.ceil(SIZE / s) for s in STRIDES]
    cls = [torch.randn(batch, NUM_CLASSES, h, h, generator=gen) * 2 - 3 for h in sizes]
    reg = [torch.randn(batch, 4 * 17, h, h, generator=gen) * scale for h in sizes]
    return [c.requires_grad_() for c in cls], [r.requires_grad_() for r in reg]


@pytest.mark.parametrize("seed", range(6))
def test_batched_assignment_is_identical_to_per_image(seed):
    gen = torch.Generator().manual_seed(seed)
    det = _detector()
    targets = _batch(gen)
    cls, _ = _head_outputs(gen, len(targets))
    asg = det.assign(cls, targets)
    per_image, _ = _reference_loss(det, cls, _head_outputs(gen, len(targets))[1], targets)
    for b, ref in enumerate(per_image):
        assert torch.equal(asg.gt_inds[b], ref["gt_inds"])
        assert torch.equal(asg.labels[b], ref["labels"])
        assert torch.equal(asg.boxes[b], ref["boxes"])
        assert torch.equal(asg.pos_mask[b], ref["pos_mask"])
    # Every kind of image is exercised: none, one box, boxes on different levels.
    counts = [len(t["boxes"]) for t in targets]
    assert counts[0] == 0 and not asg.pos_mask[0].any()
    assert counts[1] == 1 and asg.pos_mask[1].any()
    strides = asg.strides[asg.pos_mask[2]].unique().tolist()
    assert len(strides) >= 3, strides


def test_batched_assigner_matches_per_image_on_padded_boxes():
    """A padded batch assigned at once equals one image at a time, max IoU included."""
    gen = torch.Generator().manual_seed(7)
    levels = bo.grid_anchors([(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)], STRIDES)
    anchors, num_level = torch.cat(levels), [lv.shape[0] for lv in levels]
    targets = _batch(gen)
    gmax = max(len(t["boxes"]) for t in targets)
    boxes = torch.stack([torch.cat([t["boxes"], torch.full((gmax - len(t["boxes"]), 4), 50.0)])
                         for t in targets])  # padding boxes that would otherwise win anchors
    labels = torch.stack([torch.cat([t["labels"], torch.zeros(gmax - len(t["labels"]),
                                                               dtype=torch.long)])
                          for t in targets])
    valid = torch.arange(gmax)[None] < torch.tensor([len(t["boxes"]) for t in targets])[:, None]
    assigner = ATSSAssigner(topk=9)
    res = assigner.assign(anchors, num_level, boxes, labels, NUM_CLASSES, valid)
    for b, t in enumerate(targets):
        ref = _reference_assign(assigner, anchors, num_level, t["boxes"], t["labels"],
                                NUM_CLASSES)
        one = assigner.assign(anchors, num_level, t["boxes"], t["labels"], NUM_CLASSES)
        for key, value in ref.items():
            assert torch.equal(getattr(res, key)[b], value), key
            assert torch.equal(getattr(one, key), value), key


@pytest.mark.parametrize("seed,norm", [(0, "mmdet"), (1, "mean"), (2, "mmdet"), (3, "mean")])
def test_batched_loss_matches_per_image_loss(seed, norm):
    gen = torch.Generator().manual_seed(100 + seed)
    det = _detector(norm)
    targets = _batch(gen)
    cls, reg = _head_outputs(gen, len(targets), scale=3.0)
    _, ref = _reference_loss(det, cls, reg, targets)
    ref_grads = torch.autograd.grad(ref["loss"], cls + reg)
    out = det.loss(cls, reg, targets, (SIZE, SIZE))
    grads = torch.autograd.grad(out["loss"], cls + reg)
    assert out.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    assert out["num_pos"].dtype == torch.float32 and out["num_pos"] > 0
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


def test_loss_without_positives_is_exactly_zero_with_a_connected_graph():
    gen = torch.Generator().manual_seed(3)
    det = _detector()
    empty = _target(torch.zeros(0, 4))
    cls, reg = _head_outputs(gen, 2)
    out = det.loss(cls, reg, [empty, empty], (SIZE, SIZE))
    _, ref = _reference_loss(det, cls, reg, [empty, empty])
    assert out["loss_giou"].item() == 0 and out["loss_dfl"].item() == 0
    assert out["num_pos"].item() == 0
    torch.testing.assert_close(out["loss_qfl"], ref["loss_qfl"])
    grads = torch.autograd.grad(out["loss"], reg)
    assert all(g is not None and g.abs().sum() == 0 for g in grads)


def test_label_and_count_checks_still_raise():
    det = _detector()
    cls, _ = _head_outputs(torch.Generator().manual_seed(0), 2)
    good = _target([[0.0, 0.0, 10.0, 10.0]])
    for bad in ({"boxes": good["boxes"], "labels": torch.tensor([NUM_CLASSES])},
                {"boxes": good["boxes"], "labels": torch.tensor([-1])}):
        with pytest.raises(ValueError, match="labels must be in"):
            det.assign(cls, [good, bad])
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        det.assign(cls, [good, {"boxes": good["boxes"], "labels": torch.tensor([0, 1])}])
    # Lists and flat box lists are accepted as before.
    asg = det.assign(cls, [{"boxes": [1.0, 2.0, 30.0, 40.0], "labels": [1]}, good])
    assert asg.pos_mask[0].any() and (asg.labels[0][asg.pos_mask[0]] == 1).all()


def test_priors_are_built_once_per_geometry_and_usable_after_inference_mode():
    det = _detector()
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    with torch.inference_mode():
        anchors, points = det.priors(sizes, torch.device("cpu"), torch.float32)
    again, _ = det.priors(sizes, torch.device("cpu"), torch.float32)
    assert all(a is b for a, b in zip(anchors, again))
    assert not any(a.is_inference() for a in anchors + points)
    expected = bo.grid_anchors(sizes, STRIDES)
    assert all(torch.equal(a, e) for a, e in zip(anchors, expected))
    other, _ = det.priors(sizes[:4] + [(1, 1)], torch.device("cpu"), torch.float32)
    assert other[-1].shape == (1, 4) and len(det._priors_cache) == 2
    # The training loss works on priors first built under inference mode (evaluation).
    gen = torch.Generator().manual_seed(0)
    cls, reg = _head_outputs(gen, 1)
    det.loss(cls, reg, [_target([[10.0, 10.0, 60.0, 50.0]])], (SIZE, SIZE))["loss"].backward()


def test_fetch_scalars_reads_every_logged_value_in_one_copy():
    losses = {"loss": torch.tensor(1.25), "loss_a": torch.tensor(0.1, dtype=torch.bfloat16),
              "num_pos": torch.tensor(7), "vector": torch.ones(3), "name": "x"}
    finite, values = _fetch_scalars(losses["loss"], losses)
    assert finite
    assert values == {k: float(v) for k, v in losses.items()
                      if isinstance(v, torch.Tensor) and v.numel() == 1}
    assert _fetch_scalars(torch.tensor(0.0), {})[0]
    assert _fetch_scalars(torch.tensor([0.0, 2.0]), {})[0]
    assert not _fetch_scalars(torch.tensor(float("nan")), {})[0]
    assert not _fetch_scalars(torch.tensor(float("-inf"), dtype=torch.float16), {})[0]
    assert not _fetch_scalars(torch.tensor([1.0, float("inf")]), {})[0]
    big = torch.tensor(2**40 + 1)
    assert _fetch_scalars(big, {"n": big})[1]["n"] == float(big)


@pytest.mark.parametrize("solver", ["fused", "torchdiffeq"])
def test_head_solves_nmode_once_for_all_levels_with_the_same_result(solver):
    torch.manual_seed(0)
    head = GFLHead(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                   norm_groups=4, nmode=True, nmode_kwargs={"solver": solver}).train()
    feats = [torch.randn(2, 8, s, s, requires_grad=True) for s in (16, 8, 4, 2, 1)]
    calls = []
    head.cls_nmode.register_forward_hook(lambda *_: calls.append(1))
    cls, reg = head(feats)
    assert len(calls) == 1  # one solve for the five levels
    ref_cls = [head.gfl_cls(head.cls_nmode(head.cls_convs(x))) for x in feats]
    ref_reg = [head.gfl_reg(head.reg_nmode(head.reg_convs(x))) * head.scales[i]
               for i, x in enumerate(feats)]
    # Per element the same arithmetic; on the CPU a vectorised sin/cos may differ from the
    # scalar one used for a loop's tail elements by an ulp, so compare to float tolerance.
    for out, ref in zip(cls + reg, ref_cls + ref_reg):
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(sum(o.square().sum() for o in cls + reg), feats)
    ref_grads = torch.autograd.grad(sum(o.square().sum() for o in ref_cls + ref_reg), feats)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # Evaluation keeps the per-level calls (exported graphs are unchanged).
    head.eval()
    calls.clear()
    head(feats)
    assert len(calls) == 5
