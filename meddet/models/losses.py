"""GFL's losses as element-wise functions, plus one thin weighted reduction.

The element-wise functions return one value per sample and never reduce, so each can be checked
against the formulas of the GFL paper (Li et al., NeurIPS 2020) on hand-made tensors; the
detector does the weighting and normalisation with :func:`weighted_sum`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from meddet.models.box_ops import aligned_giou

__all__ = [
    "distribution_focal_loss",
    "giou_loss",
    "quality_focal_loss",
    "weighted_sum",
]


def quality_focal_loss(
    logits: Tensor, labels: Tensor, scores: Tensor, *, beta: float = 2.0
) -> Tensor:
    """Quality Focal Loss (GFL eq. 5), summed over classes.

    For each class logit with ``σ = sigmoid(logit)`` and soft target ``y``
    (the IoU quality for the sample's class, 0 for every other class and for background):
    ``QFL = -|y - σ|^β · ((1 - y) log(1 - σ) + y log σ)``.

    Args:
        logits: ``[N, C]`` classification logits.
        labels: ``[N]`` long in ``[0, C]``; ``C`` means background.
        scores: ``[N]`` IoU quality target in [0, 1] for the labelled class (ignored for
            background).
        beta: focusing exponent (GFL: 2).

    Returns:
        ``[N]`` loss per sample (sum over the ``C`` classes).
    """
    num_classes = logits.shape[1]
    # Soft one-hot target: y at the labelled class, 0 elsewhere; the extra column absorbs the
    # background label and is dropped.
    target = logits.new_zeros((logits.shape[0], num_classes + 1))
    target.scatter_(1, labels[:, None], scores[:, None].to(logits.dtype))
    target = target[:, :num_classes]
    sigma = logits.sigmoid()
    # BCE-with-logits is the numerically stable form of -((1-y)log(1-σ) + y log σ).
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * (target - sigma).abs().pow(beta)).sum(dim=1)


def distribution_focal_loss(dist_logits: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss (GFL eq. 6).

    With the continuous target ``y`` between bins ``y_l = floor(y)`` and ``y_r = y_l + 1`` and
    ``S = softmax(logits)``: ``DFL = -((y_r - y) log S_l + (y - y_l) log S_r)``.

    Args:
        dist_logits: ``[N, n]`` logits over bins ``0..n-1``.
        target: ``[N]`` float in ``[0, n - 1)``; callers clamp to ``reg_max - 0.1`` so that
            ``y_r`` is always a valid bin.

    Returns:
        ``[N]`` loss per sample.
    """
    left = target.long()
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    logp = dist_logits.log_softmax(dim=1)
    return -(
        logp.gather(1, left[:, None]).squeeze(1) * w_left
        + logp.gather(1, right[:, None]).squeeze(1) * w_right
    )


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """GIoU loss ``1 - GIoU`` of matching rows.

    Args:
        pred: ``[N, 4]`` xyxy.
        target: ``[N, 4]`` xyxy, same units.

    Returns:
        ``[N]`` loss in [0, 2].
    """
    return 1.0 - aligned_giou(pred, target)


def weighted_sum(loss: Tensor, weight: Tensor | None = None, avg_factor: float | Tensor = 1.0
                 ) -> Tensor:
    """``sum(loss * weight) / avg_factor``, the only reduction the detector needs.

    Args:
        loss: element-wise loss, any shape.
        weight: broadcastable to ``loss``; ``None`` means 1.
        avg_factor: normaliser (number of positives, sum of quality weights, ...).

    Returns:
        Scalar tensor.
    """
    if weight is not None:
        loss = loss * weight
    return loss.sum() / avg_factor
