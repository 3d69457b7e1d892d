"""FGD (Yang et al., CVPR 2022) from the best teacher: ``L_det + L_fgd``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from meddet.config import DistillConfig
from meddet.distill.baselines import FGDLoss
from meddet.distill.methods.base import (
    DistillMethod,
    MethodLosses,
    StudentPass,
    TeacherPass,
    fpn_channels,
)


class FGD(DistillMethod):
    """Focal and global distillation on the FPN levels, foreground from the batch's boxes.

    Args:
        student_channels, teacher_channels: per level.
        temperature: attention temperature.
        alpha, beta, gamma, lam: weights of the foreground, background, attention and global
            terms.
    """

    num_teachers = 1
    teacher_outputs = ("feats",)

    def __init__(self, *, student_channels: Sequence[int], teacher_channels: Sequence[int],
                 temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4,
                 gamma: float = 5e-4, lam: float = 5e-6) -> None:
        self.module = FGDLoss(student_channels, teacher_channels, temperature=temperature,
                              alpha=alpha, beta=beta, gamma=gamma, lam=lam)

    @classmethod
    def from_config(cls, cfg: DistillConfig, *, student: nn.Module,
                    teachers: Sequence[nn.Module]) -> FGD:
        return cls(student_channels=fpn_channels(student), teacher_channels=fpn_channels(teachers[0]))

    def losses(self, student: StudentPass, teachers: Sequence[TeacherPass]) -> MethodLosses:
        out = self.module(student.feats, teachers[0].feats,
                          [t["boxes"] for t in student.targets], student.img_shape)
        return MethodLosses(student.loss_det + out["loss"].float(),
                            {"loss_fgd": out["loss"].detach()})
