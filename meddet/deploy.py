"""Run an exported MedDet detector with onnxruntime and numpy only (no torch).

The ONNX graph written by ``meddet export`` ends at the raw head outputs: per pyramid level,
classification logits ``cls_p{3..7}`` ``[B, C, H_l, W_l]`` and distance-distribution logits
``reg_p{3..7}`` ``[B, 4 * (reg_max + 1), H_l, W_l]``. Everything after that is here, in numpy,
step for step the same as ``meddet.models.postprocess.GFLPostProcess``:

1. sigmoid scores; per level keep (location, class) pairs above ``score_thr``, at most
   ``nms_pre`` of them (highest first);
2. decode the integral of the softmax distribution times the level's stride into ``xyxy``
   boxes around the location centres, clipped to the network input;
3. divide by the resize ``scale`` and clip to the original image (which removes the letterbox
   padding), then drop boxes no wider or taller than ``min_box_size``;
4. class-wise greedy NMS at ``nms_iou`` over all levels, keep the ``max_per_img`` best.

:func:`preprocess` reproduces ``meddet.data.preprocess`` (percentile clip, Pillow's bilinear
resize, pad, ImageNet standardisation) in numpy, so a deployment needs ``numpy`` and
``onnxruntime`` only::

    from meddet.deploy import OnnxDetector
    det = OnnxDetector("meddet.onnx")
    result = det.predict(image_2d)   # {"boxes", "scores", "labels", "class_names"}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "METADATA_KEY",
    "OnnxDetector",
    "batched_nms",
    "grid_points",
    "nms",
    "postprocess",
    "preprocess",
]

# The ONNX metadata_props key under which ``meddet export`` stores the JSON description.
METADATA_KEY = "meddet"

# ImageNet statistics; the grey channel is replicated and standardised with them (as training).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- pre-processing
def preprocess(
    arr: np.ndarray,
    img_size: int,
    *,
    clip_percentiles: Sequence[float] = (0.5, 99.5),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, float]:
    """Normalise, resize and pad a 2-D image as ``meddet.data.preprocess`` does, in numpy.

    Percentile clipping to [0, 1], resize of the long side to ``img_size`` with Pillow's
    (anti-aliased) bilinear filter re-implemented in numpy, zero padding bottom/right, grey
    replicated to 3 channels and standardised with the ImageNet mean/std.

    Args:
        arr: ``[H, W]`` image in any intensity units (finite values).
        img_size: network input side (a multiple of 32).
        clip_percentiles: intensity percentiles mapped to 0 and 1.
        mean: per-channel mean subtracted after replicating the grey channel.
        std: per-channel standard deviation divided by.

    Returns:
        ``(float32 [3, img_size, img_size], scale)``; ``scale`` is input pixels per original
        pixel (divide network-input boxes by it to get original pixels).
    """
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {arr.shape}")
    lo, hi = np.percentile(arr, list(clip_percentiles))
    if hi <= lo:
        img01 = np.zeros_like(arr)
    else:
        img01 = np.clip((arr - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    h, w = arr.shape
    scale = img_size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        # Pillow resamples horizontally, stores float32, then vertically; so do we.
        tmp = (img01.astype(np.float64) @ _bilinear_weights(w, nw).T).astype(np.float32)
        img01 = (_bilinear_weights(h, nh) @ tmp.astype(np.float64)).astype(np.float32)
    canvas = np.zeros((img_size, img_size), np.float32)
    canvas[: min(nh, img_size), : min(nw, img_size)] = img01[:img_size, :img_size]
    mean_a = np.asarray(mean, np.float32)[:, None, None]
    std_a = np.asarray(std, np.float32)[:, None, None]
    return ((canvas[None] - mean_a) / std_a).astype(np.float32), float(scale)


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` resampling matrix of Pillow's BILINEAR filter (``precompute_coeffs``).

    When shrinking, the triangle filter's support grows with the scale, which anti-aliases;
    each row is normalised to sum to 1.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    weights = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        x = np.arange(xmin, xmax)
        k = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
        total = k.sum()
        weights[xx, xmin:xmax] = k / total if total != 0 else k
    return weights


# --------------------------------------------------------------------------- post-processing
def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float32)
    pos = x >= 0
    # Split by sign so exp never overflows.
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _integral(logits: np.ndarray, reg_max: int) -> np.ndarray:
    """``[N, 4 * (reg_max + 1)]`` logits → ``[N, 4]`` expected distances in bin units."""
    n = reg_max + 1
    x = logits.reshape(-1, 4, n).astype(np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    prob = e / e.sum(axis=-1, keepdims=True)
    return (prob @ np.arange(n, dtype=np.float32)).astype(np.float32)


def grid_points(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    *,
    center_offset: float = 0.0,
    anchor_scale: float = 8.0,
) -> list[np.ndarray]:
    """Location centres per level, ``[H_l * W_l, 2]`` (x, y) input pixels, row-major.

    The centre of cell ``(i, j)`` is ``((j + center_offset) * s, (i + center_offset) * s)``;
    it is computed as the centre of the level's square anchor, as the torch model does, so the
    float32 values are identical.
    """
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        ys = (np.arange(h, dtype=np.float32) + np.float32(center_offset)) * np.float32(s)
        xs = (np.arange(w, dtype=np.float32) + np.float32(center_offset)) * np.float32(s)
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        half = np.float32(anchor_scale * s / 2)
        cx, cy = cx.reshape(-1), cy.reshape(-1)
        x1, y1, x2, y2 = cx - half, cy - half, cx + half, cy + half
        out.append(np.stack([(x1 + x2) / 2, (y1 + y2) / 2], axis=-1).astype(np.float32))
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy NMS (torchvision's rule: suppress when IoU > ``iou_thr``).

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        iou_thr: IoU threshold.

    Returns:
        Indices of kept boxes, by descending score.
    """
    boxes = np.asarray(boxes, np.float32)
    order = np.argsort(-np.asarray(scores), kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_thr)]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                iou_thr: float) -> np.ndarray:
    """Class-wise NMS: boxes of different labels never suppress each other.

    Returns:
        Kept indices sorted by descending score (as ``torchvision.ops.batched_nms``).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = [np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], iou_thr)]
            for c in np.unique(labels)]
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")]


def postprocess(
    cls_scores: Sequence[np.ndarray],
    bbox_preds: Sequence[np.ndarray],
    *,
    strides: Sequence[int],
    img_shape: tuple[int, int],
    reg_max: int = 16,
    score_thr: float = 0.05,
    nms_pre: int = 1000,
    nms_iou: float = 0.6,
    max_per_img: int = 100,
    min_box_size: float = 0.0,
    center_offset: float = 0.0,
    anchor_scale: float = 8.0,
    metas: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Detections from raw per-level head outputs (numpy twin of ``GFLPostProcess``).

    Args:
        cls_scores: per level ``[B, C, H_l, W_l]`` logits.
        bbox_preds: per level ``[B, 4 * (reg_max + 1), H_l, W_l]`` distribution logits.
        strides: stride per level.
        img_shape: ``(H, W)`` of the network input; decoded boxes are clipped to it.
        reg_max: largest distance bin.
        score_thr: minimum sigmoid score of a candidate.
        nms_pre: candidates kept per level before NMS.
        nms_iou: class-wise NMS IoU threshold.
        max_per_img: detections kept per image.
        min_box_size: boxes whose width or height is at most this are dropped before NMS, in
            the units of the returned boxes (original pixels with a ``scale``).
        center_offset: location centre offset in cells (the model's ``center_offset``).
        anchor_scale: anchor side in strides (only used to reproduce the centres bit-exactly).
        metas: optional per image ``{"scale": float, "orig_size": (h, w)}``; boxes are divided
            by ``scale`` and clipped to ``orig_size`` before NMS.

    Returns:
        Per image ``{"boxes": float32 [K, 4] xyxy, "scores": float32 [K], "labels": int64
        [K]}`` sorted by descending score; original pixels when ``metas`` give a scale.
    """
    sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls_scores]
    points = grid_points(sizes, strides, center_offset=center_offset, anchor_scale=anchor_scale)
    batch, num_classes = int(cls_scores[0].shape[0]), int(cls_scores[0].shape[1])
    img_h, img_w = (np.float32(v) for v in img_shape)
    results = []
    for b in range(batch):
        boxes_all, scores_all, labels_all = [], [], []
        for cls, reg, pts, stride in zip(cls_scores, bbox_preds, points, strides):
            scores = _sigmoid(np.asarray(cls[b], np.float32).reshape(num_classes, -1).T
                              ).reshape(-1)
            cand = np.flatnonzero(scores > score_thr)
            if cand.size > nms_pre:
                cand = cand[np.argsort(-scores[cand], kind="stable")[:nms_pre]]
            loc = cand // num_classes
            reg_flat = np.asarray(reg[b], np.float32).reshape(4 * (reg_max + 1), -1).T
            dist = _integral(reg_flat[loc], reg_max) * np.float32(stride)
            p = pts[loc]
            boxes = np.stack([
                np.clip(p[:, 0] - dist[:, 0], 0, img_w), np.clip(p[:, 1] - dist[:, 1], 0, img_h),
                np.clip(p[:, 0] + dist[:, 2], 0, img_w), np.clip(p[:, 1] + dist[:, 3], 0, img_h),
            ], axis=1).astype(np.float32)
            boxes_all.append(boxes)
            scores_all.append(scores[cand])
            labels_all.append((cand % num_classes).astype(np.int64))
        boxes = np.concatenate(boxes_all).reshape(-1, 4)
        scores = np.concatenate(scores_all).astype(np.float32)
        labels = np.concatenate(labels_all)
        if metas is not None:
            boxes = _to_original(boxes, metas[b])
        size_ok = ((boxes[:, 2:] - boxes[:, :2]) > np.float32(min_box_size)).all(axis=1)
        boxes, scores, labels = boxes[size_ok], scores[size_ok], labels[size_ok]
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        results.append({"boxes": boxes, "scores": scores, "labels": labels})
    return results


