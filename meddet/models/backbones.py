"""Backbones: image -> three feature maps at strides 8 / 16 / 32 (C3, C4, C5).

Every backbone is a torchvision trunk without its classifier (ShuffleNet V1, absent from
torchvision, is :mod:`meddet.models.shufflenetv1`). Each exposes

* ``out_channels: tuple[int, ...]`` and ``strides: tuple[int, ...]`` so the neck reads them
  instead of repeating them;
* ``forward(x: [B, 3, H, W]) -> list[Tensor]`` of three maps ``[B, out_channels[i],
  H / strides[i], W / strides[i]]`` (H, W multiples of 32).

Detection fine-tuning follows mmdetection: ``frozen_stages`` freezes the stem (stage 0) and
stages 1..k (no gradients, kept in eval mode), and ``norm_eval`` keeps every BatchNorm in eval
mode during ``train()`` with its affine parameters frozen (like torchvision's
``FrozenBatchNorm2d``): detection batches are too small for good batch statistics.

Submodules keep torchvision's attribute names, so a torchvision ImageNet state dict loads
directly once the classifier keys are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn

from meddet.errors import MedDetError
from meddet.models.nmode import NmODE2
from meddet.models.pretrained import resolve_pretrained
from meddet.models.shufflenetv1 import STAGE_CHANNELS, ShuffleNetV1

__all__ = ["BACKBONES", "Backbone", "build_backbone"]


class Backbone(nn.Module):
    """Base class: stage bookkeeping, freezing, ``norm_eval`` and the optional nmODE².

    Subclasses build their layers, then call :meth:`_setup` with the stage list (index 0 is
    the stem), and either set ``features`` + ``_OUT_AFTER`` or override :meth:`_forward_features`.

    Attributes:
        out_channels: channels of the three outputs.
        strides: strides of the three outputs relative to the input.
    """

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __init__(self) -> None:
        super().__init__()
        self.frozen_stages = -1
        self.norm_eval = False
        self.nmode: nn.ModuleList | None = None
        self._stages: list[nn.Module] = []

    def _setup(self, stages: list[nn.Module], *, frozen_stages: int, norm_eval: bool,
               nmode: bool) -> None:
        if not -1 <= frozen_stages < len(stages):
            raise MedDetError(f"frozen_stages must be in [-1, {len(stages) - 1}] for "
                              f"{type(self).__name__}, got {frozen_stages}")
        # A plain list (not registered again): the modules are already children of self.
        self._stages = stages
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if nmode:
            # Placement "backbone" of paper Table IV: nmODE² on each output map.
            self.nmode = nn.ModuleList(NmODE2() for _ in self.out_channels)
        self._freeze()

    def _freeze(self) -> None:
        for stage in self._stages[: self.frozen_stages + 1]:
            for p in stage.parameters():
                p.requires_grad_(False)
        if self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode, keeping frozen stages and (with ``norm_eval``) BN in eval."""
        super().train(mode)
        if mode:
            for stage in self._stages[: self.frozen_stages + 1]:
                stage.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    # Sequential torchvision trunks (MobileNetV2, EfficientNet) set ``features`` and the indices
    # ``_OUT_AFTER`` whose outputs are C3-C5; ResNet and ShuffleNet override this.
    features: nn.Sequential
    _OUT_AFTER: tuple[int, ...] = ()

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._OUT_AFTER:
                outs.append(x)
        return outs

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps.

        Args:
            x: ``[B, 3, H, W]`` normalised images, H and W multiples of 32.

        Returns:
            three tensors ``[B, out_channels[i], H / strides[i], W / strides[i]]``.
        """
        feats = self._forward_features(x)
        if self.nmode is not None:
            feats = [block(f) for block, f in zip(self.nmode, feats)]
        return feats


class ResNetBackbone(Backbone):
    """ResNet-50/101/152 (torchvision, ``fc`` removed) -> C3, C4, C5 (512/1024/2048 ch).

    Stages: 0 = conv1 + bn1, 1..4 = layer1..layer4.
    """

    def __init__(self, depth: int, *, pretrained: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, nmode: bool = False) -> None:
        super().__init__()
        tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        _load_pretrained(tv, f"resnet{depth}", pretrained)
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (tv.layer1, tv.layer2, tv.layer3,
                                                              tv.layer4)
        self.out_channels = (512, 1024, 2048)
        self.strides = (8, 16, 32)
        stem = nn.ModuleList([self.conv1, self.bn1])
        self._setup([stem, self.layer1, self.layer2, self.layer3, self.layer4],
                    frozen_stages=frozen_stages, norm_eval=norm_eval, nmode=nmode)

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 ``features`` (torchvision) -> stride 8, stride 16 and the final 1x1 conv.

    Width 1.0 gives 32 / 96 / 1280 channels, width 1.4 gives 48 / 136 / 1792 (torchvision
    rounds to multiples of 8 and widens the last conv only for width > 1).
    Stages follow mmdetection's MobileNetV2: 0 = stem conv, 1..7 = the seven inverted-residual
    settings, 8 = the final 1x1 conv.
    """

    # End index (exclusive) in ``features`` of stem, settings 1..7 and the final conv.
    _STAGE_ENDS = (1, 2, 4, 7, 11, 14, 17, 18, 19)
    _OUT_AFTER = (6, 13, 18)  # last ``features`` index of each returned map

    def __init__(self, width_mult: float = 1.0, *, pretrained: str | None = None,
                 frozen_stages: int = 1, norm_eval: bool = True, nmode: bool = False) -> None:
        super().__init__()
        tv = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult)
        name = "mobilenet_v2" if width_mult == 1.0 else f"mobilenet_v2_{width_mult}"
        _load_pretrained(tv, name, pretrained)
        self.features = tv.features
        self.out_channels = tuple(_last_out_channels(self.features[i]) for i in self._OUT_AFTER)
        self.strides = (8, 16, 32)
        starts = (0,) + self._STAGE_ENDS[:-1]
        stages = [nn.ModuleList(self.features[a:b]) for a, b in zip(starts, self._STAGE_ENDS)]
        self._setup(stages, frozen_stages=frozen_stages, norm_eval=norm_eval, nmode=nmode)



