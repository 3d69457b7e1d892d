"""Export a trained detector to ONNX or TorchScript and check the export against PyTorch.

What the exported graph contains and returns
-------------------------------------------
Input ``images``: ``float32 [B, 3, S, S]``, the normalised network input (see
``meddet.deploy.preprocess``). The graph holds backbone, FPN, GFL head and every nmODE² block,
the latter as a lookup in its tabulated, π-periodic solution map (floor + gather, ~2e-6 from the
exact solve; ``ode="unrolled"`` writes the fixed-step solver out instead, numerically the same
as torchdiffeq on the same grid). It stops at the **raw per-level head outputs** -- ``cls_p3 .. cls_p7``
``[B, C, S/s, S/s]`` classification logits and ``reg_p3 .. reg_p7`` ``[B, 4 * (reg_max + 1),
S/s, S/s]`` distance-distribution logits for strides s = 8 .. 128 -- so that thresholds and NMS
stay adjustable at deployment and no data-dependent shapes enter the graph.
``meddet.deploy`` decodes them with numpy.

The graph's JSON description (class names, image size, strides, reg_max, post-process settings,
output names) is stored in the ONNX ``metadata_props`` under ``"meddet"`` (TorchScript: the
extra file ``meddet.json``).

The self-check
--------------
After writing, the file is loaded back and run on synthetic images. The raw outputs must match
the PyTorch model -- as it runs in ``meddet predict``, i.e. with the ODE solved by the default fused solver (bit-identical to torchdiffeq's rk4) --
within ``1e-4`` absolute, and the final detections (numpy post-process on the exported outputs
vs the PyTorch post-process) must agree: same classes, boxes within ``0.05`` px, scores within
``1e-4``. Detections are compared twice: with the model's own score threshold and with a
threshold of 0, which exercises the full top-k / NMS / max-per-image path even for a model
that finds nothing on a synthetic image.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meddet import __version__
from meddet._io import atomic_save, atomic_write_bytes
from meddet.errors import MedDetError
from meddet.geometry import check_img_size

__all__ = ["EXPORT_ODE", "FORMATS", "ExportReport", "quantize_int8", "export_checkpoint",
           "export_model", "synthetic_batch", "synthetic_image"]

FORMATS = ("onnx", "torchscript")
EXPORT_ODE = ("table", "unrolled")  # how nmODE² enters the graph (see _graph_nmode)
ONNX_OPSET = 17
RAW_ATOL = 1e-4  # the spec's tolerance on raw outputs
BOX_ATOL = 0.05  # px (original pixels); raw diffs of 1e-4 move boxes by ~1e-3 px
SCORE_ATOL = 1e-4


@dataclass
class DetectionCheck:
    """Agreement of final detections at one score threshold."""

    score_thr: float
    torch_count: int
    export_count: int
    matched: int
    max_box_diff: float
    max_score_diff: float
    ok: bool


@dataclass
class ExportReport:
    """What was exported and how the self-check went.

    Attributes:
        path: the written file.
        format: ``onnx`` or ``torchscript``.
        img_size: the fixed spatial input size ``S``.
        dynamic_batch: whether the batch dimension is symbolic.
        raw_max_abs_diff: largest absolute difference over all raw outputs.
        raw_ok: ``raw_max_abs_diff <= 1e-4``.
        detections: one :class:`DetectionCheck` per compared threshold.
        outputs: output names in order.
    """

    path: Path
    format: str
    img_size: int
    dynamic_batch: bool
    raw_max_abs_diff: float = float("nan")
    raw_ok: bool = False
    detections: list[DetectionCheck] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    checked: bool = False

    @property
    def ok(self) -> bool:
        """The self-check ran and everything agreed."""
        return self.checked and self.raw_ok and all(d.ok for d in self.detections)


class _RawOutputs(nn.Module):
    """Wraps a detector so that ``forward(images)`` returns the flat tuple of raw outputs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, cls_scores, bbox_preds = self.detector.forward_raw(images)
        return tuple(cls_scores) + tuple(bbox_preds)


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic ``float32 [size, size]`` test image with smooth structure and noise.

    Every pixel differs, so detections never tie exactly (ties would make NMS order
    implementation-dependent and the comparison meaningless).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.3 * np.sin(6.0 * xx + 2 * seed) * np.cos(4.0 * yy) + 0.2
    for _ in range(6):  # a few bright elliptical blobs, like discs on a sagittal slice
        cx, cy, rx, ry = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.9), *rng.uniform(0.03, 0.1, 2)
        img += np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
    img += 0.05 * rng.standard_normal((size, size))
    return (img * 1000).astype(np.float32)


def _nmode_modules(model: nn.Module) -> list[nn.Module]:
    from meddet.models.nmode import NmODE, NmODE2

    return [m for m in model.modules() if isinstance(m, (NmODE, NmODE2))]


