"""Evaluate a checkpoint, an exported ONNX model or a COCO results file: one call, one result.

:func:`evaluate_checkpoint` is the whole recipe behind ``meddet eval CHECKPOINT``: load the
model (a meddet checkpoint, or an ``.onnx`` file from ``meddet export`` run with onnxruntime),
read the split (optionally corrupted with noise), predict, score with pycocotools, optionally
repeat at every level of a noise sweep, and write the artefacts. :func:`evaluate_predictions`
does the same for a results file someone else made (``meddet eval --predictions``). Both
return an :class:`EvalResult`; :meth:`EvalResult.save` writes the run directory:

- ``metrics.json``: :meth:`EvalResult.to_dict`;
- ``predictions.json``: the detections scored (checkpoints only; COCO results format);
- ``pr_curve.png``, ``confusion_matrix.png`` (IoU 0.5, ``score_thr``);
- ``noise_sweep.csv``, ``noise_sweep.png``: with a noise sweep.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meddet._io import atomic_write_json, atomic_write_text
from meddet.engine.distributed import is_main_process
from meddet.engine.evaluator import (
    confusion_matrix,
    evaluate_coco,
    pr_curves,
    predict_dataset,
    run_cocoeval,
    summarize_cocoeval,
)
from meddet.engine.onnx_model import OnnxModel, load_onnx_model
from meddet.engine.plots import plot_confusion_matrix, plot_noise_sweep, plot_pr_curves
from meddet.errors import MedDetError

__all__ = ["EvalResult", "OnnxModel", "evaluate_checkpoint", "evaluate_model",
           "evaluate_predictions", "load_eval_model", "parse_noise_sweep"]

NOISE_AND_SWEEP = "--noise and --noise-sweep cannot be combined; the sweep sets the noise"

#: Metrics kept per row of a noise sweep (the columns of ``noise_sweep.csv`` after noise, level).
SWEEP_METRICS = ("mAP", "mAP50", "recall")


@dataclass
class EvalResult:
    """What one evaluation measured, and where its artefacts went.

    Attributes:
        metrics: :func:`~meddet.engine.evaluator.evaluate_coco` of the main run (clean, or under
            ``noise``): ``mAP``, ``mAP50``, ``mAP75``, ``AR100``, ``recall``, ``per_class``,
            ``num_images``.
        detections: the COCO results scored (``bbox`` xywh in original pixels).
        split: the dataset split evaluated.
        checkpoint: the model file evaluated (``None`` for a results file).
        predictions: the results file evaluated (``None`` for a model).
        model_name: the zoo name of the model (``"<name> (onnx)"`` for an ONNX file).
        noise: the ``noise`` spec of the main run, if any.
        noise_sweep: with a sweep, one row per run: ``{"noise": "clean" | spec, "level":
            float | None, "mAP", "mAP50", "recall"}``, clean first.
        sweep_kind: the noise kind swept (e.g. ``rician``).
        score_thr: detections below this were dropped; also the confusion matrix's threshold.
        files: artefact name -> path, filled by :meth:`save`.
        dataset: the :class:`~meddet.data.CocoDetection` holding the ground truth.
    """

    metrics: dict[str, Any]
    detections: list[dict]
    split: str
    checkpoint: str | None = None
    predictions: str | None = None
    model_name: str | None = None
    noise: str | None = None
    noise_sweep: list[dict[str, Any]] | None = None
    sweep_kind: str | None = None
    score_thr: float = 0.05
    files: dict[str, Path] = field(default_factory=dict)
    dataset: Any = field(default=None, repr=False, compare=False)

    @property
    def per_class(self) -> dict[str, dict[str, Any]]:
        """``{class name: {"mAP", "mAP50", "mAP75", "AR100", "recall", "num_gt"}}``."""
        return self.metrics["per_class"]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (and of ``meddet eval --json``)."""
        out: dict[str, Any] = {**self.metrics, "checkpoint": self.checkpoint, "split": self.split}
        if self.predictions is not None:
            out["predictions"] = self.predictions
        if self.noise:
            out["noise"] = self.noise
        if self.noise_sweep is not None:
            out["noise_sweep"] = self.noise_sweep
        return out

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write the artefacts (module docstring) into ``out_dir`` (created if missing).

        Returns:
            :attr:`files`, in the order ``meddet eval`` lists them.

        Raises:
            MedDetError: the folder cannot be created.
        """
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MedDetError(f"cannot create output folder {out}: {exc.strerror}") from exc
        ds = self.dataset
        files = {"metrics.json": out / "metrics.json"}
        if self.predictions is None:  # a results file is already on disk
            files["predictions.json"] = out / "predictions.json"
        files["pr_curve.png"] = out / "pr_curve.png"
        files["confusion_matrix.png"] = out / "confusion_matrix.png"

        E = run_cocoeval(ds.coco, self.detections, img_ids=list(ds.ids))
        ap50 = {n: m["mAP50"] for n, m in summarize_cocoeval(E, ds.class_names,
                                                               ds.cat_ids)["per_class"].items()}
        plot_pr_curves(pr_curves(E, ds.class_names, ds.cat_ids), ap50, files["pr_curve.png"])
        cm = confusion_matrix(ds.coco, self.detections, ds.cat_ids, iou_thr=0.5,
                              score_thr=self.score_thr)
        plot_confusion_matrix(cm, ds.class_names, files["confusion_matrix.png"], iou_thr=0.5,
                              score_thr=self.score_thr)
        if "predictions.json" in files:
            atomic_write_json(files["predictions.json"], self.detections, indent=None)
        if self.noise_sweep is not None:
            files["noise_sweep.csv"] = out / "noise_sweep.csv"
            files["noise_sweep.png"] = out / "noise_sweep.png"
            _write_sweep(self.noise_sweep, self.sweep_kind or "noise", files["noise_sweep.csv"],
                         files["noise_sweep.png"])
        atomic_write_json(files["metrics.json"], self.to_dict())
        self.files = files
        return files


def parse_noise_sweep(spec: str) -> tuple[str, list[float]]:
    """``"rician:40,20,10"`` -> ``("rician", [40.0, 20.0, 10.0])``.

    Raises:
        MedDetError: not ``KIND:L1,L2,...`` or a level that is not a number.
    """
    kind, sep, levels = spec.partition(":")
    if not sep or not kind or not levels:
        raise MedDetError(f"--noise-sweep {spec!r} must look like KIND:L1,L2,... "
                          "(e.g. rician:40,20,10,5)")
    try:
        values = [float(v) for v in levels.split(",")]
    except ValueError as exc:
        raise MedDetError(f"--noise-sweep {spec!r}: levels must be numbers, e.g. rician:40,20,10,5"
                          ) from exc
    return kind.strip(), values


def _level_str(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def load_eval_model(path: str | os.PathLike, device: torch.device,
                    *, score_thr: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A checkpoint or an ``.onnx`` export, ready for :func:`predict_dataset`.

    Args:
        path: a meddet checkpoint, or an ``.onnx`` file from ``meddet export`` (fp32 or int8).
        device: where a checkpoint's model goes; an ONNX model runs on the CPU only.
        score_thr: the post-process score threshold.

    Returns:
        ``(model in eval mode, meta)``; ``meta`` has at least ``img_size``, ``class_names``
        and ``model_name``.

    Raises:
        MedDetError: a missing or unreadable file, ONNX on a GPU, or no onnxruntime.
    """
    from meddet.engine.checkpoint import build_model_from_checkpoint, load_checkpoint

    if Path(path).suffix.lower() == ".onnx":
        if device.type != "cpu":
            raise MedDetError("an .onnx model is evaluated with onnxruntime on the CPU; use "
                              "--device cpu")
        return load_onnx_model(Path(path), score_thr=score_thr)
    return build_model_from_checkpoint(load_checkpoint(path), device, score_thr=score_thr)


