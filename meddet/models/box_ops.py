"""Box geometry and the GFL box codec.

Every box here is ``xyxy`` (x1, y1, x2, y2) in the same units as the points it is paired with
(pixels unless a docstring says otherwise). Distances are ``(left, top, right, bottom)`` from a
point to the four sides of a box, the representation the GFL head regresses.

Why not ``torchvision.ops``: on boxes of positive area :func:`box_iou` equals
``torchvision.ops.box_iou`` and :func:`aligned_giou` the diagonal of
``torchvision.ops.generalized_box_iou`` exactly (``tests/test_box_libs.py`` checks both).
torchvision's are kept out because (1) they divide by the raw union, so a pair of zero-area
boxes (a prediction collapsed early in training) gives NaN where these give 0; (2) they are
2-D pairwise only, while the batched assigner broadcasts ``[..., N, M]`` and the loss needs
the row-wise (aligned) forms, which would cost an ``N x N`` matrix; and
``generalized_box_iou_loss`` (row-wise) adds its epsilon differently, moving the pinned losses
by about 1e-7.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "aligned_giou",
    "aligned_iou",
    "bbox2distance",
    "box_area",
    "box_centers",
    "box_iou",
    "distance2bbox",
    "grid_anchors",
    "integral",
]

# Guards divisions by empty unions/enclosures; mmdetection uses the same value.
_EPS = 1e-6


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``[..., 4]`` xyxy boxes; degenerate boxes (x2 < x1) count as zero."""
    return (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)


def box_centers(boxes: Tensor) -> Tensor:
    """Centres ``[..., 2]`` (x, y) of ``[..., 4]`` xyxy boxes."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU, optionally batched.

    Args:
        boxes1: ``[..., N, 4]`` xyxy.
        boxes2: ``[..., M, 4]`` xyxy; the leading dimensions broadcast with ``boxes1``'s
            (e.g. ``[N, 4]`` anchors against ``[B, M, 4]`` per-image boxes).

    Returns:
        ``[..., N, M]`` IoU in [0, 1]; an empty input gives an empty matrix.
    """
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return inter / union.clamp(min=_EPS)


def aligned_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matching rows.

    Args:
        boxes1: ``[..., 4]`` xyxy.
        boxes2: ``[..., 4]`` xyxy, same shape.

    Returns:
        ``[...]`` IoU in [0, 1].
    """
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=_EPS)


def aligned_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., 2019) of matching rows.

    ``GIoU = IoU - |C \\ (A ∪ B)| / |C|`` with ``C`` the smallest enclosing box.

    Args:
        boxes1: ``[..., 4]`` xyxy.
        boxes2: ``[..., 4]`` xyxy, same shape.

    Returns:
        ``[...]`` GIoU in [-1, 1].
    """
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (box_area(boxes1) + box_area(boxes2) - inter).clamp(min=_EPS)
    iou = inter / union
    enc_lt = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    enc_rb = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclose = (enc_rb - enc_lt).clamp(min=0).prod(-1).clamp(min=_EPS)
    return iou - (enclose - union) / enclose


def distance2bbox(
    points: Tensor, distances: Tensor, max_shape: tuple[int, int] | None = None
) -> Tensor:
    """Decode (left, top, right, bottom) distances into boxes.

    Args:
        points: ``[..., 2]`` (x, y) anchor points.
        distances: ``[..., 4]`` non-negative distances, same units as ``points``.
        max_shape: optional ``(H, W)``; boxes are clipped to ``[0, W] x [0, H]``.

    Returns:
        ``[..., 4]`` xyxy boxes.
    """
    # Three ops for the four sums (the training loss decodes every location).
    boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
    if max_shape is not None:
        h, w = max_shape
        boxes = boxes.clamp(min=0).minimum(boxes.new_tensor([w, h, w, h]))
    return boxes


def bbox2distance(
    points: Tensor, boxes: Tensor, max_dis: float | None = None, eps: float = 0.1
) -> Tensor:
    """Encode boxes as (left, top, right, bottom) distances from points.

    Args:
        points: ``[..., 2]`` (x, y).
        boxes: ``[..., 4]`` xyxy, same units.
        max_dis: if given, distances are clamped to ``[0, max_dis - eps]`` so that a DFL target
            always lies strictly inside the last bin pair (GFL uses ``reg_max`` and ``eps=0.1``).
        eps: margin below ``max_dis``.

    Returns:
        ``[..., 4]`` distances.
    """
    dist = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    if max_dis is not None:
        dist = dist.clamp(min=0, max=max_dis - eps)
    return dist


def integral(dist_logits: Tensor, reg_max: int) -> Tensor:
    """Integral (softmax-expectation) decoding of GFL's general distributions.

    Each side's distance is ``sum_i softmax(logits)_i * i`` over bins ``i = 0..reg_max``.

    Args:
        dist_logits: ``[..., 4 * (reg_max + 1)]`` logits, sides ordered left, top, right,
            bottom, each side's ``reg_max + 1`` bins contiguous.
        reg_max: largest bin value.

    Returns:
        ``[..., 4]`` expected distances in bin units (multiply by the stride for pixels).
    """
    n = reg_max + 1
    if dist_logits.shape[-1] != 4 * n:
        raise ValueError(
            f"last dim must be 4*(reg_max+1)={4 * n} for reg_max={reg_max}, "
            f"got {dist_logits.shape[-1]}"
        )
    prob = dist_logits.reshape(*dist_logits.shape[:-1], 4, n).softmax(-1)
    bins = torch.arange(n, dtype=prob.dtype, device=prob.device)
    return prob @ bins


def grid_anchors(
    featmap_sizes: list[tuple[int, int]],
    strides: tuple[int, ...] | list[int],
    *,
    anchor_scale: float = 8.0,
    center_offset: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """One square anchor per feature-map location, per level.

    Location ``(i, j)`` of a level with stride ``s`` is centred at
    ``((j + center_offset) * s, (i + center_offset) * s)`` and the anchor has side
    ``anchor_scale * s``. ``center_offset=0`` matches mmdetection's GFL (its anchor generator
    places centres on the top-left corner of each cell).

    Args:
        featmap_sizes: ``(H_l, W_l)`` per level.
        strides: stride (input pixels per cell) per level.
        anchor_scale: anchor side in units of the stride (GFL/ATSS: 8).
        center_offset: fraction of a cell added to each centre.
        device: device of the output.
        dtype: dtype of the output.

    Returns:
        Per level, ``[H_l * W_l, 4]`` xyxy anchors in input pixels, row-major (y then x), the
        same order as ``feature.flatten(2)``.
    """
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + center_offset) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + center_offset) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        half = anchor_scale * s / 2
        cx, cy = cx.reshape(-1), cy.reshape(-1)
        out.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1))
    return out
