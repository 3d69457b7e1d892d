"""An exported ONNX model (``meddet export``, fp32 or int8) behind the detector's eval API, so
that :func:`~meddet.engine.evaluator.predict_dataset` and ``meddet eval`` run it unchanged
(onnxruntime on the CPU, the numpy post-process of :mod:`meddet.deploy`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from meddet.errors import MedDetError

__all__ = ["OnnxModel", "load_onnx_model"]


class OnnxModel(torch.nn.Module):
    """An exported model (:class:`meddet.deploy.OnnxDetector`) behind the detector's eval API.

    ``forward(images [B,3,H,W], targets)`` returns, per image, ``{"boxes": [K,4] xyxy in
    original pixels (when ``targets`` carry ``scale`` and ``orig_size``), "scores": [K],
    "labels": [K]}`` like :class:`~meddet.models.GFLDetector` in eval mode, so
    :func:`~meddet.engine.evaluator.predict_dataset` runs it unchanged.
    """

    def __init__(self, detector: Any) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, targets: Any = None) -> list[dict[str, torch.Tensor]]:
        metas = None
        if targets is not None:
            metas = [{"scale": float(t["scale"]),
                      "orig_size": tuple(int(v) for v in t["orig_size"])} for t in targets]
        x = images.cpu().numpy()
        # One image per run: an export without --dynamic-batch takes batch 1 only.
        dets = [self.detector.detect(x[i:i + 1], metas[i:i + 1] if metas else None)[0]
                for i in range(x.shape[0])]
        return [{"boxes": torch.from_numpy(d["boxes"]).float(),
                 "scores": torch.from_numpy(d["scores"]).float(),
                 "labels": torch.from_numpy(d["labels"]).long()} for d in dets]


def load_onnx_model(path: str | os.PathLike, *, score_thr: float = 0.05
                    ) -> tuple[OnnxModel, dict[str, Any]]:
    """An ``.onnx`` file from ``meddet export`` (fp32 or int8) as an evaluable model.

    Args:
        path: the exported model.
        score_thr: the post-process score threshold (replaces the exported one).

    Returns:
        ``(model, meta)`` with ``meta`` = ``{"img_size", "class_names", "model_name"}``
        (``model_name`` ends in `` (onnx)``).

    Raises:
        MedDetError: the file is missing, is not a meddet export, or onnxruntime is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise MedDetError(f"model {path} does not exist")
    need_ort = "evaluating an .onnx model needs onnxruntime: pip install 'meddet[onnx]'"
    try:
        from meddet.deploy import OnnxDetector

        det = OnnxDetector(path, score_thr=score_thr)
    except ImportError as exc:
        raise MedDetError(need_ort) from exc
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        raise MedDetError(f"cannot load {path} as a meddet ONNX model: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from exc
    meta = {"img_size": det.img_size, "class_names": det.class_names,
            "model_name": f"{det.meta.get('model_name', '?')} (onnx)"}
    return OnnxModel(det), meta