@contextlib.contextmanager
def _graph_nmode(model: nn.Module, ode: str = "table") -> Iterator[None]:
    """Put every nmODE block into an exportable form, restoring it afterwards.

    ``ode="table"``: the interpolated solution table as floor/gather ops (~10 graph ops per
    block, ~2e-6 from the exact solve); ``ode="unrolled"``: the fixed-step solver unrolled
    (~150 elementwise ops per block, the same arithmetic as torchdiffeq).

    Raises:
        MedDetError: unknown ``ode``, or a block uses a solver without a fixed-step form
            (e.g. ``dopri5``).
    """
    from meddet.models.nmode import UNROLLED_METHODS

    if ode not in EXPORT_ODE:
        raise MedDetError(f"unknown nmODE export form {ode!r}; use one of: {', '.join(EXPORT_ODE)}")
    mods = _nmode_modules(model)
    for m in mods:
        if m.method not in UNROLLED_METHODS:
            raise MedDetError(
                f"the model's nmODE solver {m.method!r} has no fixed-step form to export; "
                f"export supports {', '.join(UNROLLED_METHODS)}")
    saved = [(m.unrolled, m.graph_table, m.adjoint) for m in mods]
    try:
        for m in mods:
            # adjoint only changes the backward pass; it must be off for the exported paths.
            m.unrolled, m.graph_table, m.adjoint = ode == "unrolled", ode == "table", False
            if ode == "table":
                # Build the table now: solving it inside a trace would record the solver.
                m._table(torch.zeros(1))
        yield
    finally:
        for m, (unrolled, graph_table, adjoint) in zip(mods, saved):
            m.unrolled, m.graph_table, m.adjoint = unrolled, graph_table, adjoint


def _describe(model: nn.Module, class_names: Sequence[str], img_size: int,
              output_names: dict[str, list[str]], model_name: str, dynamic_batch: bool
              ) -> dict[str, Any]:
    pp = model.postprocessor
    return {
        "meddet_version": __version__,
        "model_name": model_name,
        "class_names": list(class_names),
        "num_classes": int(model.num_classes),
        "img_size": int(img_size),
        "dynamic_batch": bool(dynamic_batch),
        "input": "images",
        "outputs": output_names,
        "output_kind": "raw per-level logits (before decoding and NMS)",
        "strides": [int(s) for s in model.strides],
        "reg_max": int(model.reg_max),
        "center_offset": float(model.center_offset),
        "anchor_scale": float(model.anchor_scale),
        "postprocess": {"score_thr": float(pp.score_thr), "nms_pre": int(pp.nms_pre),
                        "nms_iou": float(pp.nms_iou), "max_per_img": int(pp.max_per_img),
                        "min_box_size": float(pp.min_box_size)},
        "preprocess": {"clip_percentiles": [0.5, 99.5], "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "resize": "long side to img_size, "
                       "bilinear; pad bottom/right with 0 before standardisation"},
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    fmt: str = "onnx",
    img_size: int | None = None,
    dynamic_batch: bool = False,
    out: str | os.PathLike | None = None,
    check: bool = True,
    ode: str = "table",
) -> ExportReport:
    """Export the detector stored in a meddet checkpoint.

    Args:
        checkpoint: a ``.pt`` written by meddet.
        fmt: ``onnx`` or ``torchscript``.
        img_size: spatial input size (multiple of 32); default: the checkpoint's training size.
        dynamic_batch: make the batch dimension symbolic (ONNX; TorchScript always is).
        out: destination file; default next to the checkpoint (``best.pt`` → ``best.onnx`` or
            ``best.torchscript.pt``).
        check: run the self-check (see the module docstring).
        ode: how nmODE² enters the graph: ``table`` (default; interpolated solution table,
            ~10 ops per block) or ``unrolled`` (the fixed-step solver, ~150 ops per block).

    Raises:
        MedDetError: unreadable checkpoint, bad format or size, an nmODE solver without an
            unrolled form, or a missing optional dependency.
    """
    from meddet.engine.checkpoint import build_model_from_checkpoint

    model, meta = build_model_from_checkpoint(checkpoint, "cpu")
    size = int(img_size or meta.get("img_size") or 512)
    if out is None:
        ckpt = Path(checkpoint)
        out = ckpt.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")
    return export_model(model, meta["class_names"], fmt=fmt, img_size=size,
                        dynamic_batch=dynamic_batch, out=out, check=check,
                        model_name=str(meta.get("model_name", getattr(model, "name", "?"))),
                        ode=ode)


