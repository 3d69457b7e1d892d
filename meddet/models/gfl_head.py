"""The GFL head (Li et al., NeurIPS 2020), shared across pyramid levels.

Per level the head maps an FPN feature ``[B, in_channels, H, W]`` to classification logits
``[B, num_classes, H, W]`` (sigmoid, one per class, the IoU-aware "joint" score of GFL) and a
general distribution over distances ``[B, 4 * (reg_max + 1), H, W]`` (left, top, right, bottom,
each ``reg_max + 1`` bins in stride units). The head only returns raw tensors; assignment, losses
and post-processing live in their own modules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from meddet.models.nmode import UNROLLED_METHODS, NmODE2, ResidualNmODE

__all__ = ["NMODE_FORMS", "GFLHead", "distance_prior_logits", "flatten_levels"]

#: How the head's nmODE² block is applied: ``paper`` replaces the tower output by y(T) (the
#: paper's eq. 4-5); ``residual`` adds a per-channel gated ODE response that starts at zero
#: (:class:`~meddet.models.nmode.ResidualNmODE`).
NMODE_FORMS = ("paper", "residual")


def distance_prior_logits(reg_max: int, mean: float) -> Tensor:
    """Bias of one side's distance distribution so that it starts concentrated near ``mean``.

    GFL starts every side's distribution near uniform over ``0..reg_max``: an expected
    distance of ``reg_max / 2`` strides (a 16-stride box at stride 8 for ``reg_max = 16``),
    far larger than small objects. While the prediction encloses its target, GIoU's gradient
    (``|target| / |pred|²``) is tiny and the IoU that QFL uses as the score target is near
    zero, so scores, box-loss weights and boxes all wait for DFL to shrink the boxes first.
    These logits are a unit-variance discretised Gaussian centred on ``mean`` (bins in stride
    units), so the initial expected distance is close to ``mean``.

    Args:
        reg_max: largest bin.
        mean: centre in strides, in ``[0, reg_max]``.

    Returns:
        ``[reg_max + 1]`` logits.
    """
    if not 0 <= mean <= reg_max:
        raise ValueError(f"distance prior must be in [0, {reg_max}] strides, got {mean}")
    k = torch.arange(reg_max + 1, dtype=torch.float32)
    return -0.5 * (k - mean).square()


def flatten_levels(per_level: list[Tensor]) -> Tensor:
    """Concatenate per-level maps into one ``[B, A, K]`` tensor.

    Args:
        per_level: ``[B, K, H_l, W_l]`` per level.

    Returns:
        ``[B, A, K]`` with ``A = sum_l H_l * W_l``, level-major then row-major, the order of
        :func:`meddet.models.box_ops.grid_anchors` concatenated.
    """
    return torch.cat([t.flatten(2).transpose(1, 2) for t in per_level], dim=1)


def _tower(in_channels: int, feat_channels: int, num_convs: int, groups: int,
           depthwise: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        c_in = in_channels if i == 0 else feat_channels
        # No conv bias: GroupNorm's shift makes it redundant (and mmdetection omits it too,
        # which keeps the parameter count comparable with the paper's).
        if depthwise:
            # Depthwise-separable: a per-channel 3x3 then a 1x1 mix, one norm after both
            # (~9/C + 1 of a dense 3x3's multiply-adds for C = feat_channels = c_in).
            layers += [nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
                       nn.Conv2d(c_in, feat_channels, 1, bias=False)]
        else:
            layers.append(nn.Conv2d(c_in, feat_channels, 3, padding=1, bias=False))
        layers += [nn.GroupNorm(groups, feat_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class GFLHead(nn.Module):
    """Shared GFL head with optional nmODE² blocks before the output convs.

    Args:
        num_classes: foreground classes (sigmoid outputs, no background channel).
        in_channels: channels of every FPN level.
        feat_channels: width of the towers (must be divisible by ``norm_groups``).
        stacked_convs: ``3x3 conv - GroupNorm - ReLU`` blocks per tower.
        num_levels: pyramid levels (one learnable regression scale each).
        reg_max: largest distance bin; the regression has ``4 * (reg_max + 1)`` channels.
        norm_groups: GroupNorm groups.
        nmode: insert one :class:`~meddet.models.nmode.NmODE2` per branch between the last
            tower block and ``gfl_cls`` / ``gfl_reg`` (placement ``head``: the paper puts
            nmODE² in the classification and regression branches).
        nmode_kwargs: keyword arguments for each ``NmODE2``.
        depthwise: depthwise-separable tower convs (3x3 per channel, then 1x1) instead of
            dense 3x3 convs; used by the ``meddet_lite`` student.
        prior_prob: initial foreground probability; ``gfl_cls`` bias starts at
            ``-log((1 - p) / p)`` (= ``-log 99`` for 0.01) so the initial QFL is not swamped by
            the many background locations.
        nmode_form: ``"paper"`` (the block's output y(T) replaces the tower output) or
            ``"residual"`` (``x + α ⊙ (Φ(x) − Φ(0))``, α = 0 at start; see
            :data:`NMODE_FORMS`).
        reg_prior: initial expected distance per side in strides (``gfl_reg``'s bias from
            :func:`distance_prior_logits`); None starts at zero bias as GFL does (near-uniform
            distributions, expected distance ``reg_max / 2``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        num_levels: int = 5,
        reg_max: int = 16,
        norm_groups: int = 32,
        nmode: bool = False,
        nmode_kwargs: dict[str, Any] | None = None,
        depthwise: bool = False,
        prior_prob: float = 0.01,
        nmode_form: str = "paper",
        reg_prior: float | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if feat_channels % norm_groups:
            raise ValueError(
                f"feat_channels={feat_channels} must be divisible by norm_groups={norm_groups}"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.reg_max = reg_max
        self.num_levels = num_levels
        self.cls_convs = _tower(in_channels, feat_channels, stacked_convs, norm_groups, depthwise)
        self.reg_convs = _tower(in_channels, feat_channels, stacked_convs, norm_groups, depthwise)
        if nmode_form not in NMODE_FORMS:
            raise ValueError(f"unknown nmODE form {nmode_form!r}; use one of: "
                             + ", ".join(NMODE_FORMS))
        self.nmode_form = nmode_form
        kwargs = dict(nmode_kwargs or {})

        def block() -> nn.Module:
            if not nmode:
                return nn.Identity()
            if nmode_form == "residual":
                return ResidualNmODE(feat_channels, **kwargs)
            return NmODE2(**kwargs)

        self.cls_nmode: nn.Module = block()
        self.reg_nmode: nn.Module = block()
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        # GFL multiplies the regression logits (not the decoded distances) by a learnable
        # per-level scalar, letting levels of different stride share one set of convs.
        self.scales = nn.Parameter(torch.ones(num_levels))
        self._init_weights(prior_prob, reg_prior)

    def _init_weights(self, prior_prob: float, reg_prior: float | None) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - prior_prob) / prior_prob))
        if reg_prior is not None:
            with torch.no_grad():
                self.gfl_reg.bias.copy_(distance_prior_logits(self.reg_max, reg_prior).repeat(4))

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Run the shared head on every level.

        Args:
            feats: ``num_levels`` maps ``[B, in_channels, H_l, W_l]``.

        Returns:
            ``(cls_scores, bbox_preds)``: per level ``[B, num_classes, H_l, W_l]`` logits and
            ``[B, 4 * (reg_max + 1), H_l, W_l]`` distribution logits, already multiplied by the
            level's scale.
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(feats)}")
        cls_feats = [self.cls_convs(x) for x in feats]
        reg_feats = [self.reg_convs(x) for x in feats]
        if self.training and _elementwise(self.cls_nmode) and _elementwise(self.reg_nmode):
            # One ODE solve over all levels instead of one per level: the block maps each
            # element on its own, so the values are the same, and a solve is ~200 small ops.
            cls_feats = _per_element_over_levels(self.cls_nmode, cls_feats)
            reg_feats = _per_element_over_levels(self.reg_nmode, reg_feats)
        else:
            cls_feats = [self.cls_nmode(f) for f in cls_feats]
            reg_feats = [self.reg_nmode(f) for f in reg_feats]
        cls_scores = [self.gfl_cls(f) for f in cls_feats]
        bbox_preds = [self.gfl_reg(f) * self.scales[level] for level, f in enumerate(reg_feats)]
        return cls_scores, bbox_preds


def _elementwise(block: nn.Module) -> bool:
    """An nmODE block that maps each element on its own (per channel, for the residual form):
    no 1x1 conv, and an explicit fixed-step method (adaptive and implicit solvers choose
    steps from the whole tensor)."""
    if isinstance(block, ResidualNmODE):
        block = block.ode
    return (isinstance(block, NmODE2) and block.gamma_conv is None
            and block.method in UNROLLED_METHODS)


def _per_element_over_levels(block: nn.Module, maps: list[Tensor]) -> list[Tensor]:
    """``[block(m) for m in maps]`` for a per-element ``block``, in a single call.

    Args:
        block: maps a tensor elementwise (or per channel, channels in dimension 1).
        maps: ``[B, C, H_l, W_l]`` per level.

    Returns:
        ``[B, C, H_l, W_l]`` per level.
    """
    sizes = [m.shape[-2] * m.shape[-1] for m in maps]
    out = block(torch.cat([m.flatten(2) for m in maps], dim=2))  # [B, C, sum H_l W_l]
    return [o.unflatten(2, m.shape[-2:]) for o, m in zip(out.split(sizes, dim=2), maps)]
