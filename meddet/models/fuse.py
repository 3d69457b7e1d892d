"""An inference-only copy of a detector: BatchNorm folded into convs, fast nmODE², channels-last.

:func:`optimize_for_inference` returns a new module (the input is not modified) whose
detections equal the original's to float32 rounding (``tests/test_speed_optimize.py`` checks
1e-4 on boxes and scores):

* **BatchNorm folding.** An eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` is an
  affine map per channel, so ``bn(conv(x)) = conv'(x)`` with ``w' = w·γ/σ`` and
  ``b' = (b - μ)·γ/σ + β`` (σ = sqrt(running_var + eps)). Pairs are found in ``nn.Sequential``
  containers (torchvision's ``Conv2dNormActivation``, MobileNetV2 / EfficientNet /
  ShuffleNetV2 blocks, ResNet downsample paths) and in the blocks known to call
  ``bnK(convK(x))`` (torchvision ResNet blocks, our ResNet stem, ShuffleNet V1 units). The
  GroupNorms of the GFL head depend on the input's statistics and cannot be folded.
* **nmODE².** Every :class:`~meddet.models.nmode.NmODE2` / ``NmODE`` switches to
  ``solver="table"`` (interpolated lookup of its π-periodic solution map, ~1e-6 from the
  exact solve; see :mod:`meddet.models.nmode`) or, with ``nmode_solver="fused"``, to the
  exact fused solver.
* **Memory format.** Optionally ``channels_last`` weights (oneDNN's preferred layout on some
  CPUs; measured slower on our 2-core AMD VM, hence off by default).

Run the result under ``torch.inference_mode()``; it must not be trained (BN is gone).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

__all__ = ["fold_batchnorm", "optimize_for_inference"]


def _fold_pair(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place."""
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        factor = gamma / std
        conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_bias)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            and not bn.training and bn.track_running_stats and bn.running_var is not None
            and conv.out_channels == bn.num_features)


def _attribute_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` attribute names of blocks whose forward applies ``bnK(convK(x))``."""
    import torchvision

    from meddet.models.backbones import ResNetBackbone
    from meddet.models.shufflenetv1 import ShuffleV1Unit

    known = (torchvision.models.resnet.Bottleneck, torchvision.models.resnet.BasicBlock,
             ResNetBackbone, ShuffleV1Unit)
    if not isinstance(module, known):
        return []
    return [(f"conv{i}", f"bn{i}") for i in range(1, 4)
            if hasattr(module, f"conv{i}") and hasattr(module, f"bn{i}")]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode ``Conv2d -> BatchNorm2d`` pair of ``model`` in place.

    The BatchNorm is replaced by ``nn.Identity``. Training-mode BatchNorms (batch statistics)
    are left alone.

    Returns:
        The number of folded pairs.
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                conv, bn = module._modules[a], module._modules[b]
                if conv is not None and bn is not None and _foldable(conv, bn):
                    _fold_pair(conv, bn)  # type: ignore[arg-type]
                    module._modules[b] = nn.Identity()
                    folded += 1
        for conv_name, bn_name in _attribute_pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if _foldable(conv, bn):
                _fold_pair(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def optimize_for_inference(model: nn.Module, *, nmode_solver: str = "table",
                           fold_bn: bool = True, channels_last: bool | None = None) -> nn.Module:
    """An eval-mode, inference-only copy of ``model`` (see the module docstring).

    Args:
        model: a :class:`~meddet.models.GFLDetector` (any module works).
        nmode_solver: ``"table"`` (fastest, ~1e-6 from exact), ``"fused"`` (exact) or
            ``"keep"`` (leave every nmODE block as it is).
        fold_bn: fold eval-mode BatchNorms into the preceding convs.
        channels_last: run in ``torch.channels_last`` (weights converted, and a detector
            converts its input); ``None`` (default): the model's ``prefers_channels_last``
            (True for the zoo's ``meddet_lite``, 15 % faster on 2 CPU cores at 512 px; the
            dense 256-channel heads measured slower so).

    Returns:
        The optimized copy, in eval mode, with ``requires_grad`` off everywhere.

    Raises:
        ValueError: unknown ``nmode_solver``.
    """
    from meddet.models.nmode import UNROLLED_METHODS, NmODE, NmODE2

    if nmode_solver not in ("table", "fused", "keep"):
        raise ValueError(f"nmode_solver must be 'table', 'fused' or 'keep', got {nmode_solver!r}")
    opt = copy.deepcopy(model).eval()
    for p in opt.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(opt)
    if nmode_solver != "keep":
        for m in opt.modules():
            # Adaptive methods (dopri5, ...) have no fixed grid to tabulate: left as they are.
            if (isinstance(m, (NmODE, NmODE2)) and m.method in UNROLLED_METHODS
                    and not m.unrolled):
                m.solver, m.adjoint = nmode_solver, False
    if channels_last is None:
        channels_last = bool(getattr(model, "prefers_channels_last", False))
    if channels_last:
        opt = opt.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        if hasattr(opt, "channels_last"):
            opt.channels_last = True
    return opt
