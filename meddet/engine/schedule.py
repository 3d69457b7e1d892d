"""Learning-rate schedule: linear warm-up, then step decay (mmdetection's "1x" schedule).

The factor applied to the base learning rate at iteration ``i`` (0-based) is::

    warm-up  (i < warmup_iters):  1 - (1 - i / warmup_iters) * (1 - warmup_ratio)
    decay:                         gamma ** (number of milestones <= i)

and the two multiply. The schedule is a closed-form function of the iteration, so resuming from
a checkpoint only needs the iteration count, and there is no drift from compounding factors.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


def scaled_lr(lr: float, batch_size: int, base_batch_size: int) -> float:
    """The linear scaling rule: ``lr`` was tuned for ``base_batch_size`` images per step.

    Args:
        lr: learning rate for ``base_batch_size`` images per optimiser step.
        batch_size: images per optimiser step actually used (summed over all processes).
        base_batch_size: the batch size ``lr`` refers to.
    """
    return lr * batch_size / base_batch_size


def milestones_from_fractions(fractions: Sequence[float], total_iters: int) -> list[int]:
    """Turn ``lr_steps`` fractions of training into iteration numbers.

    ``round`` rather than ``int`` so that ``8/12`` of a 12-epoch run lands exactly on the start
    of epoch 9 even when the fraction was written with few digits (``0.6666667``).
    """
    return sorted(round(f * total_iters) for f in fractions)


def lr_factor(it: int, *, warmup_iters: int, warmup_ratio: float, milestones: Sequence[int],
              gamma: float = 0.1) -> float:
    """The multiplier of the base learning rate at iteration ``it`` (see the module docstring)."""
    factor = gamma ** bisect.bisect_right(list(milestones), it)
    if warmup_iters > 0 and it < warmup_iters:
        factor *= 1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
    return factor


class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up followed by step decay, stepped once per iteration.

    ``last_epoch`` counts iterations here (torch's name is historical). After ``step()`` has been
    called ``k`` times the learning rate is ``base_lr * lr_factor(k)``, so the rate used by
    iteration ``k`` is the one set before it runs.

    Args:
        optimizer: the optimiser whose groups' ``initial_lr`` are the base rates.
        milestones: iterations at which the rate is multiplied by ``gamma``.
        warmup_iters: length of the linear warm-up; 0 disables it.
        warmup_ratio: factor at iteration 0 of the warm-up.
        gamma: decay factor at each milestone.
        last_epoch: the last finished iteration, -1 for a fresh start.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, milestones: Sequence[int],
                 warmup_iters: int = 0, warmup_ratio: float = 0.001, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        if not 0 < warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in (0, 1], got {warmup_ratio}")
        self.milestones = [int(m) for m in milestones]
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, it: int) -> float:
        """The multiplier of the base rate at iteration ``it``."""
        return lr_factor(it, warmup_iters=self.warmup_iters, warmup_ratio=self.warmup_ratio,
                         milestones=self.milestones, gamma=self.gamma)

    def get_lr(self) -> list[float]:
        f = self.factor(max(self.last_epoch, 0))
        return [base * f for base in self.base_lrs]

    # A closed form makes the chained and the "epoch argument" forms identical.
    _get_closed_form_lr = get_lr


def build_optimizer(params, *, lr: float, momentum: float, weight_decay: float,
                    kind: str = "sgd") -> torch.optim.Optimizer:
    """The optimiser over ``params`` (a module's trainable parameters, or an iterable of them).

    ``sgd`` is mmdetection's GFL optimiser, SGD with momentum and weight decay on every
    parameter (our choice: the paper gives no optimiser settings).
    ``adamw`` (betas 0.9/0.999, decoupled weight decay) converges far faster when training from
    scratch on a CPU budget, which is why the ``cpu-small`` and ``cpu-crop`` configs use it.
    """
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    params = [p for p in params if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_iters: int, lr_steps: Sequence[float],
                    warmup_iters: int, warmup_ratio: float) -> WarmupMultiStepLR:
    """The warm-up + step schedule for a run of ``total_iters`` iterations."""
    return WarmupMultiStepLR(optimizer, milestones=milestones_from_fractions(lr_steps, total_iters),
                             warmup_iters=warmup_iters, warmup_ratio=warmup_ratio)
