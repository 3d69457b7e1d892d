"""The jobs of the command line as Python functions that return result objects.

:func:`train` (``meddet pretrain-teacher``), :func:`distill_student` (``meddet distill``; not
``distill``, which is the :mod:`meddet.distill` package),
:func:`evaluate` (``meddet eval``) and :class:`Detector` / :func:`predict` (``meddet predict``
on arrays and files), all importable from :mod:`meddet`::

    import meddet

    run = meddet.train("gfl_mbv2", data="data/cdh-synth", max_iters=100)
    print(run.best_mAP50, run.best)
    metrics = meddet.evaluate(run.best, data="data/cdh-synth").metrics
    for p in meddet.predict(run.best, ["scan.dcm"]):
        p.save("scan_boxes.png")

Configuration flows as in the command line: a built-in config or YAML file (default: the
recipe for the device, :func:`default_config`), with keyword overrides on top.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddet.errors import MedDetError

__all__ = [
    "DEFAULT_CONFIGS",
    "Detector",
    "Prediction",
    "TrainResult",
    "default_config",
    "distill_student",
    "evaluate",
    "load_predictor",
    "predict",
    "train",
]

#: What a training job trains with when no config is given, per device type: the recipe that
#: learns from random weights there. On CUDA it is the recipe the demo's GPU plan runs
#: (``meddet.demo.plan.PLANS["gpu"]``: cpu-crop's schedule, with data-loading workers).
DEFAULT_CONFIGS = {"cpu": "cpu-crop", "cuda": "cpu-crop"}

PathLike = str | os.PathLike


def default_config(device: str, overrides: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The built-in config for ``device`` (a resolved device string such as ``cpu`` or
    ``cuda:0``) when none is given, and ``overrides`` (nested config sections) with that
    device's defaults filled in where they are unset.

    Returns:
        ``(config name, overrides)``.
    """
    kind = "cuda" if device.startswith("cuda") else "cpu"
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in overrides.items()}
    if kind == "cuda" and out.get("data", {}).get("workers") is None:
        from meddet.demo.plan import PLANS

        out.setdefault("data", {})["workers"] = PLANS["gpu"].workers
    return DEFAULT_CONFIGS[kind], out


@dataclass
class TrainResult:
    """What a training job left behind.

    Attributes:
        run_dir: the run directory (config.yaml, results.csv, checkpoints, curves, log).
        best: ``best.pt`` (best val mAP50); ``last``: ``last.pt``; ``student``: the distilled
            student for evaluation and prediction (``None`` for :func:`train`).
        best_mAP50: the best validation mAP50 (``None`` when never evaluated).
        iters, seconds: iterations done and wall time.
        history: the rows of ``results.csv``.
        config: the config name or file the run started from.
    """

    run_dir: Path
    best: Path
    last: Path
    best_mAP50: float | None
    iters: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    config: str = ""
    student: Path | None = None

    @property
    def model(self) -> Path:
        """The checkpoint to evaluate or predict with: the student, else ``best.pt``."""
        return self.student if self.student is not None else self.best

    @classmethod
    def from_summary(cls, s: Mapping[str, Any], config: str) -> TrainResult:
        student = s.get("student")
        return cls(run_dir=Path(s["run_dir"]), best=Path(s["best"]), last=Path(s["last"]),
                   best_mAP50=s.get("best_mAP50"), iters=int(s["iters"]),
                   seconds=float(s["seconds"]), history=list(s.get("history") or []),
                   config=config, student=Path(student) if student else None)


def _training_config(config: str | None, device: str, overrides: dict[str, Any]) -> tuple:
    from meddet.config import load_config
    from meddet.device import auto_device

    overrides.setdefault("train", {})["device"] = auto_device(device)
    if config is None:
        config, overrides = default_config(overrides["train"]["device"], overrides)
    return load_config(config, overrides), config


def _overrides(data: PathLike | None, model: dict[str, Any], train: Mapping[str, Any],
               img_size: int | None) -> dict[str, Any]:
    known = {"epochs", "batch_size", "lr", "max_iters", "seed", "eval_every", "optimizer"}
    unknown = set(train) - known
    if unknown:
        raise MedDetError(f"unknown option {sorted(unknown)[0]!r}; use one of: "
                          f"{', '.join(sorted(known))} (or a config file for the rest)")
    return {"data": {"root": None if data is None else str(data), "img_size": img_size},
            "model": model, "train": dict(train)}


def _new_run(command: str, out: PathLike | None, name: str) -> tuple[Path, Any]:
    from meddet.runs import discard_if_failed, first_missing, new_run_dir, run_dir_target

    created = out is None or not Path(out).exists()
    made = first_missing(run_dir_target(command, out))
    run_dir = new_run_dir(command, out, name=name)
    return run_dir, discard_if_failed(run_dir, created=created, made=made,
                                      outputs=("config.yaml", "train.log", "tensorboard"))


