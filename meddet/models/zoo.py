"""The model zoo: detector names used by configs, the CLI and the benchmarks.

``DETECTORS`` is a plain dict from name to builder; every builder has the signature
``builder(num_classes=2, **overrides) -> GFLDetector``.

==================  ===================  ===========  ==========================================
name                backbone             nmODE²       role
==================  ===================  ===========  ==========================================
gfl_r50             resnet50             head         teacher (paper Fig. 3)
gfl_r101            resnet101            head         teacher
gfl_r152            resnet152            head         teacher
gfl_mbv2            mobilenet_v2         none         Table I baseline
gfl_mbv2_1.4        mobilenet_v2_1.4     none         Table I baseline
gfl_effb0           efficientnet_b0      none         Table I baseline
gfl_effb1           efficientnet_b1      none         Table I baseline
gfl_shufflenet      shufflenet_v1        none         Table I baseline
gfl_shufflenetv2    shufflenet_v2        none         Table I baseline
meddet              mobilenet_v2         head         the student (paper architecture)
meddet_lite         mobilenet_v2         head         CPU student: 128-ch neck/head, dw-separable
==================  ===================  ===========  ==========================================
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from meddet.errors import MedDetError
from meddet.geometry import STRIDES
from meddet.models.assigner import ATSSAssigner
from meddet.models.backbones import build_backbone, zero_init_residual
from meddet.models.detector import (
    DEFAULT_DET_SCALE,
    DEFAULT_LAMBDA_QFL,
    DEFAULT_MU_DFL,
    NMODE_PLACEMENTS,
    GFLDetector,
    check_loss_weights,
)
from meddet.models.fpn import FPN
from meddet.models.gfl_head import GFLHead
from meddet.models.postprocess import GFLPostProcess
from meddet.models.pretrained import resolve_pretrained

__all__ = [
    "DETECTORS", "LITE_ARCH", "OVERRIDES", "PAPER_ARCH", "build_detector", "build_gfl",
    "skip_weight_init",
]

FPN_CHANNELS = 256
# Neck and head as mmdetection's GFL sizes them, for teachers and students alike (the paper
# builds on GFL; with this size the parameter counts match its Table II, docs/table2.md).
PAPER_ARCH: dict[str, Any] = {"fpn_channels": FPN_CHANNELS, "head_channels": FPN_CHANNELS,
                              "stacked_convs": 4, "depthwise": False}
# The CPU student: 128-channel neck and head, depthwise-separable tower convs. At
# 512 px the paper-sized head is ~70 % of the student's latency; this one is ~a tenth of it.
LITE_ARCH: dict[str, Any] = {"fpn_channels": 128, "head_channels": 128, "stacked_convs": 4,
                             "depthwise": True}
# Entries whose optimized inference copy runs in channels_last (see optimize_for_inference).
PREFERS_CHANNELS_LAST = {"meddet_lite"}
REG_MAX = 16

# Keys a builder accepts; a value of None keeps the zoo entry's default, so an unset
# ``ModelConfig`` field can be passed straight through.
OVERRIDES = (
    "nmode", "pretrained", "score_thr", "nms_iou", "max_per_img", "min_box_size", "lambda_qfl",
    "mu_dfl", "nmode_kwargs", "frozen_stages", "norm_eval", "det_scale", "nmode_form",
    "reg_prior", "box_loss_norm", "fpn_norm", "atss_topk", "zero_init_residual",
    "residual_init", "qfl_beta",
)


def build_gfl(
    num_classes: int = 2,
    *,
    name: str,
    backbone_name: str,
    default_nmode: str,
    arch: dict[str, Any] | None = None,
    **overrides: Any,
) -> GFLDetector:
    """Build a GFL detector from a backbone name and a neck/head size (what every entry does).

    For detectors outside :data:`DETECTORS`, e.g. a student with another neck or head size.

    Args:
        num_classes: foreground classes.
        name: the detector's ``name`` (zoo entries in :data:`PREFERS_CHANNELS_LAST` also get
            ``prefers_channels_last``).
        backbone_name: a name :func:`meddet.models.backbones.build_backbone` accepts.
        default_nmode: nmODE² placement unless ``overrides`` sets ``nmode``.
        arch: any of :data:`PAPER_ARCH`'s keys (``fpn_channels``, ``head_channels``,
            ``stacked_convs``, ``depthwise``); missing keys keep the paper's size.
        **overrides: as for :func:`build_detector`.

    Returns:
        A :class:`~meddet.models.detector.GFLDetector` in training mode, with
        ``pretrained_note`` as for :func:`build_detector`.

    Raises:
        MedDetError: unknown option or arch key, invalid placement or eq. 12 weights.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise MedDetError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for detector {name!r}; "
            f"valid: {', '.join(OVERRIDES)}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise MedDetError(f"num_classes must be a positive integer, got {num_classes!r}")
    bad_arch = sorted(set(arch or {}) - set(PAPER_ARCH))
    if bad_arch:
        raise MedDetError(f"unknown arch key(s) {', '.join(map(repr, bad_arch))} for detector "
                          f"{name!r}; valid: {', '.join(PAPER_ARCH)}")
    opt = {k: v for k, v in overrides.items() if v is not None}
    nmode = opt.get("nmode", default_nmode)
    if nmode not in NMODE_PLACEMENTS:
        raise MedDetError(
            f"unknown nmODE placement {nmode!r}; use one of: {', '.join(NMODE_PLACEMENTS)}"
        )
    nmode_kwargs = opt.get("nmode_kwargs")
    if nmode_kwargs and nmode != "head":
        # The backbone and FPN blocks use NmODE2's defaults; refusing beats ignoring silently.
        raise MedDetError(f"nmode_kwargs only applies to nmode='head', got nmode={nmode!r}")
    lambda_qfl = float(opt.get("lambda_qfl", DEFAULT_LAMBDA_QFL))
    mu_dfl = float(opt.get("mu_dfl", DEFAULT_MU_DFL))
    check_loss_weights(lambda_qfl, mu_dfl)

    # Resolved before the backbone is built: the defaults below depend on whether weights were
    # found, and "auto" may fall back to random initialisation.
    weights = resolve_pretrained(backbone_name, opt.get("pretrained"))
    # Frozen stages and eval-mode BatchNorm protect pretrained ImageNet weights. On random
    # weights they would freeze noise and switch normalisation off (running stats 0/1), which
    # trains badly, so without weights the default is to train everything with batch stats.
    bb_kwargs = {"frozen_stages": 1, "norm_eval": True} if weights.path is not None else {
        "frozen_stages": -1, "norm_eval": False}
    bb_kwargs.update({k: opt[k] for k in ("frozen_stages", "norm_eval") if k in opt})
    backbone = build_backbone(backbone_name,
                              pretrained=None if weights.path is None else str(weights.path),
                              nmode=nmode == "backbone", **bb_kwargs)
    residual_init = opt.get("residual_init")
    if residual_init is None and opt.get("zero_init_residual"):
        residual_init = 0.0
    if residual_init is not None and weights.path is None:
        zero_init_residual(backbone, value=residual_init)
    a = {**PAPER_ARCH, **(arch or {})}
    try:
        neck = FPN(list(backbone.out_channels), out_channels=a["fpn_channels"],
                   num_outs=len(STRIDES), nmode=nmode == "fpn", in_strides=backbone.strides,
                   norm=opt.get("fpn_norm", "none"))
        head = GFLHead(num_classes=num_classes, in_channels=a["fpn_channels"],
                       feat_channels=a["head_channels"], stacked_convs=a["stacked_convs"],
                       depthwise=a["depthwise"], num_levels=len(STRIDES), reg_max=REG_MAX,
                       nmode=nmode == "head", nmode_kwargs=nmode_kwargs,
                       nmode_form=opt.get("nmode_form", "paper"),
                       reg_prior=opt.get("reg_prior"))
        assigner = ATSSAssigner(topk=int(opt.get("atss_topk", 9)))
    except ValueError as exc:
        raise MedDetError(f"detector {name!r}: {exc}") from None
    post = GFLPostProcess(reg_max=REG_MAX, score_thr=float(opt.get("score_thr", 0.05)),
                          nms_iou=float(opt.get("nms_iou", 0.6)),
                          max_per_img=int(opt.get("max_per_img", 100)),
                          min_box_size=float(opt.get("min_box_size", 0.0)))
    model = GFLDetector(name=name, num_classes=num_classes, backbone=backbone, neck=neck,
                        head=head, nmode=nmode, strides=STRIDES, postprocessor=post,
                        assigner=assigner, box_loss_norm=opt.get("box_loss_norm", "mmdet"),
                        lambda_qfl=lambda_qfl, mu_dfl=mu_dfl,
                        qfl_beta=float(opt.get("qfl_beta", 2.0)),
                        det_scale=float(opt.get("det_scale", DEFAULT_DET_SCALE)))
    model.prefers_channels_last = name in PREFERS_CHANNELS_LAST
    # Which weights the backbone started from, for callers to print (``auto`` may have fallen
    # back to random initialisation).
    model.pretrained_note = weights.note
    return model


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
                   "eye_", "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                   "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s in-place initialisers no-ops while models are built.

    Only for models whose values are then overwritten (a state dict loaded with every key
    checked, :func:`meddet.engine.checkpoint.load_model_weights`) or never used (counting
    parameters and FLOPs): the skipped tensors hold whatever memory they were allocated with.
    """
    saved = {n: getattr(torch.nn.init, n) for n in _INIT_FUNCTIONS if hasattr(torch.nn.init, n)}

    def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    try:
        for n in saved:
            setattr(torch.nn.init, n, keep)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _entry(name: str, backbone_name: str, default_nmode: str,
           **arch: Any) -> Callable[..., GFLDetector]:
    return functools.partial(build_gfl, name=name, backbone_name=backbone_name,
                             default_nmode=default_nmode, arch=arch)


DETECTORS: dict[str, Callable[..., GFLDetector]] = {
    "gfl_r50": _entry("gfl_r50", "resnet50", "head"),
    "gfl_r101": _entry("gfl_r101", "resnet101", "head"),
    "gfl_r152": _entry("gfl_r152", "resnet152", "head"),
    "gfl_mbv2": _entry("gfl_mbv2", "mobilenet_v2", "none"),
    "gfl_mbv2_1.4": _entry("gfl_mbv2_1.4", "mobilenet_v2_1.4", "none"),
    "gfl_effb0": _entry("gfl_effb0", "efficientnet_b0", "none"),
    "gfl_effb1": _entry("gfl_effb1", "efficientnet_b1", "none"),
    "gfl_shufflenet": _entry("gfl_shufflenet", "shufflenet_v1", "none"),
    "gfl_shufflenetv2": _entry("gfl_shufflenetv2", "shufflenet_v2", "none"),
    "meddet": _entry("meddet", "mobilenet_v2", "head"),
    "meddet_lite": _entry("meddet_lite", "mobilenet_v2", "head", **LITE_ARCH),
}


def build_detector(name: str, num_classes: int = 2, **overrides: Any) -> GFLDetector:
    """Build a zoo detector.

    Args:
        name: a key of :data:`DETECTORS`.
        num_classes: foreground classes (the synthetic CDH set has 2).
        **overrides: any of :data:`OVERRIDES`; ``None`` keeps the entry's default.
            ``nmode`` (``head``/``fpn``/``backbone``/``none``), ``pretrained`` (None /
            ``"none"``: random; ``"imagenet"``: torchvision's ImageNet weights from its cache
            or a download, else an error; ``"auto"``: those weights when they can be had, else
            random; or a state-dict file; see :mod:`meddet.models.pretrained`), ``score_thr``,
            ``nms_iou``, ``max_per_img``, ``min_box_size`` (post-process settings, see
            :class:`~meddet.models.postprocess.GFLPostProcess`), ``lambda_qfl`` / ``mu_dfl``
            (eq. 12; defaults 1/3.25 and 0.25/3.25 give GFL's 1 : 0.25 : 2), ``det_scale``
            (default 3.25),
            ``nmode_kwargs`` (dict for each head ``NmODE2``), ``nmode_form`` (``"paper"``,
            the default, or ``"residual"``; see :class:`~meddet.models.gfl_head.GFLHead`),
            ``reg_prior`` (initial expected box side distance in strides; default None:
            GFL's near-uniform start), ``box_loss_norm`` (``"mmdet"``, the default, or
            ``"mean"``; see :class:`~meddet.models.detector.GFLDetector`), ``fpn_norm``
            (``"none"``, the default, or ``"gn"``), ``atss_topk`` (default 9),
            ``zero_init_residual`` (default False: start every residual block of a randomly
            initialised backbone as the identity, see
            :func:`~meddet.models.backbones.zero_init_residual`), ``residual_init`` (the
            starting last-BatchNorm scale of those blocks instead; 0 is the identity start),
            ``qfl_beta`` (QFL's focusing exponent; default 2), ``frozen_stages``, ``norm_eval``
            (defaults: 1 and True when the backbone got weights, as mmdetection fine-tunes;
            -1 and False without, i.e. training from scratch, also when ``"auto"`` found
            none).

    Returns:
        A :class:`~meddet.models.detector.GFLDetector` in training mode; its
        ``pretrained_note`` (str) says in one line which weights the backbone started from.

    Raises:
        MedDetError: unknown name or option, invalid placement or eq. 12 weights, unusable
            pretrained weights.
    """
    if name not in DETECTORS:
        raise MedDetError(f"unknown detector {name!r}; use one of: {', '.join(DETECTORS)}")
    return DETECTORS[name](num_classes, **overrides)