def _to_original(boxes: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    scale = meta.get("scale")
    if scale is not None:
        boxes = (boxes / np.float32(scale)).astype(np.float32)
    orig = meta.get("orig_size")
    if orig is not None:
        h, w = (float(v) for v in orig)
        boxes = np.stack([np.clip(boxes[:, 0], 0, w), np.clip(boxes[:, 1], 0, h),
                          np.clip(boxes[:, 2], 0, w), np.clip(boxes[:, 3], 0, h)],
                         axis=1).astype(np.float32)
    return boxes


# --------------------------------------------------------------------------- runtime
class OnnxDetector:
    """An exported MedDet model in onnxruntime plus the numpy post-process.

    Args:
        path: ``.onnx`` file written by ``meddet export``.
        providers: onnxruntime execution providers (default: CPU).
        **overrides: post-process settings that replace the exported ones: ``score_thr``,
            ``nms_iou``, ``nms_pre``, ``max_per_img``, ``min_box_size``.

    Attributes:
        meta: the JSON description stored in the model (class names, image size, strides,
            post-process settings, output names).
    """

    _OVERRIDABLE = ("score_thr", "nms_iou", "nms_pre", "max_per_img", "min_box_size")

    def __init__(self, path: str | os.PathLike, *, providers: Sequence[str] | None = None,
                 **overrides: Any) -> None:
        import onnxruntime as ort

        unknown = sorted(set(overrides) - set(self._OVERRIDABLE))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; valid: {list(self._OVERRIDABLE)}")
        self.session = ort.InferenceSession(os.fspath(path),
                                            providers=list(providers or ["CPUExecutionProvider"]))
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata; export it with "
                             "`meddet export`")
        self.meta: dict[str, Any] = json.loads(props[METADATA_KEY])
        self.meta["postprocess"].update({k: v for k, v in overrides.items() if v is not None})
        self.class_names: list[str] = list(self.meta["class_names"])
        self.img_size: int = int(self.meta["img_size"])

    def raw(self, images: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Run the graph on ``float32 [B, 3, S, S]``; per-level ``(cls_scores, bbox_preds)``."""
        names = self.meta["outputs"]
        outs = self.session.run(names["cls"] + names["reg"],
                                {self.meta["input"]: np.ascontiguousarray(images, np.float32)})
        n = len(names["cls"])
        return list(outs[:n]), list(outs[n:])

    def detect(self, images: np.ndarray, metas: Sequence[dict[str, Any]] | None = None
               ) -> list[dict[str, np.ndarray]]:
        """Detections for a pre-processed batch ``[B, 3, S, S]``.

        Args:
            images: network input (see :func:`preprocess`).
            metas: optional per image ``{"scale", "orig_size"}`` to map boxes back.
        """
        cls_scores, bbox_preds = self.raw(images)
        pp = self.meta["postprocess"]
        return postprocess(
            cls_scores, bbox_preds, strides=self.meta["strides"],
            img_shape=(int(images.shape[-2]), int(images.shape[-1])),
            reg_max=int(self.meta["reg_max"]), score_thr=float(pp["score_thr"]),
            nms_pre=int(pp["nms_pre"]), nms_iou=float(pp["nms_iou"]),
            max_per_img=int(pp["max_per_img"]),
            # Older exports have no min_box_size: use the default.
            min_box_size=float(pp.get("min_box_size", 0.0)),
            center_offset=float(self.meta["center_offset"]),
            anchor_scale=float(self.meta["anchor_scale"]), metas=metas)

    def predict(self, image: np.ndarray) -> dict[str, Any]:
        """Detections on one 2-D image (any intensity units), boxes in its own pixels.

        Returns:
            ``{"boxes": [K, 4] xyxy, "scores": [K], "labels": [K], "class_names": [K]}``.
        """
        pre = self.meta.get("preprocess", {})
        x, scale = preprocess(image, self.img_size,
                              clip_percentiles=pre.get("clip_percentiles", (0.5, 99.5)),
                              mean=pre.get("mean", IMAGENET_MEAN), std=pre.get("std", IMAGENET_STD))
        h, w = np.asarray(image).shape[:2]
        det = self.detect(x[None], [{"scale": scale, "orig_size": (h, w)}])[0]
        det["class_names"] = [self.class_names[int(i)] for i in det["labels"]]
        return det
