"""Feature pyramid network (Lin et al., 2017) as configured for GFL in mmdetection.

C3-C5 -> P3-P7, all with ``out_channels`` channels at strides 8 / 16 / 32 / 64 / 128:
1x1 lateral convs, a top-down path of nearest upsampling + addition, 3x3 output convs (bias, no
norm, no activation), then extra 3x3 stride-2 convs on the P5 *output* for P6 and on P6 for P7
with no ReLU in between (mmdetection ``add_extra_convs='on_output'``,
``relu_before_extra_convs=False``). Weights are Xavier-uniform with zero bias, as mmdetection
initialises its FPN.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddet.errors import MedDetError
from meddet.models.nmode import NmODE2

__all__ = ["FPN", "FPN_NORMS"]

#: Normalisation of the FPN's convs: ``none`` as mmdetection's GFL (conv bias, no norm), or
#: ``gn``: GroupNorm (32 groups) after every conv, without conv bias. Detectors trained from
#: random weights normalise neck and head (He et al., *Rethinking ImageNet Pre-training*;
#: ScratchDet); GFL's head already uses GroupNorm.
FPN_NORMS = ("none", "gn")
_GN_GROUPS = 32


def _conv(c_in: int, c_out: int, kernel: int, norm: str, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none")
    if norm == "none":
        return conv
    return nn.Sequential(conv, nn.GroupNorm(math.gcd(_GN_GROUPS, c_out), c_out))


class FPN(nn.Module):
    """Feature pyramid on C3-C5.

    Args:
        in_channels: channels of the input maps, finest first (e.g. ``backbone.out_channels``).
        out_channels: channels of every output level.
        num_outs: number of output levels; those beyond ``len(in_channels)`` come from the
            extra stride-2 convs.
        nmode: apply a parameter-free nmODE² to each output level (placement ``fpn``).
        in_strides: strides of the inputs (e.g. ``backbone.strides``); default 8, 16, 32, ...
        norm: ``"none"`` (mmdetection's GFL FPN) or ``"gn"`` (see :data:`FPN_NORMS`).

    Attributes:
        out_channels: ``int``, channels of every level (what the shared head needs).
        strides: stride of each output level, e.g. ``(8, 16, 32, 64, 128)``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int = 5,
        nmode: bool = False,
        *,
        in_strides: Sequence[int] | None = None,
        norm: str = "none",
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not in_channels:
            raise MedDetError("FPN needs at least one input level")
        if num_outs < len(in_channels):
            raise MedDetError(f"FPN num_outs ({num_outs}) must be >= the number of inputs "
                              f"({len(in_channels)})")
        if in_strides is None:
            in_strides = tuple(8 * 2**i for i in range(len(in_channels)))
        if len(in_strides) != len(in_channels):
            raise MedDetError(f"FPN got {len(in_channels)} in_channels but {len(in_strides)} "
                              "in_strides")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        extra = num_outs - len(in_channels)
        self.strides = tuple(in_strides) + tuple(in_strides[-1] * 2 ** (i + 1)
                                                 for i in range(extra))
        if norm not in FPN_NORMS:
            raise MedDetError(f"unknown FPN norm {norm!r}; use one of: {', '.join(FPN_NORMS)}")
        self.norm = norm
        self.lateral_convs = nn.ModuleList(_conv(c, out_channels, 1, norm) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            _conv(out_channels, out_channels, 3, norm) for _ in in_channels
        )
        # 'on_output': the first extra level reads the last pyramid output, not C5.
        self.extra_convs = nn.ModuleList(
            _conv(out_channels, out_channels, 3, norm, stride=2) for _ in range(extra)
        )
        self.nmode = nn.ModuleList(NmODE2() for _ in range(num_outs)) if nmode else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Build the pyramid.

        Args:
            feats: ``len(in_channels)`` maps ``[B, in_channels[i], H_i, W_i]``, finest first.

        Returns:
            ``num_outs`` maps ``[B, out_channels, H / strides[i], W / strides[i]]``.
        """
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} maps, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            # Upsample to the exact size of the finer map, so odd sizes still add up.
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        # Under bfloat16 autocast on the CPU, oneDNN's weight gradient of these stride-2
        # convolutions on 1x1 maps (inputs of 64 px) intermittently comes back NaN (measured with
        # torch 2.14 on AVX-512 BF16); the coarse levels are a negligible share of the work, so
        # they run in float32 there.
        cpu_amp = outs[-1].device.type == "cpu" and torch.is_autocast_enabled("cpu")
        with torch.autocast("cpu", enabled=False) if cpu_amp else contextlib.nullcontext():
            for conv in self.extra_convs:
                # no ReLU between P6 and P7 (relu_before_extra_convs)
                outs.append(conv(outs[-1].float() if cpu_amp else outs[-1]))
        if self.nmode is not None:
            outs = [block(o) for block, o in zip(self.nmode, outs)]
        return outs
