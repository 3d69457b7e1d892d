"""An exponential moving average (EMA) of a model's weights, kept beside the trained model.

Short, noisy runs end wherever the last mini-batches pushed the weights; an average over the
recent steps usually evaluates better (YOLOv5/8, RTMDet and mmdetection's ExpMomentumEMA ship
it). :class:`ModelEMA` holds the averaged copy; the :class:`~meddet.engine.trainer.Trainer`
updates it after every optimiser step it really takes (never after a step skipped for a
non-finite loss), evaluates it during training and stores it as the checkpoint's ``model``.

Why not ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (checked with
torch 2.x): its state dict is the wrapper's (``module.``-prefixed keys plus ``n_averaged``), so
the average could not be stored as the checkpoint's ``model`` and loaded into a detector as
is; its decay is constant (the warm-up ramp below would need a custom averaging function);
and with ``use_buffers=True`` it also averages integer buffers such as BatchNorm's
``num_batches_tracked``, which are counters and are copied here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch

from meddet.engine.checkpoint import load_model_weights, unwrap_model

__all__ = ["ModelEMA"]


class ModelEMA:
    """The moving average ``ema <- d_t * ema + (1 - d_t) * weights`` of a model's state.

    The decay warms up with the number of updates ``t`` (counted from 1):
    ``d_t = decay * (1 - exp(-t / warmup))``, so the first averages follow the fast-moving
    early weights closely and ``d_t`` approaches ``decay`` after a few ``warmup`` updates
    (``1 / (1 - d_t)`` is roughly how many recent updates are averaged). ``warmup=0`` uses
    ``decay`` from the first update.

    Every floating-point entry of the state dict is averaged, parameters and buffers alike:
    BatchNorm's running statistics then describe activations over the same window of steps
    as the averaged weights, instead of only the last few steps' raw weights (BatchNorm's own
    momentum of 0.1 remembers ~10 steps). Integer buffers (``num_batches_tracked``) are copied.

    Args:
        model: the model being trained (a DDP wrapper is unwrapped); it is deep-copied, so the
            average starts at its current weights, on its device.
        decay: the decay once warmed up, in (0, 1).
        warmup: warm-up length in updates (>= 0).

    Attributes:
        module: the averaged model, in eval mode, without gradients.
        updates: how many updates were applied (``t`` of the last one).
    """

    def __init__(self, model: torch.nn.Module, *, decay: float = 0.999,
                 warmup: float = 100) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"EMA warm-up must be >= 0, got {warmup}")
        self.decay = float(decay)
        self.warmup = float(warmup)
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.updates = 0

    def decay_at(self, t: int) -> float:
        """``d_t``, the decay of the ``t``-th update (``t`` >= 1)."""
        if self.warmup == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-t / self.warmup))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current state (call after an optimiser step).

        Args:
            model: the trained model (or its DDP wrapper), with the same state-dict keys.
        """
        self.updates += 1
        d = self.decay_at(self.updates)
        source = unwrap_model(model).state_dict()
        avg, new = [], []
        for key, value in self.module.state_dict().items():
            src = source[key].detach()
            if value.is_floating_point():
                avg.append(value)
                new.append(src.to(value.dtype))
            else:
                value.copy_(src)
        if avg:
            # One fused kernel per operation over all tensors instead of two per tensor.
            torch._foreach_mul_(avg, d)
            torch._foreach_add_(avg, new, alpha=1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": averaged state dict, "updates": t}`` (weights-only loadable)."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the decay and warm-up stay as constructed).

        Raises:
            MedDetError: the stored weights do not fit the model.
        """
        load_model_weights(self.module, state["module"], source="EMA weights")
        self.updates = int(state.get("updates", 0))