def export_model(
    model: nn.Module,
    class_names: Sequence[str],
    *,
    fmt: str,
    img_size: int,
    out: str | os.PathLike,
    dynamic_batch: bool = False,
    check: bool = True,
    model_name: str | None = None,
    ode: str = "table",
) -> ExportReport:
    """Export an in-memory :class:`~meddet.models.GFLDetector` (see :func:`export_checkpoint`).

    The model is exported on the CPU in eval mode; its nmODE settings are restored afterwards.
    """
    if fmt not in FORMATS:
        raise MedDetError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    check_img_size(img_size)
    model = model.to("cpu").eval()
    num_levels = len(model.strides)
    level_ids = [int(np.log2(s)) for s in model.strides]  # stride 8 → P3
    names = {"cls": [f"cls_p{i}" for i in level_ids], "reg": [f"reg_p{i}" for i in level_ids]}
    desc = _describe(model, class_names, img_size, names,
                     model_name or getattr(model, "name", "?"), dynamic_batch)
    out = Path(out)
    report = ExportReport(path=out, format=fmt, img_size=img_size, dynamic_batch=dynamic_batch,
                          outputs=names["cls"] + names["reg"])
    # Two different images when the batch is dynamic, so the check also covers batch > 1.
    batch = 2 if dynamic_batch else 1
    images, metas = synthetic_batch(img_size, batch)

    wrapper = _RawOutputs(model).eval()
    with _graph_nmode(model, ode), torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter and jit.trace announce their deprecation; the user cannot act on it.
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            _export_onnx(wrapper, images[:1], out, names, desc, dynamic_batch)
        else:
            traced = torch.jit.trace(wrapper, images[:1], check_trace=False)
            extra = {"meddet.json": json.dumps(desc)}
            atomic_save(out, lambda fh: torch.jit.save(traced, fh, _extra_files=extra))

    if check:
        _self_check(model, out, fmt, images, metas, num_levels, desc, report)
    return report


