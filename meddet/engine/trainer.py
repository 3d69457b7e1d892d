"""The training loop: a minimal step; everything else is a hook.

:class:`Trainer` owns the model, optimiser, data and the iteration counter. Its loop is::

    before_train
    for each epoch:                      # epochs are for reporting; the loop counts iterations
        before_epoch
        for each iteration of the epoch:
            before_step
            run_step()                   # the only fixed part: batch -> losses -> update
            after_step
            iter += 1
        <loss averages reduced across ranks>
        after_epoch
    after_train                          # always, even when training stops with an error

Checkpointing, evaluation, the learning-rate schedule, progress bars, the log file, the CSV and
the plots are :class:`HookBase` subclasses (``meddet.engine.hooks``). Hooks run in the order
given, which matters at ``after_epoch``: evaluation must add its metrics before the results row
is written and before the checkpoint stores it.

To change what one iteration does (the distillation trainer), subclass and override
:meth:`Trainer.run_step`, or pass ``step_fn``; reuse :meth:`Trainer.next_batch`,
:meth:`Trainer.autocast` and :meth:`Trainer.apply_losses` so that AMP, the non-finite guard,
gradient clipping, the weight EMA and loss logging keep working.

A weight EMA (:class:`~meddet.engine.ema.ModelEMA`, ``ema=``) belongs to the update itself:
:meth:`Trainer.apply_losses` is the one place that knows whether the optimiser really
stepped, so it updates the average there. :attr:`Trainer.eval_model` (the average when there
is one) is what validation evaluates and what a checkpoint's ``model`` holds; the trained
weights go under ``train_model`` so that a resumed run continues them exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from meddet.engine import distributed as du
from meddet.engine.checkpoint import (
    capture_rng_state,
    load_model_weights,
    restore_rng_state,
    unwrap_model,
)
from meddet.engine.ema import ModelEMA
from meddet.engine.events import HookBase, Storage
from meddet.engine.events import fetch_scalars as _fetch_scalars
from meddet.errors import MedDetError

__all__ = ["HookBase", "NonFiniteLossError", "Storage", "Trainer"]


class NonFiniteLossError(MedDetError):
    """Training stopped because too many consecutive steps had a non-finite loss."""


class Trainer:
    """Iteration-based training loop with hooks and a pluggable step.

    Args:
        model: the module to train, already on ``device`` (may be DDP-wrapped). In train mode
            ``model(images, targets)`` returns a dict of scalar losses with the total in ``loss``.
        optimizer: updates the model's parameters.
        data_loader: yields ``(images, targets)``; its sampler should be a
            :class:`~meddet.engine.distributed.ResumableSampler` so that a resumed run sees
            the same batches (any iterable works, resuming then re-reads skipped batches).
        iters_per_epoch: iterations per epoch (for reporting and epoch-end hooks).
        max_iters: total iterations of the run.
        scheduler: stepped by :class:`~meddet.engine.hooks.LRSchedulerHook`, saved in checkpoints.
        hooks: run in order (see the module docstring).
        device: where batches are moved.
        seed: base seed for the per-epoch data order and DataLoader worker seeds.
        amp: mixed precision on CUDA (bfloat16 where supported, else float16 with a grad
            scaler); ignored on CPU.
        cpu_amp: bfloat16 autocast of the forward pass on the CPU (no grad scaler: bfloat16
            has float32's exponent range); ignored on CUDA.
        channels_last: feed NHWC images (the model should be converted too); CUDA only.
        grad_clip: max gradient L2 norm; ``None`` disables clipping.
        max_nonfinite: stop after this many consecutive non-finite steps.
        step_fn: ``step_fn(trainer)`` replaces :meth:`run_step` (an alternative to subclassing).
        checkpointables: extra objects with ``state_dict``/``load_state_dict`` saved under
            ``extra`` (e.g. a discriminator and its optimiser).
        ema: a moving average of ``model``'s weights, updated after every step of
            ``optimizer``; it becomes :attr:`eval_model` and the checkpoints' ``model``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 data_loader: Any, *, iters_per_epoch: int, max_iters: int,
                 scheduler: Any = None, hooks: Sequence[HookBase] = (),
                 device: str | torch.device = "cpu", seed: int = 0, amp: bool = False,
                 cpu_amp: bool = False,
                 channels_last: bool = False, grad_clip: float | None = None,
                 max_nonfinite: int = 20, step_fn: Callable[[Trainer], None] | None = None,
                 checkpointables: Mapping[str, Any] | None = None,
                 ema: ModelEMA | None = None) -> None:
        if iters_per_epoch < 1:
            raise MedDetError("the training set gives no batches: it has fewer images than the "
                              "number of processes; add images or use fewer processes")
        self.model = model
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.iters_per_epoch = int(iters_per_epoch)
        self.max_iters = int(max_iters)
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.seed = int(seed)
        self.grad_clip = grad_clip
        self.max_nonfinite = int(max_nonfinite)
        self.step_fn = step_fn
        self.checkpointables = dict(checkpointables or {})
        self.ema = ema
        on_cuda = self.device.type == "cuda"
        self.channels_last = bool(channels_last and on_cuda)
        self.amp_dtype: torch.dtype | None = None
        if amp and on_cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif cpu_amp and self.device.type == "cpu":
            self.amp_dtype = torch.bfloat16
        # Only float16 needs loss scaling; bfloat16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.iter = 0
        self.start_iter = 0
        self.epoch = 0
        self.storage = Storage()
        self.nonfinite_in_a_row = 0
        self.steps_run = 0                 # iterations this rank has run (skipped ones too)
        self.steps_per_rank: list[int] = []
        self.images_seen = 0               # images this rank has stepped on, this process
        self.data_time = 0.0               # seconds waiting for data in the current epoch
        self.epoch_start_time = time.perf_counter()
        self.last_batch_size = 0
        self.exception: BaseException | None = None
        self._data_iter: Iterator[Any] | None = None
        self.hooks: list[HookBase] = []
        self.register_hooks(hooks)

    # ------------------------------------------------------------------ hooks
    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append hooks; they run in registration order."""
        for h in hooks:
            h.attach(self)
            self.hooks.append(h)

    def _hook_keys(self) -> list[tuple[str, HookBase]]:
        # Keyed by each hook's declared key (numbered when repeated), not position: rank 0 has
        # more hooks (writers) than the other ranks, and a checkpoint must fit both.
        seen: dict[str, int] = {}
        out = []
        for h in self.hooks:
            name = h.state_key or type(h).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", h))
        return out

    def _call(self, name: str) -> None:
        for h in self.hooks:
            getattr(h, name)()

    # ------------------------------------------------------------------ loop
    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights the run produces: what validation evaluates and a checkpoint's
        ``model`` holds. The EMA's averaged model when the run keeps one, else the trained
        model (unwrapped from DDP)."""
        return self.ema.module if self.ema is not None else unwrap_model(self.model)

    @property
    def epochs(self) -> int:
        """Number of (possibly partial) epochs the run covers."""
        return math.ceil(self.max_iters / self.iters_per_epoch)

    def train(self) -> None:
        """Run from ``self.iter`` to ``max_iters``.

        Raises:
            NonFiniteLossError: ``max_nonfinite`` consecutive non-finite steps.
        """
        self.start_iter = self.iter
        self.exception = None
        try:
            self._call("before_train")
            while self.iter < self.max_iters:
                self.epoch = self.iter // self.iters_per_epoch
                epoch_end = min((self.epoch + 1) * self.iters_per_epoch, self.max_iters)
                self._data_iter = self._epoch_batches(self.epoch,
                                                      self.iter - self.epoch * self.iters_per_epoch)
                self.epoch_start_time = time.perf_counter()
                self.data_time = 0.0
                if self.iter == self.epoch * self.iters_per_epoch:
                    self.storage.start_epoch()  # a mid-epoch resume keeps the restored sums
                self._call("before_epoch")
                while self.iter < epoch_end:
                    self._call("before_step")
                    if self.step_fn is not None:
                        self.step_fn(self)
                    else:
                        self.run_step()
                    self.steps_run += 1
                    self._call("after_step")
                    self.iter += 1
                self._data_iter = None
                self._finish_epoch_scalars()
                self._call("after_epoch")
        except BaseException as exc:
            self.exception = exc
            raise
        finally:
            self._call("after_train")

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[Any]:
        loader = self.data_loader
        sampler = getattr(loader, "sampler", None)
        batch_size = getattr(loader, "batch_size", None)
        # Worker seeds are drawn from the loader's generator when an iterator is created;
        # reseeding it per epoch makes them a function of (seed, epoch) only.
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(self.seed * 100_003 + epoch)
        if isinstance(sampler, du.ResumableSampler) and batch_size:
            sampler.set_epoch(epoch, start=skip * batch_size)
            return iter(loader)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        it = iter(loader)
        for _ in range(skip):  # no way to seek: re-read the batches already trained on
            next(it)
        return it

    def _finish_epoch_scalars(self) -> None:
        # Loss means over all ranks (each rank saw different images); one collective per epoch.
        avgs = self.storage.averages()
        keys = sorted(avgs)
        if du.get_world_size() > 1:
            sums = du.all_reduce_sum([self.storage.sums[k] for k in keys]
                                     + [float(self.storage.counts[k]) for k in keys])
            n = len(keys)
            avgs = {k: sums[i] / sums[n + i] for i, k in enumerate(keys) if sums[n + i]}
            self.steps_per_rank = [int(s) for s in du.all_gather_object(self.steps_run)]
        else:
            self.steps_per_rank = [self.steps_run]
        self.storage.put_epoch(epoch=self.epoch + 1, iter=self.iter, **avgs)

    # ------------------------------------------------------------------ the step
    def next_batch(self) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The next ``(images, targets)`` of the epoch, moved to the device.

        Tensors in targets are moved; other values (ids, sizes, names) are kept.
        """
        assert self._data_iter is not None, "next_batch() is only valid inside train()"
        t0 = time.perf_counter()
        try:
            images, targets = next(self._data_iter)
        except StopIteration:
            raise RuntimeError(f"the data loader ran out after {self.iter} iterations; "
                               f"iters_per_epoch={self.iters_per_epoch} is too large") from None
        self.data_time += time.perf_counter() - t0
        nb = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=nb)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: (v.to(self.device, non_blocking=nb) if isinstance(v, torch.Tensor) else v)
                    for k, v in t.items()} for t in targets]
        self.last_batch_size = int(images.shape[0])
        return images, targets

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for the forward pass (a no-op unless AMP on CUDA or
        ``cpu_amp`` on the CPU)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def run_step(self) -> None:
        """One iteration: fetch a batch, compute the losses, update the weights."""
        images, targets = self.next_batch()
        with self.autocast():
            losses = self.model(images, targets)
        self.apply_losses(losses)

    def apply_losses(self, losses: Mapping[str, torch.Tensor], *,
                     optimizer: torch.optim.Optimizer | None = None,
                     parameters: Sequence[torch.nn.Parameter] | None = None) -> bool:
        """Backward ``losses["loss"]`` and step the optimiser, unless the loss is non-finite.

        Handles the grad scaler, clipping (``grad_clip``), the non-finite guard, the weight EMA
        (updated after a step of ``self.optimizer``) and logging of every scalar in ``losses``.
        Under DDP all ranks agree on skipping.

        Args:
            losses: scalar tensors; ``loss`` is the total to minimise.
            optimizer: defaults to ``self.optimizer``.
            parameters: what to clip; defaults to the optimiser's parameters.

        Returns:
            True if the optimiser stepped.

        Raises:
            NonFiniteLossError: this was the ``max_nonfinite``-th non-finite step in a row.
        """
        opt = optimizer or self.optimizer
        loss = losses["loss"]
        finite, scalars = _fetch_scalars(loss, losses)
        if du.any_rank(not finite, self.device if self.device.type == "cuda" else None):
            self._skip_step(opt, "loss")
            return False
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            params = parameters if parameters is not None else \
                [p for g in opt.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            # With a scaler, inf gradients are the scaler's business (it skips and re-scales).
            if self.scaler is None and not math.isfinite(norm.item()):
                self._skip_step(opt, "gradient")
                return False
        stepped = True
        if self.scaler is not None:
            tracks_scale = self.ema is not None and opt is self.optimizer
            scale = self.scaler.get_scale() if tracks_scale else 0.0
            self.scaler.step(opt)
            self.scaler.update()
            # The scaler skips a step with inf/NaN gradients and lowers its scale; only then
            # does the scale fall.
            stepped = not tracks_scale or self.scaler.get_scale() >= scale
        else:
            opt.step()
        if self.ema is not None and opt is self.optimizer and stepped:
            self.ema.update(self.model)
        self.nonfinite_in_a_row = 0
        self.images_seen += self.last_batch_size
        self.storage.put_scalars(**scalars)
        return True

    def skip_step(self, what: str, *, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Skip this iteration as non-finite, found by a custom step (e.g. the distillation
        discriminator's loss): no update, counted like :meth:`apply_losses`' own skips.

        Raises:
            NonFiniteLossError: this was the ``max_nonfinite``-th non-finite step in a row.
        """
        self._skip_step(optimizer or self.optimizer, what)

    def _skip_step(self, opt: torch.optim.Optimizer, what: str) -> None:
        opt.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        self.storage.nonfinite_total += 1
        if self.nonfinite_in_a_row >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"training stopped at iteration {self.iter + 1}: {self.nonfinite_in_a_row} "
                f"consecutive steps had a non-finite {what} (NaN/inf); the last good checkpoint "
                "is kept; lower --lr, check the data, or resume from last.pt")

    # ------------------------------------------------------------------ state
    def state_dict(self, *, iters_done: int | None = None) -> dict[str, Any]:
        """Everything needed to continue this run exactly (weights-only loadable).

        ``model`` holds :attr:`eval_model`'s weights. With :attr:`ema`, the trained weights are
        under ``train_model`` and the average's update count under ``ema`` (``{"updates"}``).

        Args:
            iters_done: the iterations completed, where a resumed run starts; default
                ``self.iter``. A hook saving in ``after_step`` passes ``trainer.iter + 1``
                (the current iteration has finished but the counter has not advanced yet).
        """
        done = self.iter if iters_done is None else int(iters_done)
        trained = unwrap_model(self.model).state_dict()
        state: dict[str, Any] = {"model": trained}
        if self.ema is not None:
            # Every consumer (eval, export, predict, teachers) reads `model`: give it the
            # average; resuming needs the trained weights as well.
            ema = self.ema.state_dict()
            state = {"model": ema.pop("module"), "train_model": trained, "ema": ema}
        state.update({
            "optimizer": self.optimizer.state_dict(),
            "epoch": done // self.iters_per_epoch,
            "iter": done,
            "rng": capture_rng_state(),
            "trainer": {
                "iter": done,
                "iters_per_epoch": self.iters_per_epoch,
                "max_iters": self.max_iters,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "steps_run": self.steps_run,
                "steps_per_rank": list(self.steps_per_rank),
                "world_size": du.get_world_size(),
                "storage": self.storage.state_dict(),
                "hooks": {key: h.state_dict() for key, h in self._hook_keys()},
            },
        })
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.checkpointables:
            state["extra"] = {k: v.state_dict() for k, v in self.checkpointables.items()}
        return state

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`state_dict` (plus ``meta``).

        The trained weights come from ``train_model`` when the checkpoint has one (a run with a
        weight EMA), else from ``model``. With :attr:`ema`, the average is restored from the
        checkpoint's ``model`` and ``ema``; a checkpoint of a run without one starts the
        average at the resumed weights.

        Raises:
            MedDetError: the checkpoint is not a training checkpoint of a compatible run
                (different iterations per epoch, missing optimiser state).
        """
        tstate = ckpt.get("trainer")
        if not isinstance(tstate, dict) or "optimizer" not in ckpt:
            raise MedDetError("the checkpoint has no training state (optimizer/trainer) to resume "
                              "from; it can only be evaluated or used as initial weights")
        if int(tstate["iters_per_epoch"]) != self.iters_per_epoch:
            raise MedDetError(
                f"cannot resume: the run had {tstate['iters_per_epoch']} iterations per epoch, "
                f"this one has {self.iters_per_epoch} (dataset, batch size or number of "
                "processes changed); resume with the original settings")
        # A run with a weight EMA stores the average as `model` and the trained weights apart.
        trained = ckpt.get("train_model", ckpt["model"])
        load_model_weights(unwrap_model(self.model), trained, source="resume checkpoint")
        if self.ema is not None:
            if "train_model" in ckpt:
                self.ema.load_state_dict({"module": ckpt["model"], **ckpt.get("ema", {})})
            else:  # a run without an EMA: the average starts (warm-up included) from here
                self.ema.load_state_dict({"module": trained, "updates": 0})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        for name, obj in self.checkpointables.items():
            if name in ckpt.get("extra", {}):
                obj.load_state_dict(ckpt["extra"][name])
        self.iter = int(tstate["iter"])
        self.nonfinite_in_a_row = int(tstate.get("nonfinite_in_a_row", 0))
        self.steps_run = int(tstate.get("steps_run", 0))
        self.steps_per_rank = list(tstate.get("steps_per_rank", []))
        self.storage.load_state_dict(tstate.get("storage", {}))
        hook_states = tstate.get("hooks", {})
        for key, h in self._hook_keys():
            if key in hook_states:
                h.load_state_dict(hook_states[key])
        if "rng" in ckpt:
            restore_rng_state(ckpt["rng"])