class EfficientNetBackbone(Backbone):
    """EfficientNet-B0/B1 ``features[0:8]`` (torchvision) -> last maps at strides 8/16/32.

    Both give 40 / 112 / 320 channels (B1 is deeper, not wider). The final 1x1 conv
    (``features[8]``) and the classifier are dropped. Stages: 0 = stem, 1..7 = MBConv stages.
    """

    _OUT_AFTER = (3, 5, 7)

    def __init__(self, variant: str, *, pretrained: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, nmode: bool = False) -> None:
        super().__init__()
        tv = getattr(torchvision.models, f"efficientnet_{variant}")(weights=None)
        _load_pretrained(tv, f"efficientnet_{variant}", pretrained)
        self.features = tv.features[:8]
        self.out_channels = tuple(_last_out_channels(self.features[i]) for i in self._OUT_AFTER)
        self.strides = (8, 16, 32)
        self._setup(list(self.features), frozen_stages=frozen_stages, norm_eval=norm_eval,
                    nmode=nmode)



class ShuffleNetBackbone(Backbone):
    """ShuffleNet V2 x1.0 (torchvision; 116/232/464 ch) or V1 g=3 (240/480/960 ch).

    ``conv5`` and ``fc`` of V2 are dropped. Stages: 0 = conv1 (+ max pool), 1..3 = stage2..4.
    """

    def __init__(self, version: int, *, pretrained: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, nmode: bool = False) -> None:
        super().__init__()
        if version == 2:
            tv: nn.Module = torchvision.models.shufflenet_v2_x1_0(weights=None)
            _load_pretrained(tv, "shufflenet_v2", pretrained)
        else:
            tv = ShuffleNetV1(groups=3)
            _load_pretrained(tv, "shufflenet_v1", pretrained)
        self.conv1, self.maxpool = tv.conv1, tv.maxpool
        self.stage2, self.stage3, self.stage4 = tv.stage2, tv.stage3, tv.stage4
        self.out_channels = (tuple(tv._stage_out_channels[1:4]) if version == 2
                             else STAGE_CHANNELS[3])
        self.strides = (8, 16, 32)
        self._setup([self.conv1, self.stage2, self.stage3, self.stage4],
                    frozen_stages=frozen_stages, norm_eval=norm_eval, nmode=nmode)

    def _forward_features(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.conv1(x))
        c3 = self.stage2(x)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return [c3, c4, c5]


