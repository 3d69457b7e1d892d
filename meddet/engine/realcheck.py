"""The real-disc check: how well a detector finds intervertebral discs on real MRI slices.

A detector trained on the synthetic phantom is only useful if what it learnt transfers to real
scans. This module scores any checkpoint on a small hand-labelled set of real sagittal slices:
nine slices of the two cervical volumes of spinalcordtoolbox's testing data
(``sct_t2_cervical.nii.gz``, ``sct_t1w_cervical.nii.gz``), 32 disc boxes in all. The boxes ship
with meddet (``meddet/data/real_discs.json``); the images do not: they are read from the
volumes at run time, through the same NIfTI reader ``meddet predict`` uses, and each volume's
sha256 is checked against the one the labels were drawn on.

Class-agnostic numbers are reported, because the labels say where a disc is, not whether it
is herniated:

- ``recall``: the fraction of labelled discs that some detection among its slice's ``top_k``
  best (any class) overlaps with IoU >= 0.5, pooled over all discs; the same count at IoU 0.1
  and 0.3 too (:data:`IOU_THRS`): real discs are 3-11 px tall, so one pixel of label or
  prediction error moves the IoU by up to 0.2, and medical detection tools report the lenient
  thresholds beside the strict one.
- ``ap50``: pycocotools' bbox AP at IoU 0.5, with one category ("disc") and every detection,
  whatever its class, counted as a disc detection.
- per volume, the median over its discs of predicted / labelled box height and width, the
  prediction being the disc's best-overlapping detection among its slice's ``top_k``: whether
  the boxes are too tall or too wide, not only whether they are found; and the median distance
  in the slice's pixels by which each edge of that detection lies outside the label's
  (superior, inferior, anterior, posterior; negative: inside), which says on which side the
  extra height or width sits and whether it is the size of a single pixel.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddet._io import atomic_write_bytes
from meddet.errors import MedDetError

__all__ = [
    "EDGE_SIDES",
    "IOU_THRS",
    "LABELS_FORMAT",
    "DiscSlice",
    "RealDiscResult",
    "VolumeScore",
    "best_matches",
    "box_size_ratios",
    "class_agnostic_ap50",
    "default_volumes_dir",
    "edge_offsets",
    "evaluate_real_discs",
    "load_real_disc_labels",
    "read_labelled_slices",
    "recall_at_k",
    "render_real_disc_labels",
    "score_volume",
]

#: ``format`` field of the label file.
LABELS_FORMAT = "meddet-real-discs"
#: IoU at which a detection finds a disc (``recall`` and ``ap50``).
IOU_THR = 0.5
#: IoUs at which found discs are also counted, lenient to strict.
IOU_THRS = (0.1, 0.3, 0.5)
_VOLUMES_HINT = ("pass the folder holding them with --volumes DIR (volumes_dir=...) or set "
                 "MEDDET_SHARED_DATA to the folder that contains real-mri/")

_GT_COLOUR = (0, 220, 0)
_DET_COLOUR = (235, 40, 40)
# Figures and overlays are drawn at least this large (long side, pixels): real slices are
# 55-77 pixels, far too small to judge a box at their own size.
_MIN_SIDE = 480


@dataclass(frozen=True)
class DiscSlice:
    """One labelled sagittal slice.

    Attributes:
        volume: file name of the NIfTI volume, e.g. ``"sct_t2_cervical.nii.gz"``.
        sha256: sha256 of the volume file the labels were drawn on.
        index: sagittal slice index as :mod:`meddet.inference.readers` counts it.
        shape: ``(H, W)`` of the slice.
        boxes: ``float64 [N, 4]`` disc boxes, xyxy in the slice's pixels (superior at the top,
            anterior on the left).
        truncated: per box, whether the field of view cuts the disc.
    """

    volume: str
    sha256: str
    index: int
    shape: tuple[int, int]
    boxes: np.ndarray
    truncated: tuple[bool, ...]

    @property
    def name(self) -> str:
        """``<volume stem>_slice<index>``, the stem of this slice's overlay."""
        return f"{self.volume.removesuffix('.gz').removesuffix('.nii')}_slice{self.index}"


