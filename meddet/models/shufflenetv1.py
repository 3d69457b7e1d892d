"""ShuffleNet V1 trunk (Zhang et al., CVPR 2018); torchvision does not ship it.

Only the layers a detector needs: the 3x3 stride-2 stem, max pool and stages 2-4 (no global
pool, no classifier). With ``groups=3`` and width 1.0 the stages have 240 / 480 / 960 channels
at strides 8 / 16 / 32 (paper Table 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["STAGE_CHANNELS", "ShuffleNetV1"]

# Output channels of stages 2-4 for width 1.0, per number of groups (paper Table 1).
STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across groups so the next grouped conv sees every group.

    Args:
        x: ``[B, C, H, W]`` with C divisible by ``groups``.

    Returns:
        ``[B, C, H, W]``, channel ``g * (C // groups) + i`` moved to ``i * groups + g``.
    """
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Unit(nn.Module):
    """One ShuffleNet unit (paper Fig. 2b / 2c).

    1x1 group conv -> BN -> ReLU -> channel shuffle -> 3x3 depthwise (stride s) -> BN ->
    1x1 group conv -> BN, then ``relu(x + branch)`` for stride 1 or
    ``cat(avgpool3x3s2(x), relu(branch))`` for stride 2 (the shortcut is already >= 0, so the
    ReLU after the concatenation acts on the branch only).

    Args:
        in_channels: input channels.
        out_channels: output channels (for stride 2 the branch gives ``out - in`` of them).
        groups: groups of the 1x1 convs.
        stride: 1 or 2.
        group_first_conv: False for the very first unit, whose input (24 ch) is too narrow to
            split into groups (paper Sec. 3.3).
    """

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, stride: int,
                 group_first_conv: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.groups = groups if group_first_conv else 1
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        mid = out_channels // 4  # bottleneck width is a quarter of the output (paper Sec. 3.2)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=self.groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in, H, W] -> [B, out, H / stride, W / stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([self.shortcut(x), self.relu(out)], dim=1)
        return self.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 feature extractor, width 1.0.

    Attribute names (``conv1``, ``maxpool``, ``stage2``..``stage4``) follow torchvision's
    ShuffleNet V2 so both trunks are wrapped the same way.

    Args:
        groups: groups of the 1x1 convs; one of ``STAGE_CHANNELS``.
    """

    def __init__(self, groups: int = 3) -> None:
        super().__init__()
        if groups not in STAGE_CHANNELS:
            raise ValueError(f"ShuffleNetV1 groups must be one of {sorted(STAGE_CHANNELS)}, "
                             f"got {groups}")
        self.groups = groups
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = STEM_CHANNELS
        stages = []
        for i, (out_ch, repeats) in enumerate(zip(STAGE_CHANNELS[groups], STAGE_REPEATS)):
            units = []
            for j in range(repeats):
                units.append(ShuffleV1Unit(in_ch, out_ch, groups=groups, stride=2 if j == 0 else 1,
                                           group_first_conv=not (i == 0 and j == 0)))
                in_ch = out_ch
            stages.append(nn.Sequential(*units))
        self.stage2, self.stage3, self.stage4 = stages
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> stage 2-4 maps at strides 8 / 16 / 32."""
        x = self.maxpool(self.conv1(x))
        c3 = self.stage2(x)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return [c3, c4, c5]
