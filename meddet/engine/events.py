"""What the training loop shares with its hooks: the hook interface and the logged scalars.

:class:`HookBase` is the interface every hook implements (and how it keeps state across a
resume); :class:`Storage` holds a step's scalars, their per-epoch means and the rows of
``results.csv`` that the hooks fill and write; :func:`fetch_scalars` reads a step's loss terms
off the device in one copy.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from meddet.engine.trainer import Trainer

__all__ = ["HookBase", "Storage", "fetch_scalars"]


def fetch_scalars(loss: torch.Tensor, losses: Mapping[str, Any]
                  ) -> tuple[bool, dict[str, float]]:
    """Whether ``loss`` is finite, and the one-element tensors of ``losses`` as floats.

    One device-to-host copy for all of them instead of one synchronisation per value. The
    values equal ``float(v)``: floating tensors are stacked in their promoted type (which holds
    each exactly) and the others go through float64.
    """
    keys = [k for k, v in losses.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    with torch.no_grad():
        parts = [loss if loss.numel() == 1 else torch.isfinite(loss).all()]
        parts += [losses[k] for k in keys]
        parts = [(p if p.is_floating_point() else p.double()).to(loss.device).reshape(())
                 for p in parts]
        values = torch.stack(parts).tolist()
    finite = math.isfinite(values[0]) if loss.numel() == 1 else values[0] != 0
    return finite, dict(zip(keys, values[1:]))


class HookBase:
    """Base class of trainer hooks; every method is optional.

    ``self.trainer`` is set (as a weak reference) when the hook is registered. During
    ``before_step`` / ``after_step`` ``trainer.iter`` is the index of the current iteration;
    at ``after_epoch`` it is the number of iterations completed so far.

    A hook that keeps state across a resume returns it from :meth:`state_dict`; the trainer
    saves it in the checkpoint's ``trainer.hooks`` under :attr:`state_key` and hands it back to
    :meth:`load_state_dict`. Code that reads a hook's saved state from a checkpoint uses the key
    the hook declares, never the hook's class name.
    """

    #: Key of this hook's state in a checkpoint's ``trainer.hooks``; ``None``: the class name.
    #: A key is part of the checkpoint format: once written, keep it.
    state_key: ClassVar[str | None] = None

    _trainer_ref: weakref.ref[Trainer] | None = None

    def attach(self, trainer: Trainer) -> None:
        """Register with ``trainer`` (a weak reference: the trainer owns its hooks)."""
        self._trainer_ref = weakref.ref(trainer)

    @property
    def trainer(self) -> Trainer:
        """The trainer this hook is registered with."""
        assert self._trainer_ref is not None, "hook is not registered with a trainer"
        trainer = self._trainer_ref()
        assert trainer is not None
        return trainer

    def before_train(self) -> None:
        """Called once before the first iteration (also after a resume)."""

    def after_train(self) -> None:
        """Called once at the end, also when training stopped with an exception."""

    def before_epoch(self) -> None:
        """Called at the start of every (possibly resumed) epoch."""

    def after_epoch(self) -> None:
        """Called at the end of every epoch, and after the last iteration of a capped run."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_step(self) -> None:
        """Called after each iteration (including ones skipped for a non-finite loss)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state saved in checkpoints (e.g. the best metric so far)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Storage:
    """Scalars of the current epoch and the per-epoch history (the rows of ``results.csv``).

    ``put_scalars`` accumulates per-iteration values (losses) whose epoch means become part of
    the row; ``put_epoch`` sets row values directly (lr, validation metrics, seconds).
    """

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.row: dict[str, float | int | None] = {}
        self.history: list[dict[str, Any]] = []
        self.nonfinite_total = 0

    def put_scalars(self, **values: float) -> None:
        """Record one iteration's scalars."""
        for k, v in values.items():
            v = float(v)
            self.latest[k] = v
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def put_epoch(self, **values: Any) -> None:
        """Set values of the current epoch's row."""
        self.row.update(values)

    def averages(self) -> dict[str, float]:
        """Epoch means of the per-iteration scalars."""
        return {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}

    def start_epoch(self) -> None:
        """Forget the previous epoch's scalars and row."""
        self.sums, self.counts, self.row = {}, {}, {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe copy (lets a resumed run finish the epoch's averages and the CSV)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts), "row": dict(self.row),
                "history": [dict(r) for r in self.history], "latest": dict(self.latest),
                "nonfinite_total": self.nonfinite_total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sums = dict(state.get("sums", {}))
        self.counts = dict(state.get("counts", {}))
        self.row = dict(state.get("row", {}))
        self.history = [dict(r) for r in state.get("history", [])]
        self.latest = dict(state.get("latest", {}))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
