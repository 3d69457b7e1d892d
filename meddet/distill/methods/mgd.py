"""MGD (Yang et al., ECCV 2022) from the best teacher: ``L_det + L_mgd``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from meddet.config import DistillConfig
from meddet.distill.baselines import MGDLoss
from meddet.distill.methods.base import (
    DistillMethod,
    MethodLosses,
    StudentPass,
    TeacherPass,
    fpn_channels,
)


class MGD(DistillMethod):
    """Masked generative distillation on the FPN levels.

    Args:
        student_channels, teacher_channels: per level.
        mask_ratio: fraction of masked student locations (MGD's λ).
        alpha: loss weight.
    """

    num_teachers = 1
    teacher_outputs = ("feats",)

    def __init__(self, *, student_channels: Sequence[int], teacher_channels: Sequence[int],
                 mask_ratio: float = 0.65, alpha: float = 2e-5) -> None:
        self.module = MGDLoss(student_channels, teacher_channels, mask_ratio=mask_ratio,
                              alpha=alpha)

    @classmethod
    def from_config(cls, cfg: DistillConfig, *, student: nn.Module,
                    teachers: Sequence[nn.Module]) -> MGD:
        return cls(student_channels=fpn_channels(student), teacher_channels=fpn_channels(teachers[0]))

    def losses(self, student: StudentPass, teachers: Sequence[TeacherPass]) -> MethodLosses:
        kd = self.module(student.feats, teachers[0].feats)
        return MethodLosses(student.loss_det + kd.float(), {"loss_mgd": kd.detach()})
