"""The interface every distillation method implements, and what the training step hands it.

A method is a small object built once per run from the distillation config, the student and
its teachers. It declares, as class attributes, what the step has to provide:

* :attr:`~DistillMethod.num_teachers`: every teacher given (``None``), the one with the best
  recorded val mAP50 (``1``), or none (``0``);
* :attr:`~DistillMethod.teacher_outputs`: which teacher outputs it reads (``"feats"``: the FPN
  levels, ``"bbox_preds"``: the regression logits), so the step copies only those;
* :attr:`~DistillMethod.resizes_teachers`: whether it accepts teachers run at another input
  size than the student's (``distill.teacher_img_size``).

Per iteration the step calls :meth:`~DistillMethod.losses` inside the trainer's autocast with
the student's forward pass (:class:`StudentPass`) and the teachers' (:class:`TeacherPass`), and
gets back :class:`MethodLosses`: the total the student side minimises, the terms to log and,
for an adversarial method, the discriminator's loss, which the step hands back to
:meth:`~DistillMethod.discriminator_step` after the student's update.

Trainable state lives in :attr:`~DistillMethod.module` (saved as ``extra["distill"]`` in
``last.pt`` / ``best.pt``): :meth:`~DistillMethod.student_parameters` of it are trained by the
student's optimiser; :attr:`~DistillMethod.disc_optimizer` (saved as
``extra["disc_optimizer"]``) trains the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from meddet.config import DistillConfig
from meddet.engine.checkpoint import unwrap_model

__all__ = ["DistillMethod", "MethodLosses", "StudentPass", "TeacherPass", "fpn_channels"]


def fpn_channels(model: nn.Module) -> list[int]:
    """A detector's FPN channels per level (the width of its ``forward_raw`` features)."""
    m = unwrap_model(model)
    return [int(m.fpn_channels)] * len(m.strides)


@dataclass
class StudentPass:
    """The student's forward pass on one batch.

    Attributes:
        model: the student (unwrapped :class:`~meddet.models.GFLDetector`: ``assign``,
            ``flatten_outputs`` and ``reg_max`` are there).
        feats: per FPN level ``[B, C, H_l, W_l]``, with gradient.
        cls_scores: per level ``[B, num_classes, H_l, W_l]`` classification logits.
        bbox_preds: per level ``[B, 4 * (reg_max + 1), H_l, W_l]`` box-edge distribution logits.
        targets: per image ``{"boxes": [N, 4] xyxy input pixels, "labels": [N]}``.
        img_shape: the padded input ``(H, W)``.
        loss_det: the detection loss ``L_det`` (eq. 12), an fp32 scalar.
    """

    model: nn.Module
    feats: list[Tensor]
    cls_scores: list[Tensor]
    bbox_preds: list[Tensor]
    targets: list[dict[str, Any]]
    img_shape: tuple[int, int]
    loss_det: Tensor


@dataclass
class TeacherPass:
    """One frozen teacher's outputs on the batch (normal tensors, no gradient).

    Only the outputs named in the method's ``teacher_outputs`` are filled; the others are empty.

    Attributes:
        feats: per FPN level ``[B, C_t, H_t_l, W_t_l]``.
        bbox_preds: per level ``[B, 4 * (reg_max + 1), H_t_l, W_t_l]``.
    """

    feats: list[Tensor] = field(default_factory=list)
    bbox_preds: list[Tensor] = field(default_factory=list)


@dataclass
class MethodLosses:
    """What a method returns for one iteration.

    Attributes:
        loss: the total the student's optimiser minimises (fp32, with its graph); ``L_det``
            included.
        terms: scalars to log, named ``loss_<term>`` (detached), e.g. ``{"loss_mgd": ...}``.
        disc: the discriminator side's loss (with its graph), or ``None``; only a method with a
            :attr:`DistillMethod.disc_optimizer` returns one.
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    disc: Tensor | None = None


class DistillMethod(ABC):
    """Base class of the distillation methods (see the module docstring).

    A subclass sets the class attributes, builds its modules in ``__init__`` from plain
    values, translates the config in :meth:`from_config`, and implements :meth:`losses`.
    """

    #: Every teacher given (``None``), the best recorded one (``1``), or none (``0``).
    num_teachers: ClassVar[int | None] = None
    #: The teacher outputs :meth:`losses` reads: ``"feats"`` and/or ``"bbox_preds"``.
    teacher_outputs: ClassVar[tuple[str, ...]] = ("feats",)
    #: Whether teachers may run at another input size than the student's.
    resizes_teachers: ClassVar[bool] = False

    #: The trainable distillation modules (``None``: the method has no parameters).
    module: nn.Module | None = None
    #: Trains the discriminator side on :attr:`MethodLosses.disc` (``None``: no such side).
    disc_optimizer: torch.optim.Optimizer | None = None

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: DistillConfig, *, student: nn.Module,
                    teachers: Sequence[nn.Module]) -> DistillMethod:
        """Build the method for ``student`` and the teachers it uses.

        Raises:
            MedDetError: the student and teachers do not fit the method.
        """

    def to(self, device: torch.device) -> DistillMethod:
        """Move :attr:`module` to ``device`` (its parameters stay the same objects)."""
        if self.module is not None:
            self.module.to(device)
        return self

    def student_parameters(self) -> list[nn.Parameter]:
        """Trained with the student by its optimiser (default: all of :attr:`module`)."""
        return list(self.module.parameters()) if self.module is not None else []

    def checkpointables(self) -> dict[str, Any]:
        """The state saved in the checkpoint's ``extra`` (keys are part of its format)."""
        out: dict[str, Any] = {}
        if self.module is not None:
            out["distill"] = self.module
        if self.disc_optimizer is not None:
            out["disc_optimizer"] = self.disc_optimizer
        return out

    @abstractmethod
    def losses(self, student: StudentPass, teachers: Sequence[TeacherPass]) -> MethodLosses:
        """The losses of one iteration (called inside the trainer's autocast)."""

    def discriminator_step(self, disc: Tensor, *, stepped: bool, lr_scale: float = 1.0) -> None:
        """Update the discriminator side after the student's update.

        Args:
            disc: :attr:`MethodLosses.disc` of this iteration (finite when ``stepped``).
            stepped: whether the student's optimiser stepped; a skipped iteration updates
                nothing.
            lr_scale: the student's schedule factor for this iteration (its rate over its base
                rate). The discriminator's rate is its base rate times this factor, so warm-up
                and steps apply to both players: a discriminator left at full rate while the
                student's rate drops ×100 overpowers the generator (its adversarial loss grows).
        """
        assert self.disc_optimizer is not None, "only a method with a disc_optimizer has a D"
        for group in self.disc_optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * lr_scale
        self.disc_optimizer.zero_grad(set_to_none=True)
        if stepped:
            # D's loss is fp32 from logits; it needs no loss scaling even under fp16 AMP.
            disc.backward()
            self.disc_optimizer.step()
