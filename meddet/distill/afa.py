"""Adaptive feature alignment (AFA), eq. 6 of MedDet (Zhang et al., arXiv:2409.00204).

AFA maps one teacher FPN level onto the student's level of the same stride: a 1x1 conv changes
the channel count, then adaptive max pooling resizes to the student's spatial size. The paper's
eq. 13 writes ``align`` on the student, but its text describes AFA aligning the *teachers*; we
align the teachers because they are the ones whose shapes differ (other widths, or a larger
input size), so the student's features enter the loss untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AFA(nn.Module):
    """Align one teacher feature map to one student feature map (eq. 6).

    ``align(F_T) = AdaptiveMaxPool_{H_s, W_s}(Conv1x1_{C_t -> C_s}(F_T))``.

    When ``C_t == C_s`` the conv starts as the identity, so the aligned feature starts equal to
    the teacher's feature (pooled); otherwise it uses PyTorch's default initialisation.

    Args:
        in_channels: the teacher's channels ``C_t``.
        out_channels: the student's channels ``C_s``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        if in_channels == out_channels:
            # Identity start: the fused target is the teachers' own feature from step 0, which
            # matters when the fusion gets no gradient (e.g. ``--no-aatm``).
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(in_channels).view(in_channels, in_channels, 1, 1))
                self.proj.bias.zero_()

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Align ``x``.

        Args:
            x: teacher feature ``[B, C_t, H_t, W_t]``.
            size: the student's ``(H_s, W_s)``; any size, larger or smaller than ``(H_t, W_t)``.

        Returns:
            ``[B, C_s, H_s, W_s]``.
        """
        y = self.proj(x)
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.adaptive_max_pool2d(y, output_size=tuple(size))
        return y


class TeacherAligner(nn.Module):
    """One :class:`AFA` per teacher and FPN level.

    Args:
        teacher_channels: ``teacher_channels[t][l]`` is the channel count of teacher ``t`` at
            level ``l``.
        student_channels: the student's channel count per level (same number of levels).
    """

    def __init__(self, teacher_channels: Sequence[Sequence[int]],
                 student_channels: Sequence[int]) -> None:
        super().__init__()
        if not teacher_channels:
            raise ValueError("TeacherAligner needs at least one teacher")
        for t, chans in enumerate(teacher_channels):
            if len(chans) != len(student_channels):
                raise ValueError(f"teacher {t} has {len(chans)} levels, the student "
                                 f"{len(student_channels)}")
        self.num_teachers = len(teacher_channels)
        self.num_levels = len(student_channels)
        self.afa = nn.ModuleList(
            nn.ModuleList(AFA(c_t, c_s) for c_t, c_s in zip(chans, student_channels))
            for chans in teacher_channels
        )

    def forward(self, teacher_feats: Sequence[Sequence[Tensor]],
                sizes: Sequence[tuple[int, int]]) -> list[list[Tensor]]:
        """Align every teacher level.

        Args:
            teacher_feats: ``teacher_feats[t][l]`` is ``[B, C_t_l, H_t_l, W_t_l]``.
            sizes: the student's ``(H_l, W_l)`` per level.

        Returns:
            ``aligned[t][l]``: ``[B, C_s_l, H_l, W_l]``.
        """
        if len(teacher_feats) != self.num_teachers:
            raise ValueError(f"expected {self.num_teachers} teachers, got {len(teacher_feats)}")
        return [[afa(f, size) for afa, f, size in zip(level_afa, feats, sizes, strict=True)]
                for level_afa, feats in zip(self.afa, teacher_feats)]
