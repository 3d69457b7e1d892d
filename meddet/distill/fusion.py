"""Fusing aligned teacher features: LWFF (eqs. 7-11 of MedDet, arXiv:2409.00204) and the
``sum`` / ``concat`` alternatives of the paper's Table V.

Every fusion takes the aligned features of ``n`` teachers at one FPN level, each
``[B, C, H, W]``, and returns one ``[B, C, H, W]`` target. :class:`LevelwiseFusion` holds one
fusion per FPN level (levels differ in their channel statistics, so they do not share weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

FusionKind = Literal["lwff", "sum", "concat"]
FUSIONS: tuple[str, ...] = ("lwff", "sum", "concat")


def _init_mean_reduce(conv: nn.Conv2d, num_teachers: int, channels: int) -> None:
    # Start the n*C -> C reduction as the mean of the teachers, so the fused target is the
    # teachers' average from step 0 instead of a random projection.
    with torch.no_grad():
        eye = torch.eye(channels) / num_teachers
        conv.weight.copy_(eye.repeat(1, num_teachers).view(channels, channels * num_teachers, 1, 1))
        conv.bias.zero_()


class ChannelAlpha(nn.Module):
    """``α(F) = sigmoid(Conv1x1(GAP(F)))``: per-channel weights.

    Eqs. 7-8 compute the weights from the pooled features with a 1x1 conv; the sigmoid is our
    addition, which keeps every weight in (0, 1), so a teacher's channel can be damped but
    never amplified without bound or flipped in sign. The conv starts at zero so every α starts
    at 0.5 (a uniform weighting).

    Args:
        channels: ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, C, H, W]`` -> weights ``[B, C, 1, 1]`` in (0, 1)."""
        return torch.sigmoid(self.conv(x.mean(dim=(2, 3), keepdim=True)))


class LWFF(nn.Module):
    """Learnable weighted feature fusion (eqs. 7-11).

    ``F'_Ti = α(F_Ti) * F_Ti``; ``F = Conv1x1(concat(F'_T1, ..., F'_Tn))`` back to ``C``
    channels. By default one α module is shared by all teachers; ``per_teacher_alpha=True``
    gives each teacher its own.

    Args:
        channels: ``C`` of the aligned features and of the output.
        num_teachers: ``n`` (1 or more).
        per_teacher_alpha: one α module per teacher instead of a shared one.
    """

    def __init__(self, channels: int, num_teachers: int, *, per_teacher_alpha: bool = False) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        self.alphas = nn.ModuleList(
            ChannelAlpha(channels) for _ in range(num_teachers if per_teacher_alpha else 1))
        self.reduce = nn.Conv2d(channels * num_teachers, channels, kernel_size=1)
        _init_mean_reduce(self.reduce, num_teachers, channels)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats``: ``n`` tensors ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        _check_count(feats, self.num_teachers)
        weighted = [f * self.alphas[i if len(self.alphas) > 1 else 0](f)
                    for i, f in enumerate(feats)]
        return self.reduce(torch.cat(weighted, dim=1))


class SumFusion(nn.Module):
    """Element-wise sum of the aligned features (Table V, ``sum``); no parameters.

    Args:
        num_teachers: ``n``.
    """

    def __init__(self, num_teachers: int) -> None:
        super().__init__()
        self.num_teachers = num_teachers

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats``: ``n`` tensors ``[B, C, H, W]`` -> their sum ``[B, C, H, W]``."""
        _check_count(feats, self.num_teachers)
        return torch.stack(list(feats), dim=0).sum(dim=0)


class ConcatFusion(nn.Module):
    """Concatenation + 1x1 conv without the α weights (Table V, ``concat``).

    Args:
        channels: ``C``.
        num_teachers: ``n``.
    """

    def __init__(self, channels: int, num_teachers: int) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        self.reduce = nn.Conv2d(channels * num_teachers, channels, kernel_size=1)
        _init_mean_reduce(self.reduce, num_teachers, channels)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats``: ``n`` tensors ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        _check_count(feats, self.num_teachers)
        return self.reduce(torch.cat(list(feats), dim=1))


def _check_count(feats: Sequence[Tensor], n: int) -> None:
    if len(feats) != n:
        raise ValueError(f"fusion built for {n} teachers got {len(feats)} features")


def build_fusion(kind: FusionKind, *, channels: int, num_teachers: int,
                 per_teacher_alpha: bool = False) -> nn.Module:
    """Build one level's fusion.

    Args:
        kind: ``lwff`` (the paper), ``sum`` or ``concat``.
        channels: ``C`` of the aligned features.
        num_teachers: ``n`` >= 1.
        per_teacher_alpha: LWFF only: one α per teacher.

    Raises:
        ValueError: unknown ``kind`` or ``num_teachers < 1``.
    """
    if num_teachers < 1:
        raise ValueError(f"num_teachers must be >= 1, got {num_teachers}")
    if kind == "lwff":
        return LWFF(channels, num_teachers, per_teacher_alpha=per_teacher_alpha)
    if kind == "sum":
        return SumFusion(num_teachers)
    if kind == "concat":
        return ConcatFusion(channels, num_teachers)
    raise ValueError(f"unknown fusion {kind!r}; use one of {', '.join(FUSIONS)}")


class LevelwiseFusion(nn.Module):
    """One fusion per FPN level.

    Args:
        kind: see :func:`build_fusion`.
        channels: the (student) channel count per level.
        num_teachers: ``n``.
        per_teacher_alpha: see :class:`LWFF`.
    """

    def __init__(self, kind: FusionKind, *, channels: Sequence[int], num_teachers: int,
                 per_teacher_alpha: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.levels = nn.ModuleList(
            build_fusion(kind, channels=c, num_teachers=num_teachers,
                         per_teacher_alpha=per_teacher_alpha) for c in channels)

    def forward(self, aligned: Sequence[Sequence[Tensor]]) -> list[Tensor]:
        """Fuse.

        Args:
            aligned: ``aligned[t][l]``: teacher ``t``'s aligned feature at level ``l``,
                ``[B, C_l, H_l, W_l]`` (the output of
                :class:`~meddet.distill.afa.TeacherAligner`).

        Returns:
            The fused target per level, ``[B, C_l, H_l, W_l]``.
        """
        return [fuse([per_teacher[lvl] for per_teacher in aligned])
                for lvl, fuse in enumerate(self.levels)]
