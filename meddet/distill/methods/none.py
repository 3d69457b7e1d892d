"""No distillation: the student trained alone on ``L_det`` (the baseline of every table)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from meddet.config import DistillConfig
from meddet.distill.methods.base import DistillMethod, MethodLosses, StudentPass, TeacherPass


class NoDistillation(DistillMethod):
    """``L_det`` only; takes no teachers and has no parameters."""

    num_teachers = 0
    teacher_outputs = ()

    @classmethod
    def from_config(cls, cfg: DistillConfig, *, student: nn.Module,
                    teachers: Sequence[nn.Module]) -> NoDistillation:
        return cls()

    def losses(self, student: StudentPass, teachers: Sequence[TeacherPass]) -> MethodLosses:
        return MethodLosses(student.loss_det)
