"""TensorBoard logging of a training run: losses, learning rate, validation metrics and
predicted validation images, written to ``RUN_DIR/tensorboard`` (``results.csv`` stays).

Logging is on when the ``tensorboard`` package is installed and the environment variable
``MEDDET_TENSORBOARD`` is not ``0`` (the test suite sets it), unless a caller decides for the
run with :func:`tensorboard_logging` (``meddet pretrain-teacher`` and ``meddet distill`` do
for ``--tensorboard`` / ``--no-tensorboard``; ``--tensorboard`` without the package is an
error).
:func:`tensorboard_hook` is what :mod:`meddet.engine.defaults` registers on rank 0.

View with ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddet.engine.checkpoint import unwrap_model
from meddet.engine.events import HookBase
from meddet.errors import MedDetError

__all__ = ["LOG_DIR", "TensorBoardHook", "require_tensorboard", "tensorboard_available",
           "tensorboard_hook", "tensorboard_logging"]

#: Sub-folder of the run directory that holds the event files.
LOG_DIR = "tensorboard"
#: Validation metrics logged under ``val/`` (the columns of results.csv).
_VAL_KEYS = ("mAP", "mAP50", "mAP75", "AR100", "recall")

# None: log when the package is installed; True / False: set by tensorboard_logging().
_enabled: bool | None = None


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by ``torch.utils.tensorboard``) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def require_tensorboard(enabled: bool | None) -> None:
    """Check that logging asked for (``enabled`` is ``True``) can happen.

    Raises:
        MedDetError: ``enabled`` is ``True`` and the package is not installed.
    """
    if enabled and not tensorboard_available():
        raise MedDetError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or pip install 'meddet[tensorboard]')")


@contextlib.contextmanager
def tensorboard_logging(enabled: bool | None) -> Iterator[None]:
    """Switch TensorBoard logging on (``True``), off (``False``) or to "when installed"
    (``None``) for the training runs started inside the block.

    Raises:
        MedDetError: ``enabled`` is ``True`` and the package is not installed.
    """
    global _enabled
    require_tensorboard(enabled)
    old, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = old


class TensorBoardHook(HookBase):
    """Writes a run's scalars and a few predicted images as TensorBoard events.

    Every ``period`` iterations: the step's losses (``train/<key>``) and the learning rate
    (``train/lr``). Every epoch: the epoch's mean losses (``epoch/<key>``) and, when the
    epoch was evaluated, the validation metrics (``val/<key>``) and the predictions of the
    evaluated model (:attr:`~meddet.engine.trainer.Trainer.eval_model`) on the first
    ``num_images`` validation images (``val/predictions``). The x axis is the iteration.

    Args:
        log_dir: folder of the event files (created when training starts).
        dataset: validation images to draw predictions on (``None``: no images); items are
            ``(FloatTensor[3, S, S], target)`` as :class:`~meddet.data.CocoDetection` gives.
        class_names: names indexed by label, for the image captions.
        num_images: how many validation images to draw.
        period: iterations between two scalar writes.
    """

    def __init__(self, log_dir: str | Path, *, dataset: Any = None,
                 class_names: Sequence[str] = (), num_images: int = 4, period: int = 10) -> None:
        self.log_dir = Path(log_dir)
        self.dataset = dataset
        self.class_names = list(class_names)
        self.num_images = max(0, int(num_images))
        self.period = max(1, int(period))
        self.writer: Any = None

    def before_train(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run replaces the events written after its checkpoint.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=self.trainer.start_iter or None)

    def after_step(self) -> None:
        t = self.trainer
        step = t.iter + 1
        if step % self.period and step != t.max_iters:
            return
        for key, value in t.storage.latest.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        lr = t.storage.row.get("lr")
        if lr is not None:
            self.writer.add_scalar("train/lr", lr, step)

    def after_epoch(self) -> None:
        t = self.trainer
        st = t.storage
        for key, value in st.averages().items():
            self.writer.add_scalar(f"epoch/{key}", value, t.iter)
        evaluated = [k for k in _VAL_KEYS if st.row.get(k) is not None]
        for key in evaluated:
            self.writer.add_scalar(f"val/{key}", float(st.row[key]), t.iter)
        if evaluated and self.dataset is not None and self.num_images:
            self.writer.add_images("val/predictions", self._predictions(t), t.iter,
                                   dataformats="NHWC")
        self.writer.flush()

    @torch.inference_mode()
    def _predictions(self, t: Any) -> np.ndarray:
        """``[N, H, W, 3]`` uint8: the first validation images with the model's detections."""
        from PIL import Image

        from meddet.inference.overlay import render_overlay

        model = unwrap_model(t.eval_model)
        was_training = model.training
        model.eval()
        try:
            n = min(self.num_images, len(self.dataset))
            images = torch.stack([self.dataset[i][0] for i in range(n)])
            dets = model(images.to(t.device))  # boxes in input pixels (no scale given)
        finally:
            model.train(was_training)
        out = []
        for img, det in zip(images, dets):
            png = render_overlay(img[0].numpy(), det["boxes"].float().cpu().numpy(),
                                 det["scores"].float().cpu().numpy(),
                                 det["labels"].cpu().numpy(), self.class_names)
            out.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
        return np.stack(out)

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def tensorboard_hook(run_dir: str | Path, *, dataset: Any = None,
                     class_names: Sequence[str] = ()) -> TensorBoardHook | None:
    """The hook for a run in ``run_dir`` when logging is on (see the module docstring), else
    ``None``."""
    if _enabled is None:
        on = os.environ.get("MEDDET_TENSORBOARD", "1") != "0" and tensorboard_available()
    else:
        on = _enabled
    if not on:
        return None
    return TensorBoardHook(Path(run_dir) / LOG_DIR, dataset=dataset, class_names=class_names)
