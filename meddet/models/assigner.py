"""ATSS: adaptive training sample selection (Zhang et al., CVPR 2020), as GFL uses it.

For each ground-truth box the assigner takes, on every pyramid level, the ``topk`` anchors whose
centres are closest to the box centre; the IoU threshold for that box is the mean plus the
standard deviation of those candidates' IoUs. A candidate is positive when its IoU reaches the
threshold and its centre lies inside the box. An anchor that is positive for several boxes goes
to the one it overlaps most.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from meddet.models.box_ops import box_centers, box_iou

__all__ = ["ATSSAssigner", "AssignResult"]


@dataclass
class AssignResult:
    """Assignment of one image's anchors (flattened over levels, level-major).

    Attributes:
        gt_inds: ``[A]`` long, index of the assigned ground-truth box, ``-1`` for background.
        labels: ``[A]`` long, class of the assigned box; ``num_classes`` for background.
        boxes: ``[A, 4]`` xyxy input pixels, the assigned box (zeros for background).
        pos_mask: ``[A]`` bool, positive locations.
        max_iou: ``[A]`` IoU between the anchor and its assigned box (0 for background).
    """

    gt_inds: Tensor
    labels: Tensor
    boxes: Tensor
    pos_mask: Tensor
    max_iou: Tensor


class ATSSAssigner:
    """Adaptive training sample selection.

    Args:
        topk: candidates per level per ground-truth box (ATSS/GFL: 9).
        center_eps: a candidate's centre must be more than this many pixels inside the box
            (mmdetection uses 0.01), so a centre exactly on an edge does not count.
    """

    def __init__(self, *, topk: int = 9, center_eps: float = 0.01) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = topk
        self.center_eps = center_eps

    def assign(
        self,
        anchors: Tensor,
        num_level_anchors: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        num_classes: int,
    ) -> AssignResult:
        """Assign anchors of one image.

        Args:
            anchors: ``[A, 4]`` xyxy input pixels, all levels concatenated in level order.
            num_level_anchors: anchors per level; sums to ``A``.
            gt_boxes: ``[G, 4]`` xyxy input pixels (``G`` may be 0).
            gt_labels: ``[G]`` long in ``[0, num_classes)``.
            num_classes: number of foreground classes (the background label).

        Returns:
            The :class:`AssignResult`.
        """
        num_anchors = anchors.shape[0]
        num_gt = gt_boxes.shape[0]
        device = anchors.device
        gt_inds = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
        if num_gt == 0 or num_anchors == 0:
            return self._result(gt_inds, anchors.new_zeros(num_anchors), gt_boxes, gt_labels,
                                num_classes)

        ious = box_iou(anchors, gt_boxes)  # [A, G]
        anchor_ctr = box_centers(anchors)  # [A, 2]
        # Direct differences rather than torch.cdist, whose matrix-product shortcut loses
        # precision on pixel coordinates and can reorder near-ties in the top-k. Squared
        # distances rank the same as distances.
        dist = (anchor_ctr[:, None, :] - box_centers(gt_boxes)[None]).square().sum(-1)  # [A, G]

        # Candidate selection per level: the topk nearest centres to each box centre.
        candidates = []
        start = 0
        for n in num_level_anchors:
            k = min(self.topk, n)
            if k > 0:
                idx = dist[start:start + n].topk(k, dim=0, largest=False).indices  # [k, G]
                candidates.append(idx + start)
            start += n
        cand_idx = torch.cat(candidates, dim=0)  # [K, G]
        cand_iou = ious.gather(0, cand_idx)  # [K, G]
        # Unbiased std as in the reference implementation; with a single candidate it is
        # undefined, so fall back to 0 (the lone candidate then passes the threshold).
        std = cand_iou.std(0) if cand_iou.shape[0] > 1 else torch.zeros_like(cand_iou[0])
        thr = cand_iou.mean(0) + std  # [G]
        cand_pos = cand_iou >= thr[None, :]

        # Centre of the candidate strictly inside its box.
        ctr = anchor_ctr[cand_idx]  # [K, G, 2]
        inside = torch.stack(
            [
                ctr[..., 0] - gt_boxes[None, :, 0],
                ctr[..., 1] - gt_boxes[None, :, 1],
                gt_boxes[None, :, 2] - ctr[..., 0],
                gt_boxes[None, :, 3] - ctr[..., 1],
            ],
            dim=-1,
        ).amin(-1) > self.center_eps
        cand_pos &= inside

        pos = torch.zeros_like(ious, dtype=torch.bool)
        pos.scatter_(0, cand_idx, cand_pos)  # [A, G]
        masked = torch.where(pos, ious, torch.full_like(ious, -1.0))
        max_iou, argmax = masked.max(dim=1)
        is_pos = max_iou >= 0
        gt_inds[is_pos] = argmax[is_pos]
        return self._result(gt_inds, max_iou.clamp(min=0), gt_boxes, gt_labels, num_classes)

    @staticmethod
    def _result(
        gt_inds: Tensor, max_iou: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int
    ) -> AssignResult:
        pos = gt_inds >= 0
        labels = torch.full_like(gt_inds, num_classes)
        boxes = gt_boxes.new_zeros((gt_inds.shape[0], 4))
        if pos.any():
            labels[pos] = gt_labels[gt_inds[pos]]
            boxes[pos] = gt_boxes[gt_inds[pos]]
        return AssignResult(gt_inds=gt_inds, labels=labels, boxes=boxes, pos_mask=pos,
                            max_iou=max_iou * pos)