def _last_out_channels(module: nn.Module) -> int:
    """Channels produced by a MobileNet/EfficientNet block: its last BatchNorm's (each ends in
    one; not true of ShuffleNet V2 units, whose branches are concatenated)."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return bns[-1].num_features


def _load_pretrained(model: nn.Module, name: str, pretrained: str | None) -> None:
    """Load ImageNet weights into the full torchvision-style ``model`` (before it is cut).

    Args:
        model: the torchvision (or ShuffleNetV1) model, classifier still attached.
        name: backbone name, for the weights lookup and messages.
        pretrained: a setting :func:`~meddet.models.pretrained.resolve_pretrained` accepts
            (None / ``"none"``, ``"imagenet"``, ``"auto"``) or a file with a state dict,
            optionally under a ``"state_dict"`` key and/or prefixed by ``"backbone."``. Keys
            the model lacks are ignored; keys it needs must be present except classifier keys.

    Raises:
        MedDetError: no weights for ``"imagenet"``, unreadable file or mismatching keys/shapes.
    """
    path = resolve_pretrained(name, pretrained).path
    if path is None:
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / non-tensor files
        raise MedDetError(f"cannot load weights from {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MedDetError(f"weights file {path} does not hold a state_dict")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = model.state_dict()
    # Classifier layers are cut off after loading, so they may be missing from the file.
    head_prefixes = ("fc.", "classifier.", "features.8.", "conv5.")
    missing = [k for k in own if k not in state and not k.startswith(head_prefixes)]
    if missing:
        raise MedDetError(f"weights file {path} does not match backbone {name}: "
                          f"{len(missing)} missing keys, e.g. {missing[0]!r}")
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise MedDetError(f"weights file {path} does not match backbone {name}: shape of "
                          f"{bad[0]!r} is {tuple(state[bad[0]].shape)}, expected "
                          f"{tuple(own[bad[0]].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet50": lambda **kw: ResNetBackbone(50, **kw),
    "resnet101": lambda **kw: ResNetBackbone(101, **kw),
    "resnet152": lambda **kw: ResNetBackbone(152, **kw),
    "mobilenet_v2": lambda **kw: MobileNetV2Backbone(1.0, **kw),
    "mobilenet_v2_1.4": lambda **kw: MobileNetV2Backbone(1.4, **kw),
    "efficientnet_b0": lambda **kw: EfficientNetBackbone("b0", **kw),
    "efficientnet_b1": lambda **kw: EfficientNetBackbone("b1", **kw),
    "shufflenet_v1": lambda **kw: ShuffleNetBackbone(1, **kw),
    "shufflenet_v2": lambda **kw: ShuffleNetBackbone(2, **kw),
}


def zero_init_residual(backbone: nn.Module, *, value: float = 0.0) -> int:
    """Zero the last BatchNorm scale of every residual block, so each block starts as the identity.

    Goyal et al. (*Accurate, Large Minibatch SGD*, 2017) start each residual branch at zero:
    the network then begins as its shallow skeleton (stem, the stride and width changing
    blocks) and grows its depth as the gates learn, which trains faster from random weights.
    Covers torchvision's ResNet ``Bottleneck`` / ``BasicBlock`` (``bn3`` / ``bn2``) and
    MobileNetV2's ``InvertedResidual`` blocks that have a skip connection (the BatchNorm after
    the linear 1x1 projection). Only for random initialisation: pretrained blocks are not
    identities.

    With Adam the scales grow slowly from 0 (a step moves a scale by about the learning rate, and
    their gradients change sign often), so the blocks stay weak for long; ``value`` starts them
    at a small scale instead, the branch then adding a ``value``-sized part to the skip.

    Args:
        backbone: any module; matching blocks anywhere inside it are changed.
        value: the starting scale (0: the identity).

    Returns:
        How many blocks were changed.
    """
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    n = 0
    for m in backbone.modules():
        bn: nn.Module | None = None
        if isinstance(m, Bottleneck):
            bn = m.bn3
        elif isinstance(m, BasicBlock):
            bn = m.bn2
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            bn = m.conv[-1]
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.constant_(bn.weight, value)
            n += 1
    return n


def build_backbone(name: str, *, pretrained: str | None = None, frozen_stages: int = 1,
                   norm_eval: bool = True, nmode: bool = False) -> Backbone:
    """Build a backbone by name.

    Args:
        name: one of ``BACKBONES``.
        pretrained: None / ``"none"`` (random), ``"imagenet"`` (torchvision's ImageNet
            weights: its cache, else a download; an error when neither works), ``"auto"``
            (those weights when they can be had, else random) or a path to a state_dict file;
            see :mod:`meddet.models.pretrained`.
        frozen_stages: freeze the stem (0) and stages 1..k; -1 freezes nothing.
        norm_eval: keep BatchNorm in eval mode with frozen affine parameters during training.
        nmode: apply a parameter-free nmODE² to each output map (placement ``backbone``).

    Returns:
        a :class:`Backbone` with ``out_channels``, ``strides`` and
        ``forward([B,3,H,W]) -> [C3, C4, C5]``.

    Raises:
        MedDetError: unknown name, bad ``frozen_stages`` or unusable weights.
    """
    if name not in BACKBONES:
        raise MedDetError(f"unknown backbone {name!r}; use one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](pretrained=pretrained, frozen_stages=frozen_stages,
                           norm_eval=norm_eval, nmode=nmode)
