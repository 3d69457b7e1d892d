"""LD (Zheng et al., CVPR 2022) from the best teacher: ``L_det + L_ld`` on the positives."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from meddet.config import DistillConfig
from meddet.distill.baselines import LDLoss
from meddet.distill.methods.base import DistillMethod, MethodLosses, StudentPass, TeacherPass
from meddet.engine.checkpoint import unwrap_model
from meddet.errors import MedDetError


class LD(DistillMethod):
    """Localization distillation of the box-edge distributions at the student's positives.

    Args:
        reg_max: the GFL ``reg_max`` shared by teacher and student.
    """

    num_teachers = 1
    teacher_outputs = ("bbox_preds",)

    def __init__(self, *, reg_max: int) -> None:
        self.module = LDLoss(reg_max=reg_max)

    @classmethod
    def from_config(cls, cfg: DistillConfig, *, student: nn.Module,
                    teachers: Sequence[nn.Module]) -> LD:
        s_rm, t_rm = unwrap_model(student).reg_max, unwrap_model(teachers[0]).reg_max
        if s_rm != t_rm:
            raise MedDetError(f"LD needs the same reg_max for teacher ({t_rm}) and student ({s_rm})")
        return cls(reg_max=s_rm)

    def losses(self, student: StudentPass, teachers: Sequence[TeacherPass]) -> MethodLosses:
        model = student.model
        asg = model.assign(student.cls_scores, student.targets, student.img_shape)
        _, s_reg = model.flatten_outputs(student.cls_scores, student.bbox_preds)
        _, t_reg = model.flatten_outputs(student.cls_scores, teachers[0].bbox_preds)
        if t_reg.shape != s_reg.shape:
            raise MedDetError(f"LD needs teacher and student outputs on the same grid, got "
                              f"{tuple(t_reg.shape)} and {tuple(s_reg.shape)}")
        n = s_reg.shape[0] * s_reg.shape[1]
        # All locations, averaged over the positives only: no boolean gather (whose size the
        # host would have to wait for).
        kd = self.module(s_reg.reshape(n, -1), t_reg.reshape(n, -1), mask=asg.pos_mask.reshape(n))
        return MethodLosses(student.loss_det + kd.float(), {"loss_ld": kd.detach()})
