"""From raw GFL outputs to detections: threshold, top-k, decode, clip, rescale, class-wise NMS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from meddet.models.box_ops import distance2bbox, integral

__all__ = ["GFLPostProcess"]


class GFLPostProcess:
    """Turns per-level head outputs into per-image detections (mmdetection's GFL test recipe).

    Per level, every (location, class) pair whose sigmoid score exceeds ``score_thr`` is a
    candidate; the best ``nms_pre`` of them are decoded (integral of the distribution times the
    stride, clipped to the input). With per-image metadata the boxes are then mapped to original
    pixels and clipped to the original image, i.e. to the unpadded part of a letterboxed input,
    and boxes no wider or taller than ``min_box_size`` are dropped (a prediction inside the
    padding ends with zero height or width). All levels then go through class-wise NMS at
    ``nms_iou`` and the ``max_per_img`` best survive.

    Args:
        reg_max: largest distance bin of the head.
        score_thr: minimum score of a candidate.
        nms_pre: candidates kept per level before NMS.
        nms_iou: IoU above which NMS suppresses a box of the same class.
        max_per_img: detections kept per image.
        min_box_size: boxes whose width or height is at most this are dropped before NMS; in
            the units of the returned boxes (original pixels when a ``scale`` is given). The
            default 0 drops only empty boxes.
    """

    def __init__(
        self,
        *,
        reg_max: int = 16,
        score_thr: float = 0.05,
        nms_pre: int = 1000,
        nms_iou: float = 0.6,
        max_per_img: int = 100,
        min_box_size: float = 0.0,
    ) -> None:
        self.reg_max = reg_max
        self.score_thr = score_thr
        self.nms_pre = nms_pre
        self.nms_iou = nms_iou
        self.max_per_img = max_per_img
        self.min_box_size = min_box_size

    @torch.no_grad()
    def __call__(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        points: list[Tensor],
        strides: Sequence[int],
        img_shape: tuple[int, int],
        metas: Sequence[dict[str, Any]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Decode a batch.

        Args:
            cls_scores: per level ``[B, C, H_l, W_l]`` logits.
            bbox_preds: per level ``[B, 4 * (reg_max + 1), H_l, W_l]`` distribution logits.
            points: per level ``[H_l * W_l, 2]`` (x, y) location centres in input pixels.
            strides: stride per level.
            img_shape: ``(H, W)`` of the network input; decoded boxes are clipped to it.
            metas: optional per-image dicts; ``"scale"`` (input px per original px) divides the
                boxes and ``"orig_size"`` ``(h, w)`` clips them, before NMS. Missing keys leave
                boxes in input pixels.

        Returns:
            Per image ``{"boxes": [K, 4] xyxy, "scores": [K], "labels": [K] long}``, sorted by
            descending score, ``K <= max_per_img``.
        """
        batch = cls_scores[0].shape[0]
        num_classes = cls_scores[0].shape[1]
        results = []
        for b in range(batch):
            boxes_all, scores_all, labels_all = [], [], []
            for cls, reg, pts, stride in zip(cls_scores, bbox_preds, points, strides):
                scores = cls[b].flatten(1).t().sigmoid().reshape(-1)  # [HW * C]
                cand = (scores > self.score_thr).nonzero().squeeze(1)
                if cand.numel() > self.nms_pre:
                    cand = cand[scores[cand].topk(self.nms_pre).indices]
                loc = torch.div(cand, num_classes, rounding_mode="floor")
                dist = integral(reg[b].flatten(1).t()[loc], self.reg_max) * stride
                boxes_all.append(distance2bbox(pts[loc], dist.to(pts.dtype), max_shape=img_shape))
                scores_all.append(scores[cand])
                labels_all.append(cand % num_classes)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            labels = torch.cat(labels_all)
            # Map back before NMS, as mmdetection clips to the unpadded image before it: the
            # clip to the original size is what removes the letterbox padding.
            if metas is not None:
                boxes = _to_original(boxes, metas[b])
            size_ok = ((boxes[:, 2:] - boxes[:, :2]) > self.min_box_size).all(dim=1)
            boxes, scores, labels = boxes[size_ok], scores[size_ok], labels[size_ok]
            keep = batched_nms(boxes.float(), scores.float(), labels, self.nms_iou)
            keep = keep[: self.max_per_img]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            results.append({"boxes": boxes, "scores": scores, "labels": labels})
        return results


def _to_original(boxes: Tensor, meta: dict[str, Any]) -> Tensor:
    """Map ``[K, 4]`` input-pixel boxes to original pixels using ``scale`` / ``orig_size``."""
    scale = meta.get("scale")
    if scale is not None:
        boxes = boxes / float(scale)
    orig = meta.get("orig_size")
    if orig is not None:
        h, w = (float(v) for v in orig)
        boxes = torch.stack(
            [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)],
            dim=1,
        )
    return boxes
