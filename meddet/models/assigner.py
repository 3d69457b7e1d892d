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
    """Assignment of anchors (flattened over levels, level-major), of one image or a batch.

    ``...`` is empty for one image and ``B`` for a batch (see :meth:`ATSSAssigner.assign`).

    Attributes:
        gt_inds: ``[..., A]`` long, index of the assigned ground-truth box, ``-1`` for
            background.
        labels: ``[..., A]`` long, class of the assigned box; ``num_classes`` for background.
        boxes: ``[..., A, 4]`` xyxy input pixels, the assigned box (zeros for background).
        pos_mask: ``[..., A]`` bool, positive locations.
        max_iou: ``[..., A]`` IoU between the anchor and its assigned box (0 for background).
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
        gt_valid: Tensor | None = None,
    ) -> AssignResult:
        """Assign the anchors of one image, or of a batch of images at once.

        In a batch, images with fewer boxes are padded to a common ``G``; padded boxes are
        marked invalid in ``gt_valid`` and never assigned. Each image's result equals the
        one-image assignment of its valid boxes alone: every box is treated independently up
        to the final per-anchor choice, where padded boxes (never positive) cannot win.

        Args:
            anchors: ``[A, 4]`` xyxy input pixels, all levels concatenated in level order
                (shared by the batch).
            num_level_anchors: anchors per level; sums to ``A``.
            gt_boxes: ``[G, 4]`` (one image) or ``[B, G, 4]`` xyxy input pixels (``G`` may
                be 0).
            gt_labels: ``[G]`` or ``[B, G]`` long in ``[0, num_classes)`` (any value where
                invalid).
            num_classes: number of foreground classes (the background label).
            gt_valid: ``[B, G]`` bool, the real (not padding) boxes of a batch; ``None`` means
                all.

        Returns:
            The :class:`AssignResult`: ``[A]`` fields for one image, ``[B, A]`` for a batch;
            ``gt_inds`` index into ``G``.
        """
        if gt_boxes.dim() == 2:
            res = self.assign(anchors, num_level_anchors, gt_boxes[None], gt_labels[None],
                              num_classes)
            return AssignResult(gt_inds=res.gt_inds[0], labels=res.labels[0],
                                boxes=res.boxes[0], pos_mask=res.pos_mask[0],
                                max_iou=res.max_iou[0])
        batch, num_gt = gt_boxes.shape[:2]
        num_anchors = anchors.shape[0]
        if num_gt == 0 or num_anchors == 0:
            gt_inds = torch.full((batch, num_anchors), -1, dtype=torch.long, device=anchors.device)
            return self._result(gt_inds, anchors.new_zeros((batch, num_anchors)), gt_boxes,
                                gt_labels, num_classes)

        ious = box_iou(anchors, gt_boxes)  # [B, A, G]
        anchor_ctr = box_centers(anchors)  # [A, 2]
        # Direct differences rather than torch.cdist, whose matrix-product shortcut loses
        # precision on pixel coordinates and can reorder near-ties in the top-k. Squared
        # distances rank the same as distances.
        dist = (anchor_ctr[:, None, :] - box_centers(gt_boxes)[:, None]).square().sum(-1)

        # Candidate selection per level: the topk nearest centres to each box centre.
        candidates = []
        start = 0
        for n in num_level_anchors:
            k = min(self.topk, n)
            if k > 0:
                idx = dist[:, start:start + n].topk(k, dim=1, largest=False).indices  # [B, k, G]
                candidates.append(idx + start)
            start += n
        cand_idx = torch.cat(candidates, dim=1)  # [B, K, G]
        cand_iou = ious.gather(1, cand_idx)  # [B, K, G]
        # Unbiased std as in the reference implementation; with a single candidate it is
        # undefined, so fall back to 0 (the lone candidate then passes the threshold).
        std = cand_iou.std(1) if cand_iou.shape[1] > 1 else torch.zeros_like(cand_iou[:, 0])
        thr = cand_iou.mean(1) + std  # [B, G]
        cand_pos = cand_iou >= thr[:, None, :]

        # Centre of the candidate strictly inside its box.
        ctr = anchor_ctr[cand_idx]  # [B, K, G, 2]
        box = gt_boxes[:, None]  # [B, 1, G, 4]
        inside = torch.cat([ctr - box[..., :2], box[..., 2:] - ctr], dim=-1).amin(-1)
        cand_pos &= inside > self.center_eps
        if gt_valid is not None:
            cand_pos &= gt_valid[:, None, :]

        pos = torch.zeros_like(ious, dtype=torch.bool).scatter_(1, cand_idx, cand_pos)
        # Padded and non-candidate boxes get -1, below any IoU, so the max over boxes picks
        # the first of the positive boxes with the largest IoU, as the unpadded argmax does.
        max_iou, argmax = torch.where(pos, ious, -1.0).max(dim=2)  # [B, A]
        gt_inds = torch.where(max_iou >= 0, argmax, -1)
        return self._result(gt_inds, max_iou.clamp(min=0), gt_boxes, gt_labels, num_classes)

    @staticmethod
    def _result(
        gt_inds: Tensor, max_iou: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int
    ) -> AssignResult:
        # Gathers and selects instead of boolean-mask indexing, which would wait for the device
        # (its nonzero needs the count on the host).
        pos = gt_inds >= 0
        if gt_boxes.shape[-2] == 0:
            labels = torch.full_like(gt_inds, num_classes)
            boxes = gt_boxes.new_zeros((*gt_inds.shape, 4))
        else:
            idx = gt_inds.clamp(min=0)
            labels = torch.where(pos, gt_labels.gather(-1, idx), num_classes)
            boxes = gt_boxes.gather(-2, idx[..., None].expand(*idx.shape, 4))
            boxes = torch.where(pos[..., None], boxes, 0.0)
        return AssignResult(gt_inds=gt_inds, labels=labels, boxes=boxes, pos_mask=pos,
                            max_iou=max_iou * pos)