def synthetic_batch(img_size: int, batch: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``batch`` preprocessed :func:`synthetic_image` inputs for checks and calibration.

    Args:
        img_size: network input side in pixels.
        batch: number of images (image ``i`` uses seed ``i``).

    Returns:
        ``(images, metas)``: ``float32 [batch, 3, img_size, img_size]`` network inputs and,
        per image, ``{"scale", "orig_size": (h, w)}`` to map boxes back to the original.
    """
    from meddet.data import preprocess

    tensors, metas = [], []
    for i in range(batch):
        # Larger than the input so that the resize and the mapping back are exercised; square
        # so there is no padding (constant padding gives exactly tied scores).
        side = img_size + img_size // 2
        tensor, scale = preprocess(synthetic_image(side, seed=i), img_size)
        tensors.append(tensor)
        metas.append({"scale": float(scale), "orig_size": (side, side)})
    return torch.stack(tensors).float(), metas


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, out: Path,
                 names: dict[str, list[str]], desc: dict[str, Any], dynamic_batch: bool) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise MedDetError("ONNX export needs the onnx package: pip install 'meddet[onnx]'") from exc
    output_names = names["cls"] + names["reg"]
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n in ["images", *output_names]}
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        # The TorchScript-based exporter (dynamo=False) works offline without onnxscript and
        # handles the unrolled ODE loop as plain traced ops.
        torch.onnx.export(wrapper, (example,), str(tmp_path), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["images"],
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
        proto = onnx.load(str(tmp_path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "meddet", json.dumps(desc)
    proto.producer_name = "meddet"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    atomic_write_bytes(out, proto.SerializeToString())


def _run_exported(path: Path, fmt: str, images: torch.Tensor) -> list[np.ndarray]:
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MedDetError("the ONNX self-check needs onnxruntime: pip install "
                              "'meddet[onnx]' (or pass --no-check)") from exc
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {"images": images.numpy()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        loaded = torch.jit.load(str(path), map_location="cpu")
    # Without the profiling executor's warm-up runs, which only pay off for repeated calls.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return [t.numpy() for t in loaded(images)]


def _self_check(model: nn.Module, path: Path, fmt: str, images: torch.Tensor,
                metas: list[dict[str, Any]], num_levels: int, desc: dict[str, Any],
                report: ExportReport) -> None:
    from meddet import deploy

    # Reference: the model exactly as inference runs it (default ODE solver, not unrolled).
    with torch.no_grad():
        _, cls_t, reg_t = model.forward_raw(images)
    ref = [t.numpy() for t in list(cls_t) + list(reg_t)]
    outs = _run_exported(path, fmt, images)
    report.raw_max_abs_diff = float(max(np.abs(a - b).max() for a, b in zip(ref, outs)))
    report.raw_ok = report.raw_max_abs_diff <= RAW_ATOL
    cls_e, reg_e = outs[:num_levels], outs[num_levels:]
    img_shape = (int(images.shape[-2]), int(images.shape[-1]))
    base = model.postprocessor
    for thr in dict.fromkeys([float(base.score_thr), 0.0]):
        pp = copy.copy(base)
        pp.score_thr = thr
        model.postprocessor = pp
        try:
            with torch.no_grad():
                torch_det = model.postprocess(cls_t, reg_t, img_shape, metas)
        finally:
            model.postprocessor = base
        np_det = deploy.postprocess(
            cls_e, reg_e, strides=desc["strides"], img_shape=img_shape, reg_max=desc["reg_max"],
            score_thr=thr, nms_pre=int(base.nms_pre), nms_iou=float(base.nms_iou),
            max_per_img=int(base.max_per_img), min_box_size=float(base.min_box_size),
            center_offset=desc["center_offset"],
            anchor_scale=desc["anchor_scale"], metas=metas)
        report.detections.append(_compare_detections(torch_det, np_det, thr))
    report.checked = True


def _compare_detections(torch_det: list[dict[str, torch.Tensor]],
                        np_det: list[dict[str, np.ndarray]], thr: float) -> DetectionCheck:
    """Match detections one to one (same class, close box and score).

    A detection may stay unmatched only when its score is within ``SCORE_ATOL`` of the cut-off
    (the lowest kept score, which is near the score threshold or at the ``max_per_img`` cut):
    there, a difference in the last float bits legitimately decides which of two near-equal
    candidates is kept.
    """
    t_count = e_count = matched = 0
    max_box = max_score = 0.0
    ok = True
    for td, nd in zip(torch_det, np_det):
        tb, ts, tl = (td[k].cpu().numpy() for k in ("boxes", "scores", "labels"))
        nb, ns, nl = nd["boxes"], nd["scores"], nd["labels"]
        t_count, e_count = t_count + len(tb), e_count + len(nb)
        used = np.zeros(len(nb), bool)
        unmatched_scores = []
        for i in range(len(tb)):
            cand = np.flatnonzero(~used & (nl == tl[i]) & (np.abs(ns - ts[i]) <= SCORE_ATOL))
            if cand.size:
                diffs = np.abs(nb[cand] - tb[i]).max(axis=1)
                j = cand[int(np.argmin(diffs))]
                if diffs.min() <= BOX_ATOL:
                    used[j] = True
                    matched += 1
                    max_box = max(max_box, float(diffs.min()))
                    max_score = max(max_score, float(abs(ns[j] - ts[i])))
                    continue
            unmatched_scores.append(float(ts[i]))
        unmatched_scores += [float(s) for s in ns[~used]]
        lasts = [float(v[-1]) for v in (ts, ns) if len(v)]
        lowest = min(lasts) if lasts else thr
        if any(s > lowest + SCORE_ATOL for s in unmatched_scores):
            ok = False
    return DetectionCheck(score_thr=thr, torch_count=t_count, export_count=e_count,
                          matched=matched, max_box_diff=max_box, max_score_diff=max_score, ok=ok)


def quantize_int8(fp32: str | os.PathLike, out: str | os.PathLike,
                  calibration: Sequence[np.ndarray]) -> Path:
    """Static int8 post-training quantization of an exported ONNX model (onnxruntime).

    QDQ format, convolutions only, per-channel int8 weights and uint8 activations whose ranges
    are calibrated on ``calibration`` (each ``float32 [1, 3, S, S]``, pre-processed like the
    network input). nmODE², the head's GroupNorms and the output scales stay float32: wrapping
    the ODE's element-wise chain in Q/DQ pairs is slow to calibrate and ruins its accuracy.

    Args:
        fp32: the ``.onnx`` written by :func:`export_model` (its metadata is kept).
        out: destination of the quantized model (written atomically).
        calibration: calibration inputs; real images of the target data give the best ranges.

    Returns:
        ``Path(out)``.

    Raises:
        MedDetError: onnxruntime missing or no calibration input.
    """
    import logging

    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:
        raise MedDetError("int8 quantization needs onnxruntime: pip install 'meddet[onnx]'") \
            from exc
    if not len(calibration):
        raise MedDetError("int8 quantization needs at least one calibration image")
    calib = [np.ascontiguousarray(x, dtype=np.float32) for x in calibration]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._it, None)
            return None if x is None else {"images": x}

    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        tmp_path = Path(tmp) / "model_int8.onnx"
        # The quantizer logs one root-logger warning per conv whose bias the exporter folded
        # into a Constant node; harmless and unactionable, so logging is muted while it runs.
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(fp32), str(tmp_path), _Reader(),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                                op_types_to_quantize=["Conv"])
        finally:
            logging.disable(logging.NOTSET)
        atomic_write_bytes(out, tmp_path.read_bytes())
    return out
