"""GFLDetector: backbone → FPN → shared GFL head, with ATSS training and GFL post-processing.

Image and target conventions (see ``docs/architecture.md``):

* ``images``: ``FloatTensor[B, 3, H, W]``, normalised network input.
* ``targets``: one dict per image with ``"boxes"`` ``FloatTensor[N, 4]`` xyxy in input pixels
  and ``"labels"`` ``LongTensor[N]`` in ``[0, num_classes)``; ``N`` may be 0. For evaluation,
  optional ``"scale"`` (input px per original px) and ``"orig_size"`` ``(h, w)`` map detections
  back to original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from meddet.config import NMODE_PLACEMENTS
from meddet.errors import MedDetError
from meddet.models._dist import shared_normaliser
from meddet.models.assigner import ATSSAssigner
from meddet.models.box_ops import (
    aligned_iou,
    bbox2distance,
    box_centers,
    distance2bbox,
    grid_anchors,
    integral,
)
from meddet.models.gfl_head import GFLHead, flatten_levels
from meddet.models.losses import (
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
    weighted_sum,
)
from meddet.models.postprocess import GFLPostProcess

__all__ = ["BOX_LOSS_NORMS", "NMODE_PLACEMENTS", "Assignment", "GFLDetector", "check_loss_weights"]


# Eq. 12 defaults: λ : μ : (1 - λ - μ) = 1 : 0.25 : 2, the QFL : DFL : GIoU weighting of GFL.
DEFAULT_LAMBDA_QFL = 1 / 3.25
DEFAULT_MU_DFL = 0.25 / 3.25
# Eq. 12's weights sum to 1, mmdetection's (1 + 0.25 + 2) to 3.25; multiplying by 3.25 gives the
# same total (and gradient scale) as mmdetection's GFL, so mmdetection's GFL schedule (SGD
# lr 0.01 for batch 16), which we train with because the paper gives no optimiser settings,
# applies unchanged.
DEFAULT_DET_SCALE = 3.25
#: Normalisers of the box losses (see ``GFLDetector``'s ``box_loss_norm``).
BOX_LOSS_NORMS = ("mmdet", "mean")
# Floor of the "mean" normaliser: only guards the division when there is no positive (the sums
# are then exactly 0).
_MEAN_NORM_FLOOR = 1e-6


def check_loss_weights(lambda_qfl: float, mu_dfl: float) -> None:
    """Validate eq. 12's weights.

    Raises:
        MedDetError: a negative weight, or ``λ + μ > 1`` (the GIoU weight would be negative).
    """
    if lambda_qfl < 0 or mu_dfl < 0 or lambda_qfl + mu_dfl > 1 + 1e-9:
        raise MedDetError(
            f"eq. 12 needs lambda_qfl >= 0, mu_dfl >= 0 and lambda_qfl + mu_dfl <= 1; "
            f"got lambda_qfl={lambda_qfl}, mu_dfl={mu_dfl}"
        )


@dataclass
class Assignment:
    """ATSS assignment of a batch, flattened over levels (level-major, then row-major).

    ``A`` is the number of locations over all levels; index ``a`` of the ``[B, A, ...]`` tensors
    matches index ``a`` of :meth:`GFLDetector.flatten_outputs`.

    Attributes:
        anchors: ``[A, 4]`` xyxy input pixels, the square ATSS anchors (side 8 x stride).
        points: ``[A, 2]`` (x, y) input pixels, location centres (where distances start).
        strides: ``[A]`` stride of each location's level.
        num_level_anchors: locations per level.
        labels: ``[B, A]`` long, assigned class; ``num_classes`` for background.
        boxes: ``[B, A, 4]`` xyxy input pixels, assigned ground-truth box (zeros for
            background).
        pos_mask: ``[B, A]`` bool, positive locations.
        gt_inds: ``[B, A]`` long, index into that image's ``targets[b]["boxes"]``, ``-1`` for
            background.
    """

    anchors: Tensor
    points: Tensor
    strides: Tensor
    num_level_anchors: list[int]
    labels: Tensor
    boxes: Tensor
    pos_mask: Tensor
    gt_inds: Tensor


@dataclass(frozen=True)
class _Priors:
    """The cached priors of one feature-map geometry (see ``GFLDetector._level_priors``)."""

    level_anchors: list[Tensor]  # per level [H_l * W_l, 4]
    level_points: list[Tensor]  # per level [H_l * W_l, 2]
    anchors: Tensor  # [A, 4]
    points: Tensor  # [A, 2]
    strides: Tensor  # [A]
    num_level: list[int]


# Feature-map geometries whose priors a detector keeps (training uses one or two).
_PRIORS_CACHE_SIZE = 8


class GFLDetector(nn.Module):
    """Generalized Focal Loss detector (one stage, anchor-point, ATSS assignment).

    Args:
        name: zoo name, recorded for checkpoints and reports.
        num_classes: foreground classes.
        backbone: module mapping ``[B, 3, H, W]`` to a list of C3-C5 maps.
        neck: FPN mapping C3-C5 to five ``[B, fpn_channels, H/s, W/s]`` maps, s = 8..128.
        head: the :class:`~meddet.models.gfl_head.GFLHead`.
        nmode: where nmODE² sits (``head``, ``fpn``, ``backbone`` or ``none``); informational
            here, the modules were built accordingly.
        strides: stride of each FPN level.
        assigner: ATSS assigner (default ``topk=9``).
        postprocessor: decoding / NMS settings (default: GFL's test recipe).
        lambda_qfl: λ of eq. 12.
        mu_dfl: μ of eq. 12; the GIoU weight is ``1 - λ - μ``. The defaults ``λ = 1/3.25`` and
            ``μ = 0.25/3.25`` reproduce GFL's weighting QFL : DFL : GIoU = 1 : 0.25 : 2.
        det_scale: factor on eq. 12's total. The default 3.25 makes the total equal to
            mmdetection's GFL loss (1·QFL + 0.25·DFL + 2·GIoU), so mmdetection's GFL schedule
            (SGD lr 0.01 for batch 16; our choice, the paper states no optimiser settings)
            applies unchanged; use 1.0 for eq. 12 exactly as printed.
        anchor_scale: ATSS anchor side in strides (GFL: 8).
        center_offset: location centre offset in cells (0 matches mmdetection's GFL).
        qfl_beta: QFL focusing exponent.
        dfl_eps: DFL targets are clamped to ``reg_max - dfl_eps``.
        box_loss_norm: what the score-weighted GIoU and DFL sums are divided by. ``"mmdet"``
            (GFL's): the sum of the weights, at least 1. The weights are the positives'
            predicted scores, which start near the prior (0.01), so early in training the
            divisor is 1 and the box losses, and their gradients, are scaled down by the
            scores (~100x at the start). ``"mean"``: the sum of the weights whatever its size,
            i.e. the score-weighted mean, whose scale does not depend on the score level.

    Raises:
        MedDetError: invalid ``nmode``, ``lambda_qfl`` or ``mu_dfl``.
    """

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        backbone: nn.Module,
        neck: nn.Module,
        head: GFLHead,
        nmode: str = "head",
        strides: tuple[int, ...] = (8, 16, 32, 64, 128),
        assigner: ATSSAssigner | None = None,
        postprocessor: GFLPostProcess | None = None,
        lambda_qfl: float = DEFAULT_LAMBDA_QFL,
        mu_dfl: float = DEFAULT_MU_DFL,
        det_scale: float = DEFAULT_DET_SCALE,
        anchor_scale: float = 8.0,
        center_offset: float = 0.0,
        qfl_beta: float = 2.0,
        dfl_eps: float = 0.1,
        box_loss_norm: str = "mmdet",
    ) -> None:
        super().__init__()
        if nmode not in NMODE_PLACEMENTS:
            raise MedDetError(
                f"unknown nmODE placement {nmode!r}; use one of: {', '.join(NMODE_PLACEMENTS)}"
            )
        check_loss_weights(lambda_qfl, mu_dfl)
        if box_loss_norm not in BOX_LOSS_NORMS:
            raise MedDetError(f"unknown box_loss_norm {box_loss_norm!r}; use one of: "
                              + ", ".join(BOX_LOSS_NORMS))
        if head.num_levels != len(strides):
            raise ValueError(f"head has {head.num_levels} levels but {len(strides)} strides given")
        self.name = name
        self.num_classes = num_classes
        self.nmode = nmode
        self.strides = tuple(int(s) for s in strides)
        self.reg_max = head.reg_max
        self.fpn_channels = int(getattr(neck, "out_channels", head.in_channels))
        # Memory format the network runs in: optimize_for_inference sets channels_last for
        # models that measured faster so (the depthwise meddet_lite on CPU), and forward_raw
        # then converts its input to match.
        self.channels_last = False
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.assigner = assigner or ATSSAssigner(topk=9)
        self.postprocessor = postprocessor or GFLPostProcess(reg_max=head.reg_max)
        self.lambda_qfl = float(lambda_qfl)
        self.mu_dfl = float(mu_dfl)
        self.det_scale = float(det_scale)
        self.anchor_scale = anchor_scale
        self.center_offset = center_offset
        self.qfl_beta = qfl_beta
        self.dfl_eps = dfl_eps
        self.box_loss_norm = box_loss_norm
        self._priors_cache: dict[tuple[Any, ...], _Priors] = {}
        # Apply the submodules' own train() rules now (frozen stages and BatchNorm in eval
        # mode for norm_eval backbones), not only after the first explicit .train() call.
        self.train()

    # ------------------------------------------------------------------ forward passes
    def forward_raw(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """FPN features and raw head outputs (what distillation needs).

        Args:
            images: ``[B, 3, H, W]``.

        Returns:
            ``(feats, cls_scores, bbox_preds)``: five ``[B, fpn_channels, H_l, W_l]`` maps
            (P3-P7), per level ``[B, num_classes, H_l, W_l]`` logits and
            ``[B, 4 * (reg_max + 1), H_l, W_l]`` distribution logits (scale already applied).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = list(self.neck(self.backbone(images)))
        cls_scores, bbox_preds = self.head(feats)
        return feats, cls_scores, bbox_preds

    def forward(
        self, images: Tensor, targets: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training losses or detections, depending on ``self.training``.

        Args:
            images: ``[B, 3, H, W]``.
            targets: per image dicts (see the module docstring); required in training mode,
                optional in eval mode (then they supply ``scale`` / ``orig_size``).

        Returns:
            Training: ``{"loss", "loss_qfl", "loss_dfl", "loss_giou", "num_pos", "pos_iou"}`` (see
            :meth:`loss`). Eval: per image ``{"boxes": [K, 4] xyxy original pixels (input
            pixels when no ``scale`` is given), "scores": [K], "labels": [K] long}``.
        """
        if self.training and targets is None:
            raise ValueError("training-mode forward needs targets; call .eval() for detections")
        _, cls_scores, bbox_preds = self.forward_raw(images)
        img_shape = (int(images.shape[-2]), int(images.shape[-1]))
        if self.training:
            return self.loss(cls_scores, bbox_preds, targets, img_shape)
        return self.postprocess(cls_scores, bbox_preds, img_shape, targets)

    # ------------------------------------------------------------------ priors / assignment
    def _level_priors(
        self, featmap_sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> _Priors:
        """The priors of a feature-map geometry, built once and then reused.

        Training calls this every iteration with the same sizes; rebuilding the grids costs a
        few dozen small ops (kernel launches on a GPU) each time. Entries are made outside
        inference mode (usable in autograd afterwards) and never modified in place.
        """
        key = (tuple(featmap_sizes), torch.device(device), dtype)
        hit = self._priors_cache.get(key)
        if hit is None:
            with torch.inference_mode(False), torch.no_grad():
                anchors = grid_anchors(featmap_sizes, self.strides,
                                       anchor_scale=self.anchor_scale,
                                       center_offset=self.center_offset, device=device,
                                       dtype=dtype)
                num_level = [a.shape[0] for a in anchors]
                points = [box_centers(a) for a in anchors]
                strides = torch.cat([torch.full((n,), float(s), device=device, dtype=dtype)
                                     for n, s in zip(num_level, self.strides)])
                hit = _Priors(anchors, points, torch.cat(anchors), torch.cat(points), strides,
                              num_level)
            if len(self._priors_cache) >= _PRIORS_CACHE_SIZE:  # e.g. multi-scale inputs
                self._priors_cache.clear()
            self._priors_cache[key] = hit
        return hit

    def priors(
        self, featmap_sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level ATSS anchors ``[H_l * W_l, 4]`` and location centres ``[H_l * W_l, 2]``.

        The tensors are cached per (sizes, device, dtype) and shared between calls: do not
        modify them in place.
        """
        pri = self._level_priors(featmap_sizes, device, dtype)
        return list(pri.level_anchors), list(pri.level_points)

    @staticmethod
    def flatten_outputs(cls_scores: list[Tensor], bbox_preds: list[Tensor]
                        ) -> tuple[Tensor, Tensor]:
        """Per-level outputs as ``[B, A, num_classes]`` and ``[B, A, 4 * (reg_max + 1)]``."""
        return flatten_levels(cls_scores), flatten_levels(bbox_preds)

    @torch.no_grad()
    def assign(
        self, cls_scores: list[Tensor], targets: Sequence[dict[str, Any]],
        img_shape: tuple[int, int] | None = None,
    ) -> Assignment:
        """ATSS-assign every location of every image.

        The whole batch is assigned at once (boxes padded to the largest count per image), with
        one host synchronisation (the label check) and no per-image loop.

        Args:
            cls_scores: per level ``[B, C, H_l, W_l]`` (only shapes, device and dtype are used;
                FPN features work too).
            targets: per image ``{"boxes": [N, 4] xyxy input px, "labels": [N]}``.
            img_shape: ``(H, W)`` of the input; unused by ATSS (anchors may cross the border),
                accepted for a uniform signature.

        Returns:
            The batch :class:`Assignment`. ``anchors``, ``points`` and ``strides`` are cached
            (see :meth:`priors`): do not modify them in place.
        """
        del img_shape
        if len(targets) != cls_scores[0].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {cls_scores[0].shape[0]}")
        device = cls_scores[0].device
        sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls_scores]
        pri = self._level_priors(sizes, device, torch.float32)
        gt_boxes, gt_labels, gt_valid = self._batch_targets(targets, device)
        res = self.assigner.assign(pri.anchors, pri.num_level, gt_boxes, gt_labels,
                                         self.num_classes, gt_valid)
        return Assignment(anchors=pri.anchors, points=pri.points, strides=pri.strides,
                          num_level_anchors=list(pri.num_level), labels=res.labels,
                          boxes=res.boxes, pos_mask=res.pos_mask, gt_inds=res.gt_inds)

    def _batch_targets(self, targets: Sequence[dict[str, Any]], device: torch.device
                       ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Targets as padded batch tensors, after checking them.

        Returns:
            ``(boxes [B, G, 4] float32, labels [B, G] long, valid [B, G] bool)`` with ``G`` the
            largest box count; ``valid`` is ``None`` when every image has ``G`` boxes.

        Raises:
            ValueError: box and label counts differ, or a label is outside
                ``[0, num_classes)`` (one host synchronisation for the whole batch).
        """
        boxes, labels = [], []
        for tgt in targets:
            b = torch.as_tensor(tgt["boxes"], dtype=torch.float32, device=device)
            lab = torch.as_tensor(tgt["labels"], dtype=torch.long, device=device)
            b = b if b.dim() == 2 and b.shape[1] == 4 else b.reshape(-1, 4)
            lab = lab if lab.dim() == 1 else lab.reshape(-1)
            if b.shape[0] != lab.shape[0]:
                raise ValueError(f"target has {b.shape[0]} boxes but {lab.shape[0]} labels")
            boxes.append(b)
            labels.append(lab)
        counts = [b.shape[0] for b in boxes]
        if sum(counts):
            flat = labels[0] if len(labels) == 1 else torch.cat(labels)
            lo, hi = torch.aminmax(flat)
            if bool((lo < 0) | (hi >= self.num_classes)):
                raise ValueError(
                    f"labels must be in [0, {self.num_classes}), got {flat.unique().tolist()}"
                )
        if len(set(counts)) <= 1:
            return torch.stack(boxes), torch.stack(labels), None
        # Padded labels are -1, so validity is a comparison on the device (no per-image counts
        # to upload).
        pad_boxes = torch.nn.utils.rnn.pad_sequence(boxes, batch_first=True)
        pad_labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-1)
        return pad_boxes, pad_labels, pad_labels >= 0

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        targets: Sequence[dict[str, Any]],
        img_shape: tuple[int, int],
    ) -> dict[str, Tensor]:
        """GFL losses and eq. 12's total.

        Normalisation follows mmdetection's GFL: QFL is summed over all locations and classes
        and divided by the number of positives (at least 1); GIoU and DFL are weighted per
        positive by its detached max class score and divided by the sum of those weights
        (at least 1, which damps the box losses while scores are still near the prior). DFL is
        also averaged over the four sides. Images without objects contribute QFL only. Under
        ``torch.distributed`` both normalisers are taken over all ranks' images (divided by
        the world size), so the ranks' mean loss and DDP's averaged gradients equal those of one
        process on the whole batch.

        Args:
            cls_scores: per level ``[B, C, H_l, W_l]`` logits.
            bbox_preds: per level ``[B, 4 * (reg_max + 1), H_l, W_l]``.
            targets: per image ``{"boxes": [N, 4] xyxy input px, "labels": [N]}``.
            img_shape: ``(H, W)`` of the input.

        Returns:
            ``loss_qfl``, ``loss_dfl``, ``loss_giou``: the normalised, unweighted terms;
            ``loss = det_scale * (λ·loss_qfl + μ·loss_dfl + (1 - λ - μ)·loss_giou)``;
            ``num_pos``: detached float number of positive locations in the batch;
            ``pos_iou``: detached mean IoU of the positives' boxes with their objects. Nothing here
            waits for the device: every value stays a tensor.
        """
        asg = self.assign(cls_scores, targets, img_shape)
        cls_flat, reg_flat = self.flatten_outputs(cls_scores, bbox_preds)
        batch, num_loc = cls_flat.shape[:2]
        # Losses in float32 even under autocast: sigmoid/log terms of QFL/DFL are fragile in fp16.
        cls_flat = cls_flat.float()  # [B, A, C]
        reg_flat = reg_flat.float()  # [B, A, 4 * (reg_max + 1)]
        pos = asg.pos_mask  # [B, A]
        num_pos = pos.sum(dtype=torch.float32)

        # The box terms are evaluated at every location and weighted by zero off the
        # positives: no gathering of positives, whose count would have to reach the host
        # (a synchronisation on a GPU). Work in stride units as GFL does: the distribution's
        # bins are one stride wide.
        stride = asg.strides[:, None]  # [A, 1]
        pts = asg.points / stride  # [A, 2]
        tgt_boxes = asg.boxes / stride  # [B, A, 4]
        weight = torch.where(pos, cls_flat.detach().sigmoid().amax(dim=-1), 0.0)  # [B, A]
        pred_boxes = distance2bbox(pts, integral(reg_flat, self.reg_max))  # [B, A, 4]
        quality = torch.where(pos, aligned_iou(pred_boxes.detach(), tgt_boxes), 0.0)  # [B, A]
        # With no positive the weights are all 0 and both terms are exactly 0, with the
        # regression branch still in the graph (zero gradient).
        # Under torchrun the normalisers are the whole job's (see shared_normaliser), so N
        # processes with b images each train like one process with N·b images.
        weight_sum = shared_normaliser(
            weight.sum(), minimum=1.0 if self.box_loss_norm == "mmdet" else _MEAN_NORM_FLOOR)
        loss_giou = weighted_sum(giou_loss(pred_boxes, tgt_boxes), weight, weight_sum)
        tgt_dist = bbox2distance(pts, tgt_boxes, float(self.reg_max), eps=self.dfl_eps)
        dfl = distribution_focal_loss(reg_flat.reshape(-1, self.reg_max + 1),
                                      tgt_dist.reshape(-1))
        loss_dfl = weighted_sum(dfl.reshape(batch, num_loc, 4), weight[..., None],
                                4 * weight_sum)

        qfl = quality_focal_loss(cls_flat.reshape(batch * num_loc, -1), asg.labels.reshape(-1),
                                 quality.reshape(-1), beta=self.qfl_beta)
        loss_qfl = weighted_sum(qfl, None, shared_normaliser(num_pos))
        total = self.det_scale * (
            self.lambda_qfl * loss_qfl
            + self.mu_dfl * loss_dfl
            + (1.0 - self.lambda_qfl - self.mu_dfl) * loss_giou
        )
        return {
            "loss": total,
            "loss_qfl": loss_qfl,
            "loss_dfl": loss_dfl,
            "loss_giou": loss_giou,
            "num_pos": num_pos,
            # Unweighted mean IoU of the positives' decoded boxes with their objects: unlike
            # the score-weighted loss_giou, it means the same for every model and score level
            # (0 when the batch has no positive).
            "pos_iou": quality.sum() / num_pos.clamp(min=1.0),
        }

    # ------------------------------------------------------------------ inference
    def postprocess(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        img_shape: tuple[int, int],
        targets_or_metas: Sequence[dict[str, Any]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections from raw outputs.

        Args:
            cls_scores: per level ``[B, C, H_l, W_l]`` logits.
            bbox_preds: per level ``[B, 4 * (reg_max + 1), H_l, W_l]``.
            img_shape: ``(H, W)`` of the input.
            targets_or_metas: optional per image dicts with ``scale`` / ``orig_size``.

        Returns:
            Per image ``{"boxes": [K, 4] xyxy, "scores": [K], "labels": [K] long}``; boxes in
            original pixels when ``scale`` is given, else input pixels.
        """
        sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls_scores]
        _, points = self.priors(sizes, cls_scores[0].device, torch.float32)
        return self.postprocessor(cls_scores, bbox_preds, points, self.strides, img_shape,
                                  targets_or_metas)
