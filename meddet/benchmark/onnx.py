"""The onnxruntime rows: export (and int8-quantize) a detector, then time session + post-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from meddet.errors import MedDetError

__all__ = ["export_onnx", "onnx_call"]


def export_onnx(model: nn.Module, img_size: int, out: Path, *, int8: bool = False) -> Path:
    """Raw-output ONNX of ``model`` in folder ``out`` (and its static int8 QDQ version).

    The int8 file is calibrated on one synthetic scan-like image and three random ones; its
    accuracy is not checked here (``meddet export --int8`` + ``meddet eval`` do that).

    Args:
        model: an eval-mode detector.
        img_size: square input side in pixels (the batch dimension stays dynamic).
        out: an existing folder; ``model.onnx`` (and ``model_int8.onnx``) are written there.
        int8: also quantize, and return the int8 file.

    Returns:
        Path of the file to time.

    Raises:
        MedDetError: onnxruntime is not installed.
    """
    from meddet.export import export_model

    try:
        import onnxruntime
    except ImportError as exc:
        raise MedDetError("--runtime onnxruntime needs onnxruntime: pip install "
                          "'meddet[onnx]'") from exc
    onnxruntime.set_default_logger_severity(3)  # quantizer sessions: same harmless warnings
    fp32 = out / "model.onnx"
    names = [f"class{i}" for i in range(int(model.num_classes))]
    export_model(model, names, fmt="onnx", img_size=img_size, out=fp32, dynamic_batch=True,
                 check=False)
    if not int8:
        return fp32
    from meddet.export import quantize_int8, synthetic_batch

    calib = [synthetic_batch(img_size, 1)[0].numpy()]
    calib += [torch.randn(1, 3, img_size, img_size).numpy() for _ in range(3)]
    q8 = out / "model_int8.onnx"
    quantize_int8(fp32, q8, calib)
    return q8


def onnx_call(path: Path, model: nn.Module, images: Tensor, threads: int) -> Callable[[], None]:
    """One timed unit: ``session.run`` on ``images`` plus :func:`meddet.deploy.postprocess`.

    Args:
        path: an ONNX file from :func:`export_onnx` (the session holds the graph afterwards,
            so the file may be deleted).
        model: the exported detector, for its strides and post-processing settings.
        images: ``float32 [B, 3, S, S]`` network input.
        threads: onnxruntime's ``intra_op_num_threads``.
    """
    import onnxruntime as ort

    from meddet import deploy

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the exporter's unused initializers are harmless warnings
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n_levels = len(model.strides)
    pp = model.postprocessor
    x = images.cpu().numpy()
    img_shape = (int(x.shape[-2]), int(x.shape[-1]))

    def call() -> None:
        outs = sess.run(None, {"images": x})
        deploy.postprocess(outs[:n_levels], outs[n_levels:], strides=model.strides,
                           img_shape=img_shape, reg_max=int(model.reg_max),
                           score_thr=float(pp.score_thr), nms_pre=int(pp.nms_pre),
                           nms_iou=float(pp.nms_iou), max_per_img=int(pp.max_per_img),
                           center_offset=float(model.center_offset),
                           anchor_scale=float(model.anchor_scale))

    return call
