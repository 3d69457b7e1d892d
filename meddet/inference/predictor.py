"""Prediction on arbitrary inputs: a :class:`Predictor` plus the streaming run behind
``meddet predict``.

:class:`Predictor` wraps a detector with the training-time pre-processing
(``meddet.data.preprocess``) and maps detections back to each image's own pixels. A slice whose
pixel spacing is known (NIfTI, DICOM) is resampled to the pixel size the detector was trained
at (``input_spacing_mm`` in the checkpoint), as nnU-Net and nnDetection do, instead of being
stretched to the input size whatever its spacing; ``resample="fixed"`` keeps the stretch.
:func:`predict_inputs` streams discovered inputs through it in batches and writes, as it goes,
one overlay PNG per image or slice plus ``predictions.json`` and ``predictions.csv``. Only the
current batch is held in memory, so a run over thousands of images uses the memory of one batch.
Both tables are written to temporary files and moved into place when the run ends, so a reader
never sees half a file.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddet import __version__
from meddet._io import atomic_open, atomic_write_bytes
from meddet.device import resolve_device
from meddet.errors import MedDetError
from meddet.geometry import check_img_size
from meddet.inference.overlay import render_overlay
from meddet.inference.readers import (
    InputSource,
    Skip,
    Slice,
    SliceSpec,
    discover_inputs,
    iter_slices,
)

__all__ = ["CSV_COLUMNS", "RESAMPLE_MODES", "PredictSummary", "Predictor", "predict_inputs",
           "resolve_device"]

#: How a slice is brought to the network input: ``"auto"`` resamples to the training pixel
#: size when both it and the slice's spacing are known, else resizes to the input size;
#: ``"spacing"`` requires the model's pixel size; ``"fixed"`` always resizes the long side to
#: the input size.
RESAMPLE_MODES = ("auto", "spacing", "fixed")

CSV_COLUMNS = (
    "source", "slice_index", "overlay", "class", "score", "x1", "y1", "x2", "y2",
    "x1_mm", "y1_mm", "x2_mm", "y2_mm",
)


class Predictor:
    """A detector ready for inference on 2-D arrays of any intensity range.

    Args:
        model: a :class:`~meddet.models.GFLDetector` (put in eval mode here).
        class_names: names indexed by label.
        img_size: network input side (multiple of 32).
        device: where to run.
        score_thr: minimum score of a reported detection (replaces the model's post-process
            threshold, on a copy of its post-processor).
        resample: one of :data:`RESAMPLE_MODES`.
        input_spacing_mm: millimetres per input pixel at training time (the checkpoint's
            ``input_spacing_mm``); ``None`` when unknown.
    """

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], *, img_size: int,
                 device: str | torch.device = "cpu", score_thr: float = 0.3,
                 resample: str = "auto", input_spacing_mm: float | None = None) -> None:
        check_img_size(img_size)
        if not 0.0 <= score_thr <= 1.0:
            raise MedDetError(f"--score-thr must be in [0, 1], got {score_thr}")
        if input_spacing_mm is not None and not input_spacing_mm > 0:
            raise MedDetError(f"input_spacing_mm must be > 0, got {input_spacing_mm!r}")
        self.input_spacing_mm = None if input_spacing_mm is None else float(input_spacing_mm)
        self.set_resample(resample)
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) \
            else device
        self.model = model.to(self.device).eval()
        # A copy, so the caller's model keeps its own post-process settings object.
        post = copy.copy(self.model.postprocessor)
        post.score_thr = float(score_thr)
        self.model.postprocessor = post
        self.class_names = list(class_names)
        self.img_size = int(img_size)
        self.score_thr = float(score_thr)
        self.model_name = str(getattr(model, "name", type(model).__name__))

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, *, device: str = "cpu",
                        img_size: int | None = None, score_thr: float = 0.3,
                        resample: str = "auto",
                        input_spacing_mm: float | None = None) -> Predictor:
        """Load a meddet checkpoint; ``img_size`` defaults to the size it was trained at.

        The target pixel size of spacing-aware resampling is the checkpoint's
        ``input_spacing_mm``, scaled by ``trained size / img_size`` when ``img_size`` differs
        (so the input still covers the field of view it covered in training).
        ``input_spacing_mm`` given here replaces the record (at the trained size), e.g. for a
        checkpoint written before pixel sizes were recorded.

        Raises:
            MedDetError: unreadable or incompatible checkpoint, bad options.
        """
        from meddet.engine.checkpoint import SPACING_KEY, build_model_from_checkpoint

        dev = resolve_device(device)
        model, meta = build_model_from_checkpoint(checkpoint, dev)
        size = int(img_size or meta["img_size"])
        spacing = input_spacing_mm if input_spacing_mm is not None else meta.get(SPACING_KEY)
        if spacing is not None:
            spacing = float(spacing) * int(meta["img_size"]) / size
        pred = cls(model, meta["class_names"], img_size=size, device=dev, score_thr=score_thr,
                   resample=resample, input_spacing_mm=spacing)
        pred.model_name = str(meta.get("model_name", pred.model_name))
        return pred

    def set_resample(self, mode: str) -> None:
        """Choose how slices are brought to the network input (:data:`RESAMPLE_MODES`).

        Raises:
            MedDetError: an unknown mode, or ``"spacing"`` for a model that does not record
                the pixel size it was trained at.
        """
        if mode not in RESAMPLE_MODES:
            raise MedDetError(f"--resample must be one of {', '.join(RESAMPLE_MODES)}, got "
                              f"{mode!r}")
        if mode == "spacing" and self.input_spacing_mm is None:
            raise MedDetError("--resample spacing needs the pixel size the model was trained at, "
                              "and this model does not record it (input_spacing_mm); use "
                              "--resample fixed, or retrain on data that records pixel_mm")
        self.resample = mode

    def resample_factors(self, shape: tuple[int, int],
                         spacing: tuple[float, float] | None) -> tuple[float, float] | None:
        """Input pixels per image pixel ``(along x, along y)`` of spacing-aware resampling, or
        ``None`` when the slice is resized to the input size instead (``resample="fixed"``, or
        the slice's or the model's pixel size unknown).

        A slice that would not fit the input at the trained pixel size is shrunk until it does
        (both factors alike), so its pixels end up larger than the trained ones.
        """
        if self.resample == "fixed" or spacing is None or self.input_spacing_mm is None:
            return None
        row_mm, col_mm = (float(v) for v in spacing)
        if not (np.isfinite(row_mm) and np.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
            return None  # a degenerate header (e.g. a zero voxel size): nothing to trust
        fx, fy = col_mm / self.input_spacing_mm, row_mm / self.input_spacing_mm
        h, w = shape
        fit = min(1.0, self.img_size / max(w * fx, h * fy))
        return fx * fit, fy * fit

    def prepare(self, arr: np.ndarray, spacing: tuple[float, float] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Pre-process one ``[H, W]`` image: ``(FloatTensor[3, S, S], meta)``.

        Args:
            arr: the image in any intensity units.
            spacing: ``(row_mm, col_mm)`` pixel spacing, or ``None`` when unknown.

        Returns:
            The input tensor and ``{"scale", "orig_size", "resample"}``; ``resample`` says what
            was done: ``{"mode": "fixed", "factor"}`` or ``{"mode": "spacing", "from_mm",
            "to_mm", "factor"}`` (per axis, rows then columns). After spacing-aware resampling
            the meta also has ``xy_scale`` and ``image_size``: the model reports boxes in
            resampled pixels (``scale`` 1) and :meth:`predict_prepared` maps them back per axis.

        Raises:
            MedDetError: the array cannot be normalised (e.g. not 2-D, NaN values).
        """
        from meddet.data import preprocess
        from meddet.data.transforms import normalize_intensity, resize_pad, to_input

        arr = np.asarray(arr, dtype=np.float32)
        orig = tuple(int(v) for v in arr.shape)
        factors = self.resample_factors(arr.shape, spacing) if arr.ndim == 2 else None
        if factors is None:
            tensor, scale = preprocess(arr, self.img_size)
            return tensor, {"scale": float(scale), "orig_size": orig,
                            "resample": {"mode": "fixed", "factor": round(float(scale), 4)}}
        h, w = orig
        nw, nh = max(1, round(w * factors[0])), max(1, round(h * factors[1]))
        img = normalize_intensity(arr)
        if (nw, nh) != (w, h):
            # The fixed-size path's bilinear filter (anti-aliased when shrinking).
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR),
                             dtype=np.float32)
        out, _ = resize_pad(img, self.img_size, 1.0)
        sx, sy = nw / w, nh / h  # the factors applied, after rounding to whole pixels
        assert spacing is not None
        return to_input(out), {
            "scale": 1.0, "orig_size": (nh, nw), "xy_scale": (sx, sy), "image_size": orig,
            "resample": {"mode": "spacing", "from_mm": [float(v) for v in spacing],
                         "to_mm": [round(float(spacing[0]) / sy, 4),
                                   round(float(spacing[1]) / sx, 4)],
                         "factor": [round(sy, 4), round(sx, 4)]}}

    @torch.inference_mode()
    def predict_prepared(self, tensors: Sequence[torch.Tensor],
                         metas: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Detect on images already passed through :meth:`prepare` (see :meth:`predict_arrays`)."""
        if not tensors:
            return []
        images = torch.stack(list(tensors)).to(self.device, torch.float32)
        dets = self.model(images, list(metas))
        out = [{k: d[k].detach().cpu().numpy() for k in ("boxes", "scores", "labels")}
               for d in dets]
        for det, meta in zip(out, metas):
            if "xy_scale" in meta:  # resampled per axis: back to the image's own pixels
                sx, sy = meta["xy_scale"]
                h, w = meta["image_size"]
                boxes = det["boxes"] / np.array([sx, sy, sx, sy], dtype=np.float32)
                det["boxes"] = np.clip(boxes, 0, np.array([w, h, w, h], dtype=np.float32))
        return out

    def predict_arrays(self, arrays: Sequence[np.ndarray],
                       spacings: Sequence[tuple[float, float] | None] | None = None
                       ) -> list[dict[str, np.ndarray]]:
        """Detect on a batch of 2-D images.

        Args:
            arrays: ``[H_i, W_i]`` images in any intensity units (sizes may differ).
            spacings: per image ``(row_mm, col_mm)`` or ``None``; default all unknown (every
                image resized to the input size).

        Returns:
            Per image ``{"boxes": float32 [K, 4] xyxy in that image's pixels, "scores": [K],
            "labels": int64 [K]}``, by descending score.
        """
        spacings = list(spacings) if spacings is not None else [None] * len(arrays)
        prepared = [self.prepare(arr, sp) for arr, sp in zip(arrays, spacings)]
        return self.predict_prepared([t for t, _ in prepared], [m for _, m in prepared])

    def describe_resample(self) -> str:
        """One line saying how slices are brought to the network input."""
        fixed = f"resized so that the long side is {self.img_size} px"
        if self.resample == "fixed":
            return f"every image {fixed} (--resample fixed)"
        if self.input_spacing_mm is None:
            return (f"every image {fixed}: the model does not record the pixel size it was "
                    "trained at")
        return (f"slices with a known pixel spacing resampled to the model's "
                f"{self.input_spacing_mm:.3g} mm pixels (padded to {self.img_size} px, shrunk "
                f"to fit when larger); images without a spacing {fixed}")


@dataclass
class PredictSummary:
    """What a prediction run did.

    Attributes:
        out_dir: the output folder.
        inputs: discovered input sources (files, DICOM series).
        images: images / slices predicted on.
        skipped: inputs or slices that were not used, each with its reason.
        findings: detections per class name (every class listed, zeros included).
        images_with_findings: images / slices with at least one detection.
        notes: non-fatal remarks (e.g. a 4-D NIfTI of which the first volume was used), and
            how the slices were brought to the network input.
        resampled: images / slices per pre-processing mode (``"spacing"``: resampled to the
            model's pixel size; ``"fixed"``: resized to the input size).
    """

    out_dir: Path
    inputs: int = 0
    images: int = 0
    skipped: list[Skip] = field(default_factory=list)
    findings: dict[str, int] = field(default_factory=dict)
    images_with_findings: int = 0
    notes: list[str] = field(default_factory=list)
    resampled: dict[str, int] = field(default_factory=lambda: {"spacing": 0, "fixed": 0})

    @property
    def json_path(self) -> Path:
        return self.out_dir / "predictions.json"

    @property
    def csv_path(self) -> Path:
        return self.out_dir / "predictions.csv"

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the ``summary`` block of ``predictions.json``)."""
        return {
            "inputs": self.inputs,
            "images": self.images,
            "images_with_findings": self.images_with_findings,
            "findings": dict(self.findings),
            "skipped": len(self.skipped),
            "resampled": dict(self.resampled),
            "notes": list(self.notes),
        }


class _Names:
    """Hands out unique output stems (two inputs may share a file name in different folders)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, item: Slice) -> str:
        name = item.stem
        if name in self.used:
            digest = hashlib.sha1(f"{item.source}#{item.index}".encode()).hexdigest()[:8]
            name = f"{item.stem}_{digest}"
            while name in self.used:  # the same file given twice
                name = f"{name}x"
        self.used.add(name)
        return name


def _batches(predictor: Predictor, sources: Sequence[InputSource], slices: SliceSpec,
             batch_size: int, on_skip: Callable[[Skip], None], on_source: Callable[[], None]
             ) -> Iterator[list[tuple[Slice, torch.Tensor, dict[str, Any]]]]:
    """Read, pre-process and group slices; a slice that cannot be pre-processed is skipped."""
    batch: list[tuple[Slice, torch.Tensor, dict[str, Any]]] = []
    for source in sources:
        for item in iter_slices(source, slices):
            if not isinstance(item, Skip):
                try:
                    tensor, meta = predictor.prepare(item.array, item.spacing)
                except (MedDetError, ValueError) as exc:
                    item = Skip(item.source, f"cannot prepare the image: {exc}")
            if isinstance(item, Skip):
                on_skip(item)
                continue
            batch.append((item, tensor, meta))
            if len(batch) == batch_size:
                yield batch
                batch = []
        on_source()
    if batch:
        yield batch


def _round(values: Sequence[float], nd: int) -> list[float]:
    return [round(float(v), nd) for v in values]


def predict_inputs(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    slices: SliceSpec | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    on_skip: Callable[[Skip], None] | None = None,
    run_info: dict[str, Any] | None = None,
) -> PredictSummary:
    """Predict on every input and write overlays, ``predictions.json`` and ``predictions.csv``.

    Args:
        predictor: the model to run.
        inputs: files and folders (see :func:`meddet.inference.readers.discover_inputs`).
        out_dir: output folder (created if missing); overlays go to ``out_dir/overlays``.
        slices: which slices of volumes (NIfTI, DICOM series, multi-frame files) to use;
            default all.
        batch_size: images per forward pass.
        progress: called as ``progress(done_inputs, total_inputs)`` after each input (and once
            with ``done_inputs=0`` before the first).
        on_skip: called for every skipped input or slice, as it happens.
        run_info: extra JSON-safe fields for the header of ``predictions.json``.

    Returns:
        The :class:`PredictSummary`; its ``skipped`` list holds every reason.

    Raises:
        MedDetError: a missing input path, bad options, or an unwritable output folder.
    """
    if batch_size < 1:
        raise MedDetError(f"--batch-size must be >= 1, got {batch_size}")
    slices = slices or SliceSpec("all")
    sources = discover_inputs(inputs)
    out = Path(out_dir)
    overlay_dir = out / "overlays"
    try:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedDetError(f"cannot create output folder {overlay_dir}: {exc.strerror}") from exc

    summary = PredictSummary(out_dir=out, inputs=len(sources),
                             findings={name: 0 for name in predictor.class_names})
    names = _Names()
    done = 0

    def skip(item: Skip) -> None:
        summary.skipped.append(item)
        if on_skip is not None:
            on_skip(item)

    def source_done() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(sources))

    header = {
        "meddet_version": __version__,
        "model": predictor.model_name,
        "class_names": predictor.class_names,
        "img_size": predictor.img_size,
        "score_thr": predictor.score_thr,
        "resample": predictor.resample,
        "input_spacing_mm": predictor.input_spacing_mm,
        "preprocessing": predictor.describe_resample(),
        "box_format": "xyxy; 'box' in original pixels, 'box_mm' in millimetres from the "
                      "image's top-left corner (null when the pixel spacing is unknown)",
        **(run_info or {}),
    }
    if progress is not None:
        progress(0, len(sources))
    with ExitStack() as stack:
        jfh = stack.enter_context(atomic_open(summary.json_path, "w"))
        cfh = stack.enter_context(atomic_open(summary.csv_path, "w"))
        writer = csv.writer(cfh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        # predictions.json is streamed: the header, then one image record at a time, then the
        # skipped list and the summary; nothing accumulates in memory but the skip reasons.
        head = json.dumps(header, indent=2)
        jfh.write(head[:-2] + ',\n  "images": [')
        first = True
        for batch in _batches(predictor, sources, slices, batch_size, skip, source_done):
            dets = predictor.predict_prepared([t for _, t, _ in batch], [m for _, _, m in batch])
            for (item, _, meta), det in zip(batch, dets):
                record = _write_one(item, det, predictor.class_names, names.take(item),
                                    overlay_dir, writer, summary)
                record["resample"] = meta["resample"]
                summary.resampled[meta["resample"]["mode"]] += 1
                jfh.write(("\n    " if first else ",\n    ") + json.dumps(record))
                first = False
        summary.notes.append(_resample_note(predictor, summary.resampled))
        tail = {
            "skipped": [{"source": s.source, "reason": s.reason} for s in summary.skipped],
            "summary": summary.as_dict(),
        }
        jfh.write(("\n  ],\n" if not first else "],\n") + json.dumps(tail, indent=2)[2:] + "\n")
    return summary


def _resample_note(predictor: Predictor, counts: dict[str, int]) -> str:
    """What the pre-processing did, in one line for the summary."""
    parts = []
    if counts["spacing"]:
        parts.append(f"{counts['spacing']} slice(s) resampled from their pixel spacing to the "
                     f"model's {predictor.input_spacing_mm:.3g} mm pixels")
    if counts["fixed"]:
        why = "--resample fixed" if predictor.resample == "fixed" else \
            "no pixel size recorded in the model" if predictor.input_spacing_mm is None else \
            "no pixel spacing in the input"
        parts.append(f"{counts['fixed']} image(s) resized so that the long side is "
                     f"{predictor.img_size} px ({why})")
    return "; ".join(parts) if parts else f"pre-processing: {predictor.describe_resample()}"


def _write_one(item: Slice, det: dict[str, np.ndarray], class_names: list[str], name: str,
               overlay_dir: Path, writer: Any, summary: PredictSummary) -> dict[str, Any]:
    """Write one overlay and its CSV rows; update the summary; return the JSON record."""
    boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    overlay = f"{name}.png"
    atomic_write_bytes(overlay_dir / overlay, render_overlay(item.array, boxes, scores, labels,
                                                             class_names))
    summary.images += 1
    summary.notes.extend(n for n in item.notes if n not in summary.notes)
    if len(boxes):
        summary.images_with_findings += 1
    mm = None
    if item.spacing is not None:
        row_mm, col_mm = item.spacing
        mm = np.array([col_mm, row_mm, col_mm, row_mm], dtype=np.float64)
    detections = []
    for box, score, label in zip(boxes, scores, labels):
        cls_name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(label)
        summary.findings[cls_name] = summary.findings.get(cls_name, 0) + 1
        box_mm = _round(box * mm, 2) if mm is not None else None
        detections.append({"class": cls_name, "label": int(label),
                           "score": round(float(score), 4), "box": _round(box, 2),
                           "box_mm": box_mm})
        writer.writerow([item.source, "" if item.index is None else item.index,
                         f"overlays/{overlay}", cls_name, f"{float(score):.4f}",
                         *_round(box, 2), *(box_mm if box_mm is not None else [""] * 4)])
    if not detections:
        # One row per image even without findings, so the CSV lists everything that was read.
        writer.writerow([item.source, "" if item.index is None else item.index,
                         f"overlays/{overlay}", "", "", *[""] * 8])
    h, w = item.array.shape
    return {
        "source": item.source,
        "slice_index": item.index,
        "overlay": f"overlays/{overlay}",
        "height": int(h),
        "width": int(w),
        "pixel_spacing_mm": list(item.spacing) if item.spacing is not None else None,
        "detections": detections,
    }
