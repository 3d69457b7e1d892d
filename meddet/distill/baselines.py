"""The knowledge-distillation baselines of MedDet's Table I, each with one teacher.

* MGD — Yang et al., "Masked Generative Distillation", ECCV 2022: mask random student pixels,
  regenerate the teacher's feature from what is left.
* FGD — Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022:
  foreground/background feature imitation weighted by the teacher's attention, an attention
  loss and a global relation loss through a GcBlock (Cao et al., GCNet, ICCVW 2019).
* LD — Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022: KL
  divergence between teacher and student box-edge distributions of the GFL regression branch
  on positive locations.

All three take per-level lists of tensors; the teacher's features must already have the
student's spatial shape (the baselines run the teacher at the student's input size). Channel
counts may differ: a 1x1 conv aligns the student to the teacher (as in the MGD and FGD papers),
and is the identity when they match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _align(student_channels: int, teacher_channels: int) -> nn.Module:
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


def _check_pair(s: Tensor, t: Tensor) -> None:
    if s.shape[0] != t.shape[0] or s.shape[-2:] != t.shape[-2:]:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} need the same "
                         "batch and spatial size; run the teacher at the student's input size")


# --------------------------------------------------------------------------------------- MGD

class MGDLoss(nn.Module):
    """Masked generative distillation, summed over FPN levels.

    Per level: a random spatial mask zeroes a fraction ``mask_ratio`` (λ) of the student's
    locations; a generator (Conv3x3 -> ReLU -> Conv3x3, one per level) rebuilds the teacher
    feature; the loss is ``alpha * sum((G(align(S)·M) - T)**2) / B``.

    Args:
        student_channels: per level.
        teacher_channels: per level.
        mask_ratio: λ, the fraction of masked locations (0.65 in MGD).
        alpha: loss weight (2e-5 in MGD's detection configs).
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], *,
                 mask_ratio: float = 0.65, alpha: float = 2e-5) -> None:
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.alpha = alpha
        self.align = nn.ModuleList(_align(s, t) for s, t in zip(student_channels, teacher_channels))
        self.generation = nn.ModuleList(
            nn.Sequential(nn.Conv2d(t, t, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(t, t, 3, padding=1)) for t in teacher_channels)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], *,
                generator: torch.Generator | None = None) -> Tensor:
        """Loss.

        Args:
            student_feats: per level ``[B, C_s, H_l, W_l]``.
            teacher_feats: per level ``[B, C_t, H_l, W_l]``.
            generator: RNG for the masks (default: the global one).

        Returns:
            fp32 scalar.
        """
        total = student_feats[0].new_zeros((), dtype=torch.float32)
        for s, t, align, gen in zip(student_feats, teacher_feats, self.align, self.generation,
                                    strict=True):
            _check_pair(s, t)
            s = align(s)
            b, _, h, w = s.shape
            rand = torch.rand((b, 1, h, w), generator=generator, device=s.device)
            keep = (rand >= self.mask_ratio).to(s.dtype)
            rebuilt = gen(s * keep)
            total = total + (rebuilt.float() - t.float()).pow(2).sum() / b
        return self.alpha * total


# --------------------------------------------------------------------------------------- FGD