def train(model: str = "gfl_mbv2", *, data: PathLike, config: str | None = None,
          out: PathLike | None = None, device: str = "auto", pretrained: str | None = None,
          img_size: int | None = None, tensorboard: bool | None = None,
          **train_options: Any) -> TrainResult:
    """Train one zoo detector (``meddet pretrain-teacher``).

    Args:
        model: a zoo name (``meddet.models.DETECTORS``), e.g. ``gfl_r50`` or ``gfl_mbv2``.
        data: a dataset folder (``meddet data synth`` / ``meddet data import`` layout).
        config: a built-in config or YAML file (default: :func:`default_config`).
        out: the run directory (default ``runs/pretrain-teacher/<model>``, numbered).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        pretrained: backbone initialisation (``auto``, ``imagenet``, ``none`` or a file).
        img_size: input size (multiple of 32, at least 64).
        tensorboard: TensorBoard events (``None``: when the package is installed).
        train_options: ``epochs``, ``batch_size``, ``lr``, ``max_iters``, ``seed``,
            ``eval_every``, ``optimizer`` (``train`` section of the config).

    Returns:
        :class:`TrainResult`.

    Raises:
        MedDetError: bad data, model name, option or device.
    """
    from meddet.engine.defaults import pretrain, require_split
    from meddet.engine.tensorboard import tensorboard_logging
    from meddet.models import DETECTORS
    from meddet.runs import write_run_config

    if model not in DETECTORS:
        raise MedDetError(f"unknown model {model!r}; use one of: {', '.join(DETECTORS)}")
    cfg, name = _training_config(config, device, _overrides(
        data, {"name": model, "pretrained": pretrained}, train_options, img_size))
    require_split(cfg.data.root, "train")
    require_split(cfg.data.root, "val")
    run_dir, guard = _new_run("pretrain-teacher", out, model)
    write_run_config(run_dir, cfg.model_dump(mode="json"), "pretrain-teacher")
    with guard, tensorboard_logging(tensorboard):
        return TrainResult.from_summary(pretrain(cfg, run_dir), name)


def distill_student(teachers: Sequence[PathLike], *, data: PathLike, student: str = "meddet",
            method: str = "meddet", config: str | None = None, out: PathLike | None = None,
            device: str = "auto", pretrained: str | None = None, img_size: int | None = None,
            tensorboard: bool | None = None, **train_options: Any) -> TrainResult:
    """Distil ``student`` from frozen ``teachers`` (``meddet distill``).

    Args:
        teachers: teacher checkpoints from :func:`train` (the paper: GFL R50, R101, R152).
        data: a dataset folder.
        student: the student's zoo name.
        method: ``meddet`` (AFA + LWFF + AATM), ``mgd``, ``ld``, ``fgd`` or ``none``.
        config, out, device, pretrained, img_size, tensorboard, train_options: as for
            :func:`train` (``pretrained`` initialises the student's backbone).

    Returns:
        :class:`TrainResult` with ``student`` set (``student.pt``).

    Raises:
        MedDetError: bad teachers, data, method or option.
    """
    from meddet.distill.methods import get_method
    from meddet.distill.trainer import distill as run_distill
    from meddet.engine.defaults import require_split
    from meddet.engine.tensorboard import tensorboard_logging
    from meddet.runs import write_run_config

    overrides = _overrides(data, {"pretrained": pretrained}, train_options, img_size)
    overrides["distill"] = {"method": method, "student": student}
    cfg, name = _training_config(config, device, overrides)
    get_method(cfg.distill.method)
    require_split(cfg.data.root, "train")
    require_split(cfg.data.root, "val")
    run_dir, guard = _new_run("distill", out, cfg.distill.method)
    write_run_config(run_dir, cfg.model_dump(mode="json"), "distill")
    with guard, tensorboard_logging(tensorboard):
        summary = run_distill(cfg, run_dir, teachers=[str(t) for t in teachers])
    return TrainResult.from_summary(summary, name)


def evaluate(checkpoint: PathLike, *, data: PathLike, split: str = "test",
             device: str = "auto", **options: Any) -> Any:
    """COCO metrics of a checkpoint or ONNX export on a split (``meddet eval``).

    Returns:
        :class:`meddet.engine.evaluate.EvalResult` (``.metrics``: mAP, mAP50, mAP75, AR100,
        recall and per-class AP50; ``.save(folder)`` writes them).
    """
    from meddet.engine.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, data=data, split=split, device=device, **options)