def evaluate_model(model: torch.nn.Module, dataset: Any, *, device: torch.device | str = "cpu",
                   batch_size: int = 8, workers: int = 0, score_thr: float = 0.0,
                   channels_last: bool = False) -> tuple[list[dict], dict[str, Any] | None]:
    """Predict ``dataset`` with ``model`` and score the detections with pycocotools.

    Under torchrun every rank predicts its share and receives all detections; the metrics are
    computed on the main process only (``None`` on the other ranks), since COCOeval over the
    gathered list would give every rank the same numbers.

    Args:
        model: a detector (or an :class:`~meddet.engine.onnx_model.OnnxModel`).
        dataset: a :class:`~meddet.data.CocoDetection` (``train=False``).
        device, batch_size, workers, score_thr, channels_last: as in
            :func:`~meddet.engine.evaluator.predict_dataset`.

    Returns:
        ``(COCO results, evaluate_coco metrics or None)``.
    """
    results = predict_dataset(model, dataset, device=device, batch_size=batch_size,
                              workers=workers, score_thr=score_thr, channels_last=channels_last)
    if not is_main_process():
        return results, None
    return results, evaluate_coco(dataset.coco, results, dataset.class_names, dataset.cat_ids,
                                  img_ids=list(dataset.ids))


def evaluate_checkpoint(
    model_path: str | os.PathLike,
    *,
    data: str | os.PathLike,
    split: str = "test",
    img_size: int | None = None,
    score_thr: float = 0.05,
    noise: str | None = None,
    noise_sweep: str | None = None,
    batch_size: int = 8,
    workers: int = 0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> EvalResult:
    """COCO bbox metrics of a checkpoint or ONNX export on one split (``meddet eval``).

    Args:
        model_path: a meddet checkpoint (``last.pt``, ``best.pt``, ``student.pt``) or an
            ``.onnx`` file from ``meddet export`` (evaluated with onnxruntime on the CPU).
        data: the dataset folder (``images/<split>/``, ``annotations/<split>.json``).
        split: the split to evaluate.
        img_size: input side (multiple of 32); default the model's.
        score_thr: keep detections scoring at least this.
        noise: corrupt the images (:func:`meddet.data.noise.parse_noise_spec`), e.g.
            ``"rician:10"``.
        noise_sweep: ``KIND:L1,L2,...``: evaluate clean, then at each level (``EvalResult.
            noise_sweep``); cannot be combined with ``noise``.
        batch_size, workers: of the prediction DataLoader.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seed of the noise, so that a corrupted evaluation is reproducible.
        out_dir: when given, the artefacts are written there (:meth:`EvalResult.save`).

    Returns:
        The :class:`EvalResult` of the clean (or ``noise``) run, with the sweep rows.

    Raises:
        MedDetError: a bad dataset, model file, noise spec or device, a split without boxes, or
            a model trained for other classes than the dataset's.
    """
    from meddet.data.noise import parse_noise_spec
    from meddet.device import resolve_device
    from meddet.engine.defaults import require_split

    if noise and noise_sweep:
        raise MedDetError(NOISE_AND_SWEEP)
    require_split(data, split)
    dev = resolve_device(device)
    model, meta = load_eval_model(model_path, dev, score_thr=score_thr)
    size = img_size or int(meta["img_size"])
    sweep_kind, levels = parse_noise_sweep(noise_sweep) if noise_sweep else (None, [])
    sweep = [(f"{sweep_kind}:{_level_str(v)}", v) for v in levels]
    # Validate every noise spec before spending time on inference.
    corrupts = {s: parse_noise_spec(s) for s in (noise, *(s for s, _ in sweep)) if s}

    def run(spec: str | None) -> tuple[Any, list[dict], dict[str, Any]]:
        ds = _eval_dataset(data, split, size, meta["class_names"],
                           corrupt=corrupts.get(spec) if spec else None, seed=seed)
        results, metrics = evaluate_model(model, ds, device=dev, batch_size=batch_size,
                                          workers=workers, score_thr=score_thr)
        return ds, results, metrics

    ds, results, metrics = run(noise)
    rows = None
    if sweep_kind is not None:
        rows = [{"noise": "clean", "level": None, **{k: metrics[k] for k in SWEEP_METRICS}}]
        for spec, level in sweep:
            m = run(spec)[2]
            rows.append({"noise": spec, "level": level, **{k: m[k] for k in SWEEP_METRICS}})
    result = EvalResult(metrics=metrics, detections=results, split=split,
                        checkpoint=str(model_path), model_name=meta["model_name"],
                        noise=noise or None, noise_sweep=rows, sweep_kind=sweep_kind,
                        score_thr=score_thr, dataset=ds)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _eval_dataset(data: str | os.PathLike, split: str, size: int, class_names: list[str],
                  **kwargs: Any) -> Any:
    from meddet.data import CocoDetection
    from meddet.engine.defaults import require_boxes

    ds = CocoDetection(data, split, img_size=size, train=False, **kwargs)
    require_boxes(ds, "evaluate on")
    if list(ds.class_names) != list(class_names):
        raise MedDetError(f"checkpoint classes {class_names} do not match the dataset's "
                          f"categories {list(ds.class_names)}; evaluate on the dataset the "
                          "model was trained for")
    return ds


def evaluate_predictions(predictions: str | os.PathLike, *, data: str | os.PathLike,
                         split: str = "test", img_size: int | None = None,
                         score_thr: float = 0.05,
                         out_dir: str | os.PathLike | None = None) -> EvalResult:
    """COCO bbox metrics of a results file (``meddet eval --predictions``).

    Args:
        predictions: a JSON list of COCO detections (``image_id``, ``category_id``, ``bbox``
            ``[x, y, w, h]`` in original pixels, ``score``), e.g. a ``predictions.json``
            written by :func:`evaluate_checkpoint`.
        data, split: the ground truth.
        img_size: only used to open the dataset (default 256); boxes are in original pixels.
        score_thr: the confusion matrix's score threshold (the metrics use every detection).
        out_dir: when given, the artefacts are written there (no ``predictions.json``).

    Raises:
        MedDetError: the file is missing, unreadable or not valid COCO results for this split.
    """
    from meddet.data import CocoDetection
    from meddet.engine.defaults import require_boxes, require_split
    from meddet.engine.evaluator import validate_results

    require_split(data, split)
    try:
        results = json.loads(Path(predictions).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedDetError(f"predictions file {predictions} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedDetError(f"cannot read predictions {predictions}: {exc}".splitlines()[0]) from exc
    ds = CocoDetection(data, split, img_size=img_size or 256, train=False)
    require_boxes(ds, "evaluate on")
    validate_results(results, ds.coco, source=str(predictions))
    metrics = evaluate_coco(ds.coco, results, ds.class_names, ds.cat_ids, img_ids=list(ds.ids))
    result = EvalResult(metrics=metrics, detections=results, split=split,
                        predictions=str(predictions), score_thr=score_thr, dataset=ds)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _write_sweep(rows: list[dict[str, Any]], kind: str, csv_path: Path, png_path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["noise", "level", *SWEEP_METRICS], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in w.fieldnames})
    atomic_write_text(csv_path, buf.getvalue())
    plot_noise_sweep(rows, png_path, kind=kind)
