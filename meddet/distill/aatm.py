"""Adversarial auxiliary teacher module (AATM), eq. 1 and Fig. 2 of MedDet
(Zhang et al., arXiv:2409.00204), following the GAN objective of Goodfellow et al. (2014).

The generator ``G`` turns each student FPN feature into an imitation of the fused teacher
feature; the discriminator ``D`` (shared across the five FPN levels) tells the fused teacher
features (real) from ``G(student)`` (fake). ``D`` is trained with binary cross-entropy; the
student side with the non-saturating generator loss ``-log D(G(S))``.

Both losses are computed in fp32 from logits (``binary_cross_entropy_with_logits``), which is
numerically stable and safe under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DiscMode = Literal["pixel", "global"]


class Generator(nn.Module):
    """``G``: Conv3x3 -> activation -> Conv3x3, channel-preserving; shared across levels.

    Args:
        channels: ``C`` of the student's FPN features (input and output).
        hidden: channels between the convs (default ``C``).
    """

    def __init__(self, channels: int, *, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        return self.net(x)


class Discriminator(nn.Module):
    """``D``: three fully connected layers with LeakyReLU(0.2) between them, giving a logit.

    ``mode="pixel"`` (default) applies the layers to the feature vector at every spatial
    location (as 1x1 convs) and returns a logit map; ``mode="global"`` average-pools each map
    first and returns one logit per image.

    Args:
        channels: ``C`` of the features.
        hidden: width of the two hidden layers.
        mode: ``pixel`` or ``global``.
    """

    def __init__(self, channels: int, *, hidden: int = 256, mode: DiscMode = "pixel") -> None:
        super().__init__()
        if mode not in ("pixel", "global"):
            raise ValueError(f"unknown discriminator mode {mode!r}; use 'pixel' or 'global'")
        self.mode = mode
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits.

        Args:
            x: ``[B, C, H, W]``.

        Returns:
            ``[B, 1, H, W]`` (pixel) or ``[B, 1, 1, 1]`` (global).
        """
        if self.mode == "global":
            x = x.mean(dim=(2, 3), keepdim=True)
        return self.net(x)


def _bce_levels(disc: nn.Module, feats: Sequence[Tensor], real: bool) -> Tensor:
    # Mean over locations within a level, sum over levels (like eq. 13's sum over levels).
    total = feats[0].new_zeros((), dtype=torch.float32)
    for f in feats:
        logits = disc(f).float()
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        total = total + F.binary_cross_entropy_with_logits(logits, target)
    return total


def discriminator_loss(disc: nn.Module, real: Sequence[Tensor], fake: Sequence[Tensor]) -> Tensor:
    """BCE of ``D`` on real (label 1) and fake (label 0) features, summed over levels.

    The caller decides what is detached: fakes should be detached so the D step does not
    train ``G``.

    Args:
        disc: the discriminator.
        real: per level ``[B, C, H_l, W_l]`` (fused teacher features).
        fake: per level ``[B, C, H_l, W_l]`` (``G(S_l)``).

    Returns:
        fp32 scalar; ``2 * num_levels * log 2`` at chance.
    """
    return _bce_levels(disc, real, True) + _bce_levels(disc, fake, False)


def generator_loss(disc: nn.Module, fake: Sequence[Tensor]) -> Tensor:
    """Non-saturating generator loss ``-log sigmoid(D(G(S)))``, summed over levels (``L_adv``).

    Args:
        disc: the discriminator (freeze its parameters while calling, so they get no grad).
        fake: per level ``[B, C, H_l, W_l]``.

    Returns:
        fp32 scalar.
    """
    return _bce_levels(disc, fake, True)
