"""One distillation iteration (the engine trainer's ``step_fn``) and its time split.

Per iteration :class:`DistillStep`:

1. runs the teachers in eval mode under ``torch.inference_mode`` (never updated: no optimiser
   holds their parameters and they have ``requires_grad=False``) and copies out only the
   outputs the method reads; with a :class:`~meddet.distill.cache.TeacherCache`, only on the
   images whose outputs it does not hold yet, the rest coming from the cache;
2. runs the student's ``forward_raw`` and its loss (eq. 12, ``L_det``), then the method's
   :meth:`~meddet.distill.methods.DistillMethod.losses`; the engine's
   :meth:`~meddet.engine.Trainer.apply_losses` steps the student's optimiser (student + the
   method's student-side parameters) with the engine's AMP, clipping and non-finite guard;
3. for a method with a discriminator (MedDet with AATM), hands D's loss back to the method,
   which steps its own optimiser.

The seconds spent in 1, 2 and 3 are measured by :class:`SplitClock` and logged per iteration
(``time_teacher``, ``time_student``, ``time_disc``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddet.distill.cache import TeacherCache, cache_keys
from meddet.distill.methods import DistillMethod, StudentPass, TeacherPass
from meddet.engine.checkpoint import unwrap_model
from meddet.engine.trainer import Trainer

__all__ = ["PHASES", "DistillStep", "SplitClock"]


def _schedule_scale(trainer: Trainer) -> float:
    """The student's current rate over its base rate (1 without a scheduler)."""
    group = trainer.optimizer.param_groups[0]
    base = group.get("initial_lr")
    return float(group["lr"]) / float(base) if base else 1.0


class SplitClock:
    """Seconds spent in the phases of each step, without making the host wait for the device.

    On CUDA the phase boundaries are events recorded on the current stream; a step's times are
    read once its last event has completed (checked without blocking at the next step) and
    the rest at :meth:`totals`. On the CPU they are ``time.perf_counter`` readings. A
    ``torch.cuda.synchronize`` per boundary would give the same split but stop the host from
    queueing work while the device runs.

    Args:
        device: where the step runs.
        names: the phases, in order; a step calls :meth:`mark` ``len(names) + 1`` times.
    """

    def __init__(self, device: torch.device, names: Sequence[str]) -> None:
        self.cuda = device.type == "cuda"
        self.names = list(names)
        self.seconds = dict.fromkeys(self.names, 0.0)
        self._marks: list[Any] = []
        self._pending: list[list[Any]] = []

    def mark(self, *, start: bool = False) -> None:
        """A phase boundary of the current step; ``start`` begins a step (dropping the marks of
        one that did not finish, e.g. after an exception)."""
        if start:
            self._marks = []
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks.append(ev)
        else:
            self._marks.append(time.perf_counter())
        if len(self._marks) == len(self.names) + 1:
            self._pending.append(self._marks)
            self._marks = []

    def collect(self, *, wait: bool = False) -> list[dict[str, float]]:
        """The per-phase seconds of the finished steps not collected yet (added to
        :attr:`seconds`); with ``wait``, waits for the device to finish them all."""
        done = []
        while self._pending:
            marks = self._pending[0]
            if self.cuda:
                if wait:
                    marks[-1].synchronize()
                elif not marks[-1].query():
                    break
                dt = [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]
            else:
                dt = [b - a for a, b in zip(marks, marks[1:])]
            self._pending.pop(0)
            step = dict(zip(self.names, dt))
            for k, v in step.items():
                self.seconds[k] += v
            done.append(step)
        return done

    def totals(self) -> dict[str, float]:
        """Seconds per phase over all finished steps."""
        self.collect(wait=True)
        return dict(self.seconds)


# The phases of a distillation step that SplitClock times.
PHASES = ("teacher", "student", "disc")


