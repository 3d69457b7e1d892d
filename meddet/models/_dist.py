"""Loss normalisers shared by all processes of a ``torchrun`` job.

Kept in ``meddet.models`` (not ``meddet.engine.distributed``) because the detector's loss needs
it and models do not depend on the engine. Without a process group it is a plain clamp.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["shared_normaliser"]


def shared_normaliser(local: Tensor, *, minimum: float = 1.0) -> Tensor:
    """What each rank divides its summed loss by, so that DDP trains like one big batch.

    Each rank holds ``1 / N`` of the batch and sums its loss terms ``S_r``; a single process on
    the whole batch would compute ``sum_r S_r / max(sum_r n_r, minimum)``, with ``n_r`` the
    ranks' normalisers (positives, weight sums). Dividing by ``max(sum_r n_r, minimum) / N``
    makes the mean of the ranks' losses, and so the gradient DDP averages, equal to that.

    mmdetection's ``reduce_mean`` clamps after dividing by ``N`` (``max(sum_r n_r / N, 1)``);
    the two agree once ``sum_r n_r >= N``. Clamping the global sum instead keeps the
    equivalence exact also early in training, when the score-weighted sums are below 1.

    Args:
        local: scalar normaliser of this rank's share of the batch (no gradient needed).
        minimum: lower bound of the global normaliser (avoids dividing by ~0).

    Returns:
        Scalar tensor, detached; ``local.clamp(min=minimum)`` without a process group.
    """
    local = local.detach()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local.clamp(min=minimum)
    total = local.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.clamp(min=minimum) / dist.get_world_size()
