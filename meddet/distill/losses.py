"""MedDet's distillation loss (eq. 13) and total loss (eq. 14) (Zhang et al., arXiv:2409.00204).

``L_dist = sum_l mean((std(T_l) - std(G(S_l)))**2)`` where ``std`` standardises each channel
over the batch and spatial positions (as in PKD, Cao et al., NeurIPS 2022). We chose the mean
over elements within a level, so the value does not depend on image or batch size, and the sum
over the five levels that eq. 13 writes. Standardising both sides makes the loss independent of
the teachers' feature scale and removes the scale direction from the gradient, which is one of
the two guards against the fused target collapsing (the other is that the target is detached
from ``L_dist``; see :mod:`meddet.distill.distiller`).

``L = σ·L_det + τ·L_dist + (1 − σ − τ)·L_adv`` (eq. 14); ``L_det`` is eq. 12 (the detector's
own loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from meddet.errors import MedDetError


def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardise each channel over batch and space.

    Args:
        x: ``[B, C, H, W]``.
        eps: added to the variance.

    Returns:
        ``[B, C, H, W]`` with zero mean and (about) unit variance per channel; a channel that is
        constant over ``B*H*W`` (e.g. a 1x1 level with batch 1) becomes zero.
    """
    x = x.float()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps)


def feature_distill_loss(targets: Sequence[Tensor], preds: Sequence[Tensor], *,
                         normalize: bool = True) -> Tensor:
    """``L_dist`` of eq. 13.

    Args:
        targets: per level the fused teacher feature ``T_l``, ``[B, C, H_l, W_l]``.
        preds: per level the student-side prediction ``G(S_l)`` (or ``S_l`` without AATM),
            same shapes.
        normalize: standardise both sides per channel first (default; see module docstring).

    Returns:
        fp32 scalar: sum over levels of the mean squared difference.
    """
    if len(targets) != len(preds):
        raise ValueError(f"{len(targets)} target levels but {len(preds)} prediction levels")
    total = preds[0].new_zeros((), dtype=torch.float32)
    for t, p in zip(targets, preds):
        if t.shape != p.shape:
            raise ValueError(f"target {tuple(t.shape)} and prediction {tuple(p.shape)} differ")
        if normalize:
            t, p = standardize(t), standardize(p)
        total = total + (t.float() - p.float()).pow(2).mean()
    return total


def check_loss_weights(sigma: float, tau: float) -> None:
    """Validate eq. 14's weights: ``0 <= σ``, ``0 <= τ``, ``σ + τ <= 1``.

    Raises:
        MedDetError: one line naming the bad value.
    """
    if not (sigma >= 0 and tau >= 0):
        raise MedDetError(f"sigma and tau must be >= 0 (eq. 14), got sigma={sigma}, tau={tau}")
    if sigma + tau > 1 + 1e-9:
        raise MedDetError(f"sigma + tau must be <= 1 (eq. 14), got {sigma} + {tau} = "
                          f"{sigma + tau:g}; lower --sigma or --tau")


def total_loss(l_det: Tensor, l_dist: Tensor, l_adv: Tensor, *, sigma: float, tau: float) -> Tensor:
    """``L = σ·L_det + τ·L_dist + (1 − σ − τ)·L_adv`` (eq. 14).

    Args:
        l_det, l_dist, l_adv: scalars.
        sigma, tau: the weights; validated by :func:`check_loss_weights`.
    """
    check_loss_weights(sigma, tau)
    rest = max(0.0, 1.0 - sigma - tau)
    return sigma * l_det + tau * l_dist + rest * l_adv