def box_masks(boxes: Sequence[Tensor], img_size: tuple[int, int],
              feat_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """FGD's foreground (with scale weights) and background masks for one level.

    A feature cell ``[j, j+1) x [i, i+1)`` belongs to a box when it overlaps it (at least one
    cell per box). A foreground cell weighs ``1 / (number of cells of the box)``, the largest
    such weight when boxes overlap; background cells weigh ``1 / (number of background
    cells)``, so each box and the whole background count the same regardless of size.

    Args:
        boxes: per image ``[N_b, 4]`` xyxy in input pixels.
        img_size: the (padded) input ``(H_img, W_img)``.
        feat_size: ``(H, W)`` of the level.

    Returns:
        ``(fg, bg)``, each ``[B, H, W]`` float.
    """
    h, w = feat_size
    bsz = len(boxes)
    device = boxes[0].device if bsz else torch.device("cpu")
    kmax = max((len(b) for b in boxes), default=0)
    fg = torch.zeros((bsz, h, w), device=device)
    if kmax:
        padded = torch.zeros((bsz, kmax, 4), device=device)
        valid = torch.zeros((bsz, kmax), dtype=torch.bool, device=device)
        for i, b in enumerate(boxes):
            padded[i, :len(b)] = b.float()
            valid[i, :len(b)] = True
        sx, sy = w / img_size[1], h / img_size[0]
        x1 = (padded[..., 0] * sx).floor().clamp(0, w - 1)
        y1 = (padded[..., 1] * sy).floor().clamp(0, h - 1)
        x2 = torch.maximum((padded[..., 2] * sx).ceil() - 1, x1).clamp(max=w - 1)
        y2 = torch.maximum((padded[..., 3] * sy).ceil() - 1, y1).clamp(max=h - 1)
        xs = torch.arange(w, device=device).view(1, 1, 1, w)
        ys = torch.arange(h, device=device).view(1, 1, h, 1)
        inside = ((xs >= x1[..., None, None]) & (xs <= x2[..., None, None])
                  & (ys >= y1[..., None, None]) & (ys <= y2[..., None, None])
                  & valid[..., None, None])
        area = ((x2 - x1 + 1) * (y2 - y1 + 1))[..., None, None]
        fg = (inside.float() / area).amax(dim=1)
    bg = (fg == 0).float()
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp(min=1)
    return fg, bg


def spatial_attention(x: Tensor, temperature: float) -> Tensor:
    """``H·W·softmax(mean_c |x| / T)`` over positions: ``[B, C, H, W]`` -> ``[B, H, W]``."""
    b, _, h, w = x.shape
    g = x.float().abs().mean(dim=1).view(b, -1)
    return (h * w * F.softmax(g / temperature, dim=1)).view(b, h, w)


def channel_attention(x: Tensor, temperature: float) -> Tensor:
    """``C·softmax(mean_hw |x| / T)`` over channels: ``[B, C, H, W]`` -> ``[B, C]``."""
    g = x.float().abs().mean(dim=(2, 3))
    return x.shape[1] * F.softmax(g / temperature, dim=1)


class GcBlock(nn.Module):
    """Global context block (GCNet): attention pooling over positions + bottleneck transform,
    added back to every position. The last conv starts at zero, so the block starts as the
    identity.

    Args:
        channels: ``C``.
        ratio: bottleneck width ``C * ratio``.
    """

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        mid = max(1, int(channels * ratio))
        self.mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, mid, kernel_size=1),
            nn.LayerNorm([mid, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        attn = F.softmax(self.mask(x).view(b, 1, h * w), dim=2)  # [B, 1, HW]
        context = torch.bmm(x.view(b, c, h * w), attn.transpose(1, 2)).view(b, c, 1, 1)
        return x + self.transform(context)


class FGDLoss(nn.Module):
    """Focal and global distillation, summed over FPN levels.

    Per level, with the teacher's spatial attention ``A_S`` and channel attention ``A_C``
    (temperature ``T``), foreground mask ``M`` with scale weights and background mask ``B``
    (:func:`box_masks`) and ``D = (T_feat - align(S))**2``::

        L_fea    = alpha * sum(M·A_S·A_C·D) + beta * sum(B·A_S·A_C·D)
        L_at     = gamma * (sum|A_S^t - A_S^s| + sum|A_C^t - A_C^s|)
        L_global = lam * sum((R_t(T_feat) - R_s(align(S)))**2)

    each divided by the batch size; ``R`` are GcBlocks (one for each side, per level).
    Defaults are FGD's GFL settings.

    Args:
        student_channels, teacher_channels: per level.
        temperature: attention temperature ``T`` (0.5).
        alpha, beta, gamma, lam: weights (1e-3, 5e-4, 5e-4, 5e-6).
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], *,
                 temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4,
                 gamma: float = 5e-4, lam: float = 5e-6) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha, self.beta, self.gamma, self.lam = alpha, beta, gamma, lam
        self.align = nn.ModuleList(_align(s, t) for s, t in zip(student_channels, teacher_channels))
        self.gc_student = nn.ModuleList(GcBlock(t) for t in teacher_channels)
        self.gc_teacher = nn.ModuleList(GcBlock(t) for t in teacher_channels)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor],
                boxes: Sequence[Tensor], img_size: tuple[int, int]) -> dict[str, Tensor]:
        """Losses.

        Args:
            student_feats: per level ``[B, C_s, H_l, W_l]``.
            teacher_feats: per level ``[B, C_t, H_l, W_l]``.
            boxes: per image ``[N_b, 4]`` xyxy ground-truth boxes in input pixels.
            img_size: the padded input ``(H_img, W_img)``.

        Returns:
            ``{"fea": ..., "at": ..., "global": ..., "loss": sum}`` of weighted fp32 scalars.
        """
        zero = student_feats[0].new_zeros((), dtype=torch.float32)
        fea, at, glob = zero, zero, zero
        for lvl, (s, t) in enumerate(zip(student_feats, teacher_feats, strict=True)):
            _check_pair(s, t)
            s = self.align[lvl](s).float()
            t = t.float()
            b, _, h, w = s.shape
            fg, bg = box_masks(boxes, img_size, (h, w))
            sa_t, ca_t = spatial_attention(t, self.temperature), channel_attention(t, self.temperature)
            sa_s, ca_s = spatial_attention(s, self.temperature), channel_attention(s, self.temperature)
            diff = (t - s).pow(2) * ca_t[:, :, None, None]  # [B, C, H, W]
            per_pos = diff.sum(dim=1) * sa_t  # [B, H, W]
            fea = fea + (self.alpha * (per_pos * fg).sum() + self.beta * (per_pos * bg).sum()) / b
            at = at + self.gamma * ((sa_t - sa_s).abs().sum() + (ca_t - ca_s).abs().sum()) / b
            rel = (self.gc_teacher[lvl](t) - self.gc_student[lvl](s)).pow(2).sum()
            glob = glob + self.lam * rel / b
        return {"fea": fea, "at": at, "global": glob, "loss": fea + at + glob}


# ---------------------------------------------------------------------------------------- LD

def ld_loss(student_logits: Tensor, teacher_logits: Tensor, *, reg_max: int = 16,
            temperature: float = 10.0, weight: Tensor | None = None,
            mask: Tensor | None = None) -> Tensor:
    """Localization distillation: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per box edge.

    As in the LD reference implementation, the KL of each edge is averaged over its
    ``reg_max + 1`` bins (so the paper's weight 0.25 keeps its scale); edges are averaged,
    then locations (weighted by ``weight`` when given).

    Args:
        student_logits: ``[N, 4*(reg_max+1)]`` bbox-branch logits at the N positive locations.
        teacher_logits: same shape (the teacher at the same locations).
        reg_max: the GFL ``reg_max``.
        temperature: ``T`` (10).
        weight: optional ``[N]`` per-location weights.
        mask: optional ``[N]`` bool: average over these locations only. The same value as
            passing ``student_logits[mask]`` and ``teacher_logits[mask]``, without a boolean
            gather (whose size a GPU would have to report to the host).

    Returns:
        fp32 scalar, 0 when ``N == 0`` or no location is in ``mask`` (still connected to the
        graph).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} distributions differ")
    n = student_logits.shape[0]
    if n == 0:
        return student_logits.float().sum() * 0.0
    bins = reg_max + 1
    s = student_logits.float().reshape(n, 4, bins) / temperature
    t = teacher_logits.detach().float().reshape(n, 4, bins) / temperature
    log_p_t = F.log_softmax(t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=-1))).mean(dim=-1)  # [N, 4]
    per_loc = kl.mean(dim=1) * temperature ** 2
    if weight is not None:
        per_loc = per_loc * weight.float()
    if mask is not None:
        keep = mask.reshape(n).to(per_loc.dtype)
        return (per_loc * keep).sum() / keep.sum().clamp(min=1.0)
    return per_loc.mean()


class LDLoss(nn.Module):
    """:func:`ld_loss` with its loss weight (0.25 in LD's GFL config).

    Args:
        reg_max: the GFL ``reg_max``.
        temperature: ``T``.
        loss_weight: multiplier.
    """

    def __init__(self, *, reg_max: int = 16, temperature: float = 10.0,
                 loss_weight: float = 0.25) -> None:
        super().__init__()
        self.reg_max, self.temperature, self.loss_weight = reg_max, temperature, loss_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor,
                weight: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """See :func:`ld_loss`; returns the weighted fp32 scalar."""
        return self.loss_weight * ld_loss(student_logits, teacher_logits, reg_max=self.reg_max,
                                          temperature=self.temperature, weight=weight, mask=mask)