class DistillStep:
    """One distillation iteration, used as the engine trainer's ``step_fn``; the same for
    every method.

    Args:
        method: the distillation method (its losses, parameters and discriminator).
        teachers: the frozen teacher detectors it uses (empty for a method without teachers).
        teacher_img_size: resize the batch to this size for the teachers (``None``: as is).
        cache: reuse the teachers' outputs per (image, augmentation variant) (``None``: run the
            teachers on every batch); the batches' targets must carry ``aug_variant``.
    """

    def __init__(self, *, method: DistillMethod, teachers: Sequence[nn.Module],
                 teacher_img_size: int | None = None, cache: TeacherCache | None = None) -> None:
        self.method = method
        self.teachers = list(teachers)
        self.teacher_img_size = teacher_img_size
        self.cache = cache
        self.clock: SplitClock | None = None  # made on the first call (needs the device)

    def _forward_teachers(self, trainer: Trainer, images: Tensor) -> list[tuple[list[Tensor],
                                                                                 list[Tensor]]]:
        """Every teacher's raw ``(feats, bbox_preds)`` on ``images`` (inference tensors)."""
        x = images
        if self.teacher_img_size and self.teacher_img_size != images.shape[-1]:
            x = F.interpolate(images, size=(self.teacher_img_size,) * 2, mode="bilinear",
                              align_corners=False)
        outs = []
        with torch.inference_mode(), trainer.autocast():
            for t in self.teachers:
                feats, _, bbox = t.forward_raw(x)
                outs.append((feats, bbox))
        return outs

    def _run_teachers(self, trainer: Trainer, images: Tensor,
                      targets: Sequence[dict[str, Any]]) -> list[TeacherPass]:
        if self.cache is not None:
            hits = self.cache.hits
            passes = self.cache.lookup(images, cache_keys(targets),
                                       lambda x: self._forward_teachers(trainer, x))
            # Fraction of the batch's images served from the cache (its epoch mean is in the
            # history the run returns).
            trainer.storage.put_scalars(teacher_cache_hit=(self.cache.hits - hits) / len(targets))
            return passes
        wanted = self.method.teacher_outputs
        # Inference tensors cannot be saved for backward (AFA's conv needs its input): clone
        # into normal tensors, outside inference mode, only what the method uses.
        return [TeacherPass(feats=[f.clone() for f in feats] if "feats" in wanted else [],
                            bbox_preds=[b.clone() for b in bbox] if "bbox_preds" in wanted
                            else [])
                for feats, bbox in self._forward_teachers(trainer, images)]

    def __call__(self, trainer: Trainer) -> None:
        """Fetch a batch, step the student (and D), log losses and the time split."""
        if self.clock is None:
            self.clock = SplitClock(trainer.device, PHASES)
        clock = self.clock
        images, targets = trainer.next_batch()
        clock.mark(start=True)
        t_out = self._run_teachers(trainer, images, targets) if self.teachers else []
        clock.mark()
        student = unwrap_model(trainer.model)
        img_shape = (int(images.shape[-2]), int(images.shape[-1]))
        with trainer.autocast():
            feats, cls_scores, bbox_preds = student.forward_raw(images)
            det = student.loss(cls_scores, bbox_preds, targets, img_shape)
            # The losses are combined in fp32 (autocast may give bf16/fp16 terms): a sum that
            # overflows half precision must not become a spurious non-finite step.
            l_det = det["loss"].float()
            out = self.method.losses(StudentPass(student, feats, cls_scores, bbox_preds, targets,
                                                 img_shape, l_det), t_out)
        losses: dict[str, Tensor] = {"loss_det": l_det.detach(), "pos_iou": det["pos_iou"],
                                     **out.terms}
        disc = out.disc
        if disc is not None:
            losses["loss_disc"] = disc.detach()
        losses["loss"] = out.loss
        if disc is not None and not bool(torch.isfinite(disc.detach())):
            # D diverged (the adversarial game is the usual culprit): skip the whole step,
            # student included, and count it like any non-finite step (results.csv's
            # `nonfinite`; train.max_nonfinite in a row stop the run).
            trainer.skip_step("discriminator loss")
            stepped = False
        else:
            stepped = trainer.apply_losses(losses)
        clock.mark()
        if disc is not None:
            self.method.discriminator_step(disc, stepped=stepped, lr_scale=_schedule_scale(trainer))
        clock.mark()
        for dt in clock.collect():
            trainer.storage.put_scalars(**{f"time_{k}": v for k, v in dt.items()})

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per phase (teacher, student, disc) over the steps run so far."""
        return self.clock.totals() if self.clock else dict.fromkeys(PHASES, 0.0)
