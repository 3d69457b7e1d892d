"""MedDet: all teachers, AFA + fusion + AATM, trained on eq. 14 (arXiv:2409.00204, Sec. III).

The student's optimiser trains the student and the generator ``G``; an Adam optimiser trains
``D`` with AFA and the fusion on D's BCE (see :mod:`meddet.distill.distiller` for why the
fusion sits on that side). Without AATM only ``L_dist`` is added and there is no ``D``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from meddet.config import DistillConfig
from meddet.distill.aatm import DiscMode
from meddet.distill.distiller import MedDetDistiller
from meddet.distill.fusion import FusionKind
from meddet.distill.losses import total_loss
from meddet.distill.methods.base import (
    DistillMethod,
    MethodLosses,
    StudentPass,
    TeacherPass,
    fpn_channels,
)


class MedDet(DistillMethod):
    """Multi-teacher adversarial distillation.

    Args:
        teacher_channels: ``teacher_channels[t][l]``: channels of teacher ``t`` at level ``l``.
        student_channels: the student's channels per level.
        fusion: ``lwff`` (paper), ``sum`` or ``concat``.
        per_teacher_alpha: LWFF with one α module per teacher.
        aatm: use the adversarial auxiliary teacher module (``G`` and ``D``).
        disc_mode: ``pixel`` or ``global`` discriminator.
        sigma, tau: eq. 14's weights of ``L_det`` and ``L_dist``.
        disc_lr: Adam learning rate of the discriminator side.
    """

    num_teachers = None
    teacher_outputs = ("feats",)
    resizes_teachers = True  # AFA pools the teachers' features to the student's sizes

    def __init__(self, *, teacher_channels: Sequence[Sequence[int]],
                 student_channels: Sequence[int], fusion: FusionKind = "lwff",
                 per_teacher_alpha: bool = False, aatm: bool = True,
                 disc_mode: DiscMode = "pixel", sigma: float = 0.5, tau: float = 0.3,
                 disc_lr: float = 1e-4) -> None:
        self.module = MedDetDistiller(teacher_channels=teacher_channels,
                                      student_channels=student_channels, fusion=fusion,
                                      per_teacher_alpha=per_teacher_alpha, aatm=aatm,
                                      disc_mode=disc_mode)
        self.sigma, self.tau = sigma, tau
        d_params = list(self.module.teacher_side_parameters())
        # Adam with β1 = 0.5, the usual choice for GAN discriminators (DCGAN).
        self.disc_optimizer = (torch.optim.Adam(d_params, lr=disc_lr, betas=(0.5, 0.999))
                               if d_params else None)

    @classmethod
    def from_config(cls, cfg: DistillConfig, *, student: nn.Module,
                    teachers: Sequence[nn.Module]) -> MedDet:
        return cls(teacher_channels=[fpn_channels(t) for t in teachers],
                   student_channels=fpn_channels(student), fusion=cfg.fusion,
                   per_teacher_alpha=cfg.per_teacher_alpha, aatm=cfg.aatm,
                   disc_mode=cfg.disc_mode, sigma=cfg.sigma, tau=cfg.tau, disc_lr=cfg.disc_lr)

    def student_parameters(self) -> list[nn.Parameter]:
        return list(self.module.student_side_parameters())

    def losses(self, student: StudentPass, teachers: Sequence[TeacherPass]) -> MethodLosses:
        out = self.module([f.float() for f in student.feats], [t.feats for t in teachers])
        loss = total_loss(student.loss_det, out["dist"], out["adv"], sigma=self.sigma,
                          tau=self.tau)
        terms = {"loss_dist": out["dist"].detach(), "loss_adv": out["adv"].detach()}
        disc = out["disc"] if self.disc_optimizer is not None else None
        return MethodLosses(loss, terms, disc)