def load_predictor(model: PathLike, *, device: str = "auto", img_size: int | None = None,
                   score_thr: float = 0.3) -> Any:
    """A :class:`meddet.inference.Predictor` for a checkpoint (``.pt``) or a model exported
    by ``meddet export --format onnx`` (``.onnx``, run by onnxruntime on the CPU).

    Raises:
        MedDetError: a missing or unreadable model, onnxruntime missing for an ``.onnx`` file.
    """
    from meddet.inference import Predictor

    path = Path(model)
    if path.suffix.lower() != ".onnx":
        return Predictor.from_checkpoint(path, device=device, img_size=img_size,
                                         score_thr=score_thr)
    from types import SimpleNamespace

    from meddet.engine.onnx_model import load_onnx_model

    onnx, meta = load_onnx_model(path, score_thr=score_thr)
    # The Predictor sets its threshold on a copy of the model's post-processor; the ONNX
    # model's numpy post-process already uses score_thr, so a plain record stands in for it.
    onnx.postprocessor = SimpleNamespace(score_thr=score_thr)
    size = int(img_size or meta["img_size"])
    if size != meta["img_size"]:
        raise MedDetError(f"--img-size {size}: {path} was exported at {meta['img_size']} px "
                          "and runs only at that size; drop --img-size or export again")
    pred = Predictor(onnx, meta["class_names"], img_size=size, device="cpu",
                     score_thr=score_thr)
    pred.model_name = meta["model_name"]
    return pred


@dataclass
class Prediction:
    """Detections on one image, able to draw and save themselves.

    Attributes:
        image: the ``[H, W]`` input in its own intensity units.
        boxes: ``float32 [K, 4]`` xyxy in the image's pixels, by descending score.
        scores: ``[K]`` in [0, 1]; ``labels``: ``[K]`` class indices into ``class_names``.
        source: where the image came from (a file name, or ``array i``).
    """

    image: np.ndarray = field(repr=False)
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str = ""

    def __len__(self) -> int:
        return int(len(self.scores))

    def to_dicts(self) -> list[dict[str, Any]]:
        """One ``{"class", "score", "box"}`` dict per detection (JSON-safe)."""
        return [{"class": self.class_names[int(lab)], "score": float(s),
                 "box": [float(v) for v in b]}
                for b, s, lab in zip(self.boxes, self.scores, self.labels)]

    def png(self) -> bytes:
        """The image with its boxes, class names and scores, as PNG bytes."""
        from meddet.inference.overlay import render_overlay

        return render_overlay(self.image, self.boxes, self.scores, self.labels,
                              self.class_names)

    def draw(self) -> Any:
        """The overlay as a ``PIL.Image`` (RGB)."""
        from PIL import Image

        return Image.open(io.BytesIO(self.png())).convert("RGB")

    def save(self, path: PathLike) -> Path:
        """Write the overlay PNG to ``path`` (atomically) and return the path."""
        from meddet._io import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.png())
        return path


class Detector:
    """A trained detector for images in memory or on disk.

    Args:
        model: a checkpoint (``.pt``) or an ONNX export (``.onnx``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        score_thr: minimum score of a reported detection.
        img_size: network input side (default: the model's).
    """

    def __init__(self, model: PathLike, *, device: str = "auto", score_thr: float = 0.3,
                 img_size: int | None = None) -> None:
        self.predictor = load_predictor(model, device=device, img_size=img_size,
                                        score_thr=score_thr)

    @property
    def class_names(self) -> list[str]:
        """Names indexed by label."""
        return list(self.predictor.class_names)

    def __call__(self, images: Iterable[np.ndarray] | np.ndarray) -> list[Prediction]:
        """Detect on ``[H, W]`` arrays (one array, or several of any sizes and units)."""
        arrays = [images] if isinstance(images, np.ndarray) and images.ndim == 2 \
            else list(images)
        dets = self.predictor.predict_arrays(arrays)
        return [Prediction(np.asarray(a), d["boxes"], d["scores"], d["labels"],
                           self.class_names, f"array {i}")
                for i, (a, d) in enumerate(zip(arrays, dets))]

    def predict_files(self, inputs: Sequence[PathLike], *, slices: str = "all",
                      batch_size: int = 4) -> list[Prediction]:
        """Detect on image files, DICOM files or series and NIfTI volumes (folders too);
        unreadable inputs are skipped as by ``meddet predict``.

        Raises:
            MedDetError: a missing input, or nothing readable in any of them.
        """
        from meddet.inference.readers import Slice, discover_inputs, iter_slices, parse_slices

        spec = parse_slices(slices)
        items = [item for src in discover_inputs(inputs) for item in iter_slices(src, spec)
                 if isinstance(item, Slice)]
        if not items:
            raise MedDetError(f"no image could be read from {', '.join(map(str, inputs))}")
        out: list[Prediction] = []
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            for item, p in zip(chunk, self([it.array for it in chunk])):
                p.source = item.source + (f" [{item.index}]" if item.index is not None else "")
                out.append(p)
        return out


def predict(model: PathLike, inputs: Sequence[PathLike] | np.ndarray, *, device: str = "auto",
            score_thr: float = 0.3, slices: str = "all") -> list[Prediction]:
    """Detect with ``model`` (``.pt`` or ``.onnx``) on files or folders, or on arrays.

    Returns:
        One :class:`Prediction` per image or slice; ``p.save("out.png")`` draws it.
    """
    det = Detector(model, device=device, score_thr=score_thr)
    if isinstance(inputs, np.ndarray) or (isinstance(inputs, list) and inputs
                                          and isinstance(inputs[0], np.ndarray)):
        return det(inputs)
    return det.predict_files(inputs, slices=slices)