def load_real_disc_labels(path: str | os.PathLike | None = None) -> list[DiscSlice]:
    """Read the disc labels (default: the file that ships with meddet).

    Args:
        path: a label file in the ``meddet-real-discs`` format; ``None`` for the packaged one.

    Raises:
        MedDetError: the file is missing, not JSON, or not in the expected format.
    """
    try:
        if path is None:
            text = resources.files("meddet.data").joinpath("real_discs.json").read_text("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = path or "meddet/data/real_discs.json"
        raise MedDetError(f"cannot read the disc labels {where}: {exc}".splitlines()[0]) from exc
    if not isinstance(doc, dict) or doc.get("format") != LABELS_FORMAT:
        raise MedDetError(f"{path} is not a {LABELS_FORMAT} label file")
    out = []
    for item in doc["slices"]:
        boxes = np.array([d["box"] for d in item["discs"]], dtype=np.float64).reshape(-1, 4)
        out.append(DiscSlice(volume=str(item["volume"]), sha256=str(item["sha256"]),
                             index=int(item["index"]),
                             shape=(int(item["shape"][0]), int(item["shape"][1])),
                             boxes=boxes,
                             truncated=tuple(bool(d.get("truncated", False))
                                             for d in item["discs"])))
    return out


def default_volumes_dir() -> Path:
    """Where the real volumes are looked for by default.

    ``$MEDDET_SHARED_DATA/real-mri`` when that variable is set, else ``../shared/data/real-mri``
    relative to the working directory (the layout beside a checkout of the repository).
    """
    shared = os.environ.get("MEDDET_SHARED_DATA")
    return Path(shared) / "real-mri" if shared else Path("..") / "shared" / "data" / "real-mri"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_labelled_slices(labels: Sequence[DiscSlice],
                         volumes_dir: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Read the image of every labelled slice from its volume.

    Args:
        labels: from :func:`load_real_disc_labels`.
        volumes_dir: folder holding the volumes; default :func:`default_volumes_dir`.

    Returns:
        One ``float32 [H, W]`` array per label, in the volume's intensity units, oriented as
        ``meddet predict`` sees it.

    Raises:
        MedDetError: a volume is missing or unreadable, differs from the file the labels were
            drawn on (sha256), or yields a slice of another shape.
    """
    return [arr for arr, _ in _read_slices(labels, volumes_dir)]


def _read_slices(labels: Sequence[DiscSlice], volumes_dir: str | os.PathLike | None
                 ) -> list[tuple[np.ndarray, tuple[float, float] | None]]:
    """:func:`read_labelled_slices` with each slice's ``(row_mm, col_mm)`` pixel spacing."""
    from meddet.inference.readers import InputSource, Skip, SliceSpec, iter_slices

    folder = Path(volumes_dir) if volumes_dir is not None else default_volumes_dir()
    by_volume: dict[str, list[int]] = {}
    for lab in labels:
        by_volume.setdefault(lab.volume, []).append(lab.index)
    arrays: dict[tuple[str, int], tuple[np.ndarray, tuple[float, float] | None]] = {}
    for volume, indices in by_volume.items():
        path = folder / volume
        if not path.is_file():
            raise MedDetError(f"real MRI volume {volume} not found in {folder}; "
                              + _VOLUMES_HINT)
        sha = _sha256(path)
        expected = next(lab.sha256 for lab in labels if lab.volume == volume)
        if sha != expected:
            raise MedDetError(f"{path} is not the file the disc labels were drawn on (sha256 "
                              f"{sha[:12]}..., expected {expected[:12]}...); restore the original "
                              "volume from spinalcordtoolbox's testing data")
        for item in iter_slices(InputSource(path, "nifti"), SliceSpec("list", tuple(indices))):
            if isinstance(item, Skip):
                raise MedDetError(f"cannot read {path}: {item.reason}")
            arrays[(volume, int(item.index))] = (item.array, item.spacing)
    out = []
    for lab in labels:
        arr, spacing = arrays[(lab.volume, lab.index)]
        if tuple(arr.shape) != lab.shape:
            raise MedDetError(f"slice {lab.index} of {lab.volume} is {arr.shape[0]}x"
                              f"{arr.shape[1]}, but it was labelled at {lab.shape[0]}x"
                              f"{lab.shape[1]}; the NIfTI reader's orientation has changed")
        out.append((arr, spacing))
    return out


# --------------------------------------------------------------------------- metrics
def _top_k(det: dict[str, np.ndarray], k: int) -> np.ndarray:
    """The ``k`` highest-scoring boxes of one image, ``float64 [min(k, K), 4]``."""
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(det["scores"], dtype=np.float64), kind="stable")
    return boxes[order[:k]]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from meddet.models.box_ops import box_iou

    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def recall_at_k(gt_boxes: Sequence[np.ndarray], detections: Sequence[dict[str, np.ndarray]], *,
                k: int = 10, iou_thr: float = IOU_THR) -> tuple[int, int]:
    """Discs found among each image's ``k`` best detections, whatever their class.

    A ground-truth box is found when at least one of its image's top-``k`` detections overlaps
    it with IoU >= ``iou_thr`` (no one-to-one matching: one detection may find two discs).

    Args:
        gt_boxes: per image, ``[N_i, 4]`` xyxy.
        detections: per image, ``{"boxes": [K_i, 4] xyxy, "scores": [K_i]}`` (other keys, such
            as ``labels``, are ignored).
        k: detections considered per image.
        iou_thr: IoU a detection needs to find a disc.

    Returns:
        ``(found, total)`` over all images.
    """
    if k < 1:
        raise MedDetError(f"--top-k must be >= 1, got {k}")
    if len(gt_boxes) != len(detections):
        raise ValueError(f"{len(gt_boxes)} images of ground truth, {len(detections)} of "
                         "detections")
    masks = [_found_mask(gt, det, k, iou_thr) for gt, det in zip(gt_boxes, detections)]
    return sum(int(m.sum()) for m in masks), sum(len(m) for m in masks)


def _found_mask(gt: np.ndarray, det: dict[str, np.ndarray], k: int,
                iou_thr: float = IOU_THR) -> np.ndarray:
    """Per ground-truth box of one image, whether a top-``k`` detection finds it."""
    return best_matches(gt, det, k)[0] >= iou_thr


def best_matches(gt: np.ndarray, det: dict[str, np.ndarray], k: int = 10
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each ground-truth box's best-overlapping detection among the image's ``k`` best.

    Args:
        gt: ``[N, 4]`` xyxy.
        det: ``{"boxes": [K, 4] xyxy, "scores": [K]}``.
        k: detections considered (by descending score).

    Returns:
        ``(iou, boxes)``: float64 ``[N]`` the best IoU (0 without detections) and float64
        ``[N, 4]`` the detection that reaches it (NaN where no detection overlaps the box).
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    top = _top_k(det, k)
    best = np.zeros(len(gt))
    boxes = np.full((len(gt), 4), np.nan)
    if len(gt) and len(top):
        iou = _iou(gt, top)
        j = iou.argmax(axis=1)  # the first (highest-scoring) of equal IoUs
        best = iou[np.arange(len(gt)), j]
        hit = best > 0
        boxes[hit] = top[j[hit]]
    return best, boxes


def class_agnostic_ap50(gt_boxes: Sequence[np.ndarray],
                        detections: Sequence[dict[str, np.ndarray]],
                        shapes: Sequence[tuple[int, int]]) -> float:
    """pycocotools' bbox AP at IoU 0.5 with every box and detection in one category.

    Args:
        gt_boxes: per image, ``[N_i, 4]`` xyxy.
        detections: per image, ``{"boxes": [K_i, 4] xyxy, "scores": [K_i]}``; labels ignored.
        shapes: per image, ``(H, W)``.

    Returns:
        ``COCOeval.stats[1]`` (area "all", at most 100 detections per image); ``-1`` when there
        is no ground truth, as pycocotools reports it.
    """
    from pycocotools.coco import COCO

    from meddet.engine.evaluator import run_cocoeval

    images, annotations, results = [], [], []
    for img_id, (gt, det, (h, w)) in enumerate(zip(gt_boxes, detections, shapes), start=1):
        images.append({"id": img_id, "width": int(w), "height": int(h)})
        for x1, y1, x2, y2 in np.asarray(gt, dtype=np.float64).reshape(-1, 4):
            bw, bh = float(x2 - x1), float(y2 - y1)
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": 1,
                                "bbox": [float(x1), float(y1), bw, bh], "area": bw * bh,
                                "iscrowd": 0})
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), s in zip(boxes, np.asarray(det["scores"], dtype=np.float64)):
            results.append({"image_id": img_id, "category_id": 1, "score": float(s),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": 1, "name": "disc"}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return float(run_cocoeval(coco, results).stats[1])


# --------------------------------------------------------------------------- drawing
def _draw(arr: np.ndarray, gt: np.ndarray, det_boxes: np.ndarray | None = None,
          title: str = "") -> Any:
    """The slice enlarged, ground truth in green, detections (if any) in red: a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    from meddet.inference.overlay import display_window

    gray = display_window(arr)
    h, w = gray.shape
    zoom = max(1, int(np.ceil(_MIN_SIDE / max(h, w))))
    img = Image.fromarray(gray, mode="L").convert("RGB").resize((w * zoom, h * zoom),
                                                                 Image.NEAREST)
    draw = ImageDraw.Draw(img)
    line = max(1, zoom // 4)
    for boxes, colour in ((det_boxes, _DET_COLOUR), (gt, _GT_COLOUR)):
        for x1, y1, x2, y2 in (boxes if boxes is not None else np.zeros((0, 4))):
            draw.rectangle([x1 * zoom, y1 * zoom, x2 * zoom - 1, y2 * zoom - 1],
                           outline=colour, width=line)
    if title:
        try:
            font = ImageFont.load_default(size=max(10, img.size[0] // 30))
        except TypeError:  # Pillow < 10.1 has one fixed bitmap font
            font = ImageFont.load_default()
        draw.text((4, 4), title, fill=(255, 255, 0), font=font)
    return img


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def render_real_disc_labels(out_dir: str | os.PathLike, *,
                            volumes_dir: str | os.PathLike | None = None,
                            labels: Sequence[DiscSlice] | None = None) -> list[Path]:
    """Draw the labelled slices, one figure per volume (``real_discs_<volume stem>.png``).

    Each figure puts that volume's labelled slices side by side, enlarged, with the disc boxes
    in green and the slice index in the corner.

    Returns:
        The figures written.

    Raises:
        MedDetError: as :func:`read_labelled_slices`.
    """
    from PIL import Image

    labels = list(labels) if labels is not None else load_real_disc_labels()
    arrays = read_labelled_slices(labels, volumes_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for volume in dict.fromkeys(lab.volume for lab in labels):
        tiles = [_draw(arr, lab.boxes, title=f"slice {lab.index}")
                 for lab, arr in zip(labels, arrays) if lab.volume == volume]
        gap = 6
        fig = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1),
                                max(t.height for t in tiles)), (255, 255, 255))
        x = 0
        for tile in tiles:
            fig.paste(tile, (x, 0))
            x += tile.width + gap
        stem = volume.removesuffix(".gz").removesuffix(".nii").removeprefix("sct_")
        path = out / f"real_discs_{stem}.png"
        atomic_write_bytes(path, _png(fig))
        written.append(path)
    return written


# --------------------------------------------------------------------------- per volume
def _thr_key(thr: float) -> str:
    return f"{thr:g}"


@dataclass(frozen=True)
class VolumeScore:
    """How a detector did on the labelled slices of one volume.

    Attributes:
        volume: the volume's file name.
        slices: labelled slices.
        discs: labelled discs.
        found: discs found among their slice's ``top_k`` detections, per IoU of
            :data:`IOU_THRS`.
        ap50: class-agnostic AP at IoU 0.5 over this volume's slices.
        matched: discs that some top-``k`` detection overlaps at all (IoU > 0); the box ratios
            are medians over these.
        height_ratio: median of predicted / labelled box height (``None`` when nothing
            overlaps any disc).
        width_ratio: the same for the width.
        edge_offsets: per side of :data:`EDGE_SIDES`, the median over the matched discs of how
            far (slice pixels) the detection's edge lies outside the label's, negative when
            inside (``None`` when nothing overlaps any disc).
    """

    volume: str
    slices: int
    discs: int
    found: dict[float, int]
    ap50: float
    matched: int
    height_ratio: float | None
    width_ratio: float | None
    edge_offsets: dict[str, float] | None = None

    def recall(self, iou_thr: float = IOU_THR) -> float:
        """Found / labelled discs at ``iou_thr`` (one of :data:`IOU_THRS`); -1 without discs."""
        return self.found[iou_thr] / self.discs if self.discs else -1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form (IoU thresholds as keys ``"0.1"``, ``"0.3"``, ``"0.5"``)."""
        return {"volume": self.volume, "slices": self.slices, "discs": self.discs,
                "found_at": {_thr_key(t): n for t, n in self.found.items()},
                "recall_at": {_thr_key(t): self.recall(t) for t in self.found},
                "ap50": self.ap50, "matched": self.matched,
                "median_height_ratio": self.height_ratio,
                "median_width_ratio": self.width_ratio,
                "median_edge_offsets_px": (None if self.edge_offsets is None
                                           else dict(self.edge_offsets))}


def _matched_rows(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gt, pred)`` as float64 ``[M, 4]`` without the rows whose detection is NaN (none)."""
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    ok = ~np.isnan(pred).any(axis=1)
    return gt[ok], pred[ok]


def box_size_ratios(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted / labelled height and width of matched boxes, rows with NaN left out.

    Args:
        gt: ``[N, 4]`` xyxy labelled boxes.
        pred: ``[N, 4]`` xyxy, the detection matched to each (NaN rows: none).

    Returns:
        ``(height ratios, width ratios)``, float64 ``[M]`` each, ``M`` the matched rows.
    """
    gt, pred = _matched_rows(gt, pred)
    return ((pred[:, 3] - pred[:, 1]) / (gt[:, 3] - gt[:, 1]),
            (pred[:, 2] - pred[:, 0]) / (gt[:, 2] - gt[:, 0]))


#: The sides of a disc box in a sagittal slice as the readers orient it (superior at the top,
#: anterior on the left): y0, y1, x0, x1.
EDGE_SIDES = ("superior", "inferior", "anterior", "posterior")


def edge_offsets(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """How far each edge of a matched detection lies outside its label, rows with NaN left out.

    Args:
        gt: ``[N, 4]`` xyxy labelled boxes.
        pred: ``[N, 4]`` xyxy, the detection matched to each (NaN rows: none).

    Returns:
        float64 ``[M, 4]``, columns in :data:`EDGE_SIDES` order (``gt_y0 - pred_y0``,
        ``pred_y1 - gt_y1``, ``gt_x0 - pred_x0``, ``pred_x1 - gt_x1``): positive where the
        detection reaches beyond the label, negative where it stops short of it.
    """
    gt, pred = _matched_rows(gt, pred)
    return np.stack([gt[:, 1] - pred[:, 1], pred[:, 3] - gt[:, 3],
                     gt[:, 0] - pred[:, 0], pred[:, 2] - gt[:, 2]], axis=1)


def score_volume(volume: str, gt_boxes: Sequence[np.ndarray],
                 detections: Sequence[dict[str, np.ndarray]],
                 shapes: Sequence[tuple[int, int]], *, k: int = 10) -> VolumeScore:
    """Score the labelled slices of one volume (see :class:`VolumeScore`).

    Args:
        volume: the volume's name, for the record.
        gt_boxes, detections, shapes: per slice of the volume, as for
            :func:`class_agnostic_ap50`.
        k: detections per slice considered for the found counts and the box ratios.
    """
    ious, matched = [], []
    for gt, det in zip(gt_boxes, detections):
        iou, boxes = best_matches(gt, det, k)
        ious.append(iou)
        matched.append(boxes)
    iou = np.concatenate(ious) if ious else np.zeros(0)
    all_gt = np.concatenate([np.asarray(g, np.float64).reshape(-1, 4) for g in gt_boxes]
                            ) if gt_boxes else np.zeros((0, 4))
    all_pred = np.concatenate(matched) if matched else np.zeros((0, 4))
    heights, widths = box_size_ratios(all_gt, all_pred)
    edges = np.median(edge_offsets(all_gt, all_pred), axis=0) if len(heights) else None
    return VolumeScore(
        volume=volume, slices=len(gt_boxes), discs=len(iou),
        found={t: int((iou >= t).sum()) for t in IOU_THRS},
        ap50=class_agnostic_ap50(gt_boxes, detections, shapes), matched=len(heights),
        height_ratio=float(np.median(heights)) if len(heights) else None,
        width_ratio=float(np.median(widths)) if len(widths) else None,
        edge_offsets=None if edges is None else dict(zip(EDGE_SIDES, map(float, edges))))


# --------------------------------------------------------------------------- the check
@dataclass
class RealDiscResult:
    """What :func:`evaluate_real_discs` measured.

    Attributes:
        recall: fraction of labelled discs found among their slice's ``top_k`` detections.
        ap50: class-agnostic AP at IoU 0.5 (pycocotools).
        found: discs found.
        discs: labelled discs.
        slices: labelled slices.
        top_k: detections per slice considered for ``recall``.
        score_thr: minimum score of a detection.
        img_size: network input side used.
        resample: the predictor's pre-processing mode (``auto``, ``spacing`` or ``fixed``).
        input_spacing_mm: the pixel size the model was trained at (``None``: not recorded).
        preprocessing: one line saying how the slices were brought to the network input.
        checkpoint: the checkpoint evaluated (``None`` for an in-memory predictor).
        per_slice: per slice ``{"volume", "index", "discs", "found", "found_at",
            "detections"}`` (``found`` at IoU 0.5, ``found_at`` per IoU of :data:`IOU_THRS`).
        volumes: per volume, a :class:`VolumeScore`.
        found_at: discs found per IoU of :data:`IOU_THRS`, pooled over all slices.
        overlays: overlay PNGs written (empty without an output folder).
    """

    recall: float
    ap50: float
    found: int
    discs: int
    slices: int
    top_k: int
    score_thr: float
    img_size: int
    resample: str = "fixed"
    input_spacing_mm: float | None = None
    preprocessing: str = ""
    checkpoint: str | None = None
    per_slice: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[VolumeScore] = field(default_factory=list)
    found_at: dict[float, int] = field(default_factory=dict)
    overlays: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form (the ``metrics.json`` of ``meddet check-real``)."""
        return {
            "recall": self.recall, "ap50": self.ap50, "found": self.found, "discs": self.discs,
            "slices": self.slices, "top_k": self.top_k, "iou_thr": IOU_THR,
            "score_thr": self.score_thr, "img_size": self.img_size,
            "resample": self.resample, "input_spacing_mm": self.input_spacing_mm,
            "preprocessing": self.preprocessing, "checkpoint": self.checkpoint,
            "found_at": {_thr_key(t): n for t, n in self.found_at.items()},
            "recall_at": {_thr_key(t): n / self.discs if self.discs else -1.0
                          for t, n in self.found_at.items()},
            "volumes": [v.as_dict() for v in self.volumes],
            "per_slice": list(self.per_slice),
            "overlays": [str(p) for p in self.overlays],
        }


def evaluate_real_discs(
    checkpoint: str | os.PathLike | Any,
    *,
    volumes_dir: str | os.PathLike | None = None,
    img_size: int | None = None,
    device: str = "cpu",
    top_k: int = 10,
    score_thr: float = 0.05,
    out_dir: str | os.PathLike | None = None,
    labels: Sequence[DiscSlice] | None = None,
    resample: str = "auto",
    input_spacing_mm: float | None = None,
) -> RealDiscResult:
    """Score a detector on the hand-labelled real disc slices.

    Args:
        checkpoint: a meddet checkpoint path, or a ready
            :class:`~meddet.inference.predictor.Predictor` (its own size, device and score
            threshold and resampling are then used; ``img_size``, ``device``, ``score_thr``
            and ``resample`` are ignored).
        volumes_dir: folder holding the real volumes; default :func:`default_volumes_dir`.
        img_size: network input side; default the checkpoint's.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        top_k: detections per slice that count for ``recall``.
        score_thr: minimum detection score (AP50 uses every detection above it).
        out_dir: when given, one overlay PNG per slice is written there (labels in green, the
            ``top_k`` best detections in red).
        labels: the labelled slices; default the set that ships with meddet.
        resample: how slices reach the network input
            (:data:`~meddet.inference.predictor.RESAMPLE_MODES`): by default resampled from
            the volumes' 1 mm pixels to the pixel size the model was trained at when the
            checkpoint records it, else stretched to the input size (``"fixed"``).
        input_spacing_mm: the pixel size the model was trained at, replacing the checkpoint's
            record (for checkpoints written before it was recorded).

    Returns:
        A :class:`RealDiscResult`.

    Raises:
        MedDetError: missing or changed volumes, an unreadable checkpoint, bad options.
    """
    from meddet.inference.predictor import Predictor

    if top_k < 1:
        raise MedDetError(f"--top-k must be >= 1, got {top_k}")
    labels = list(labels) if labels is not None else load_real_disc_labels()
    read = _read_slices(labels, volumes_dir)
    arrays = [arr for arr, _ in read]
    if isinstance(checkpoint, Predictor):
        predictor, ckpt_name = checkpoint, None
    else:
        predictor = Predictor.from_checkpoint(checkpoint, device=device, img_size=img_size,
                                              score_thr=score_thr, resample=resample,
                                              input_spacing_mm=input_spacing_mm)
        ckpt_name = str(checkpoint)
    dets = predictor.predict_arrays(arrays, [sp for _, sp in read])
    gts = [lab.boxes for lab in labels]
    found, total = recall_at_k(gts, dets, k=top_k)
    ap50 = class_agnostic_ap50(gts, dets, [lab.shape for lab in labels])

    per_slice, overlays = [], []
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MedDetError(f"cannot create output folder {folder}: {exc.strerror}") from exc
    for lab, arr, det in zip(labels, arrays, dets):
        iou = best_matches(lab.boxes, det, top_k)[0]
        mask = iou >= IOU_THR
        per_slice.append({"volume": lab.volume, "index": lab.index, "discs": len(lab.boxes),
                          "found": int(mask.sum()),
                          "found_at": {_thr_key(t): int((iou >= t).sum()) for t in IOU_THRS},
                          "detections": int(len(det["boxes"]))})
        if folder is not None:
            path = folder / f"{lab.name}.png"
            title = f"{lab.name}: {int(mask.sum())}/{len(lab.boxes)} found"
            atomic_write_bytes(path, _png(_draw(arr, lab.boxes, _top_k(det, top_k), title)))
            overlays.append(path)
    volumes = []
    for volume in dict.fromkeys(lab.volume for lab in labels):
        picked = [i for i, lab in enumerate(labels) if lab.volume == volume]
        volumes.append(score_volume(volume, [gts[i] for i in picked], [dets[i] for i in picked],
                                    [labels[i].shape for i in picked], k=top_k))
    return RealDiscResult(recall=found / total if total else -1.0, ap50=ap50, found=found,
                          discs=total, slices=len(labels), top_k=top_k,
                          score_thr=float(predictor.score_thr), img_size=predictor.img_size,
                          resample=predictor.resample,
                          input_spacing_mm=predictor.input_spacing_mm,
                          preprocessing=predictor.describe_resample(), checkpoint=ckpt_name, per_slice=per_slice, volumes=volumes,
                          found_at={t: sum(v.found[t] for v in volumes) for t in IOU_THRS},
                          overlays=overlays)
