"""`meddet eval`: COCO metrics of a checkpoint (optionally on noisy images) or of a results file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from meddet._io import atomic_write_json, atomic_write_text
from meddet.cli._common import check_output_path, emit_json, human_console
from meddet.errors import MedDetError

COMMAND = "eval"


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, (int, float)) and v < 0) else f"{v:.4f}"


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Overall and per-class metrics as a rich table."""
    table = Table(title=title)
    table.add_column("class")
    for col in ("mAP", "mAP50", "mAP75", "AR100", "recall", "GT boxes"):
        table.add_column(col, justify="right")
    for name, m in metrics["per_class"].items():
        table.add_row(name, *(_fmt(m[k]) for k in ("mAP", "mAP50", "mAP75", "AR100", "recall")),
                      str(m["num_gt"]))
    total = sum(m["num_gt"] for m in metrics["per_class"].values())
    table.add_row("[bold]all[/]", *(_fmt(metrics[k]) for k in ("mAP", "mAP50", "mAP75", "AR100",
                                                                "recall")), str(total))
    return table


def _parse_sweep(spec: str) -> tuple[str, list[float]]:
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


def _write_artifacts(out_dir: Path, ds: Any, results: list[dict], score_thr: float,
                     *, write_predictions: bool) -> None:
    from meddet.engine.evaluator import (
        confusion_matrix,
        pr_curves,
        run_cocoeval,
        summarize_cocoeval,
    )
    from meddet.engine.plots import plot_confusion_matrix, plot_pr_curves

    E = run_cocoeval(ds.coco, results, img_ids=list(ds.ids))
    curves = pr_curves(E, ds.class_names, ds.cat_ids)
    ap50 = {n: m["mAP50"] for n, m in summarize_cocoeval(E, ds.class_names,
                                                           ds.cat_ids)["per_class"].items()}
    plot_pr_curves(curves, ap50, out_dir / "pr_curve.png")
    cm = confusion_matrix(ds.coco, results, ds.cat_ids, iou_thr=0.5, score_thr=score_thr)
    plot_confusion_matrix(cm, ds.class_names, out_dir / "confusion_matrix.png", iou_thr=0.5,
                          score_thr=score_thr)
    if write_predictions:
        atomic_write_json(out_dir / "predictions.json", results, indent=None)


def evaluate(
    checkpoint: Path | None = typer.Argument(
        None, help="A meddet checkpoint (last.pt/best.pt) or an .onnx model from `meddet "
        "export` (fp32 or --int8; evaluated with onnxruntime)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder."),
    split: str = typer.Option("test", "--split", help="Split to evaluate."),
    img_size: int | None = typer.Option(None, "--img-size",
                                           help="Input size (default: the checkpoint's)."),
    score_thr: float = typer.Option(0.05, "--score-thr", min=0.0, max=1.0,
                                    help="Keep detections scoring at least this."),
    noise: str | None = typer.Option(None, "--noise", help="Corrupt the images: rician:SNR, "
                                        "ghosting:STRENGTH, gaussian:SIGMA, comma-joined."),
    noise_sweep: str | None = typer.Option(None, "--noise-sweep", metavar="KIND:L1,L2,...",
                                              help="Evaluate clean and at each level, e.g. "
                                              "rician:40,20,10,5."),
    predictions: Path | None = typer.Option(None, "--predictions",
                                               help="Evaluate this COCO results file instead."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default runs/eval/exp*)."),
    json_dest: str | None = typer.Option(None, "--json", metavar="PATH|-",
                                            help="Write the metrics as JSON ('-' = stdout)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader workers."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise (reproducible corruption)."),
) -> None:
    """Evaluate a checkpoint or a COCO results file with pycocotools (bbox).

    Prints mAP, mAP50, mAP75, AR@100 and recall (overall and per class) and writes
    metrics.json, predictions.json, pr_curve.png and confusion_matrix.png to the run directory.
    """
    from meddet.engine.defaults import require_split

    con = human_console(json_dest)
    check_output_path(json_dest)
    if (checkpoint is None) == (predictions is None):
        raise MedDetError("pass either a CHECKPOINT or --predictions PRED.json (exactly one)")
    if noise and noise_sweep:
        raise MedDetError("--noise and --noise-sweep cannot be combined; the sweep sets the noise")
    if predictions is not None and (noise or noise_sweep):
        raise MedDetError("--noise/--noise-sweep need a CHECKPOINT: a results file is already made")
    require_split(data, split)

    if predictions is not None:
        result = _eval_predictions(predictions, data, split, img_size, score_thr, out, con)
    else:
        result = _eval_checkpoint(checkpoint, data, split, img_size=img_size, score_thr=score_thr,
                                  noise=noise, noise_sweep=noise_sweep, out=out,
                                  batch_size=batch_size, workers=workers, device=device,
                                  seed=seed, con=con)
    emit_json(result, json_dest)


def _eval_predictions(predictions: Path, data: Path, split: str, img_size: int | None,
                      score_thr: float, out: Path | None, con: Any) -> dict[str, Any]:
    from meddet.data import CocoDetection
    from meddet.engine.defaults import require_boxes
    from meddet.engine.evaluator import evaluate_coco, validate_results
    from meddet.runs import new_run_dir

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
    result = {**metrics, "checkpoint": None, "split": split, "predictions": str(predictions)}
    out_dir = new_run_dir(COMMAND, out)
    _write_artifacts(out_dir, ds, results, score_thr, write_predictions=False)
    atomic_write_json(out_dir / "metrics.json", result)
    con.print(metrics_table(metrics, escape(f"{predictions} on {data}, split {split}")))
    con.print(escape(f"wrote metrics.json, pr_curve.png, confusion_matrix.png to {out_dir}"))
    return result


def _eval_checkpoint(checkpoint: Path, data: Path, split: str, *, img_size: int | None,
                     score_thr: float, noise: str | None, noise_sweep: str | None,
                     out: Path | None, batch_size: int, workers: int, device: str, seed: int,
                     con: Any) -> dict[str, Any]:
    from meddet.data import CocoDetection
    from meddet.data.noise import parse_noise_spec
    from meddet.device import resolve_device
    from meddet.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
    from meddet.engine.defaults import require_boxes
    from meddet.engine.evaluator import evaluate_coco, predict_dataset
    from meddet.runs import new_run_dir

    dev = resolve_device(device)
    if Path(checkpoint).suffix.lower() == ".onnx":
        if dev.type != "cpu":
            raise MedDetError("an .onnx model is evaluated with onnxruntime on the CPU; use "
                              "--device cpu")
        model, meta = _onnx_model(Path(checkpoint), score_thr)
    else:
        ckpt = load_checkpoint(checkpoint)
        model, meta = build_model_from_checkpoint(ckpt, dev, score_thr=score_thr)
        del ckpt
    size = img_size or int(meta["img_size"])
    sweep_kind, sweep_levels = _parse_sweep(noise_sweep) if noise_sweep else (None, [])
    # Validate every noise spec before spending time on inference.
    specs: list[tuple[str | None, float | None]] = [(noise, None)]
    specs += [(f"{sweep_kind}:{_level_str(v)}", v) for v in sweep_levels]
    corrupts = {s: parse_noise_spec(s) for s, _ in specs if s}

    def run(spec: str | None) -> tuple[Any, list[dict], dict[str, Any]]:
        ds = CocoDetection(data, split, img_size=size, train=False,
                           corrupt=corrupts.get(spec) if spec else None, seed=seed)
        require_boxes(ds, "evaluate on")
        if list(ds.class_names) != list(meta["class_names"]):
            raise MedDetError(f"checkpoint classes {meta['class_names']} do not match the "
                              f"dataset's categories {list(ds.class_names)}; evaluate on the "
                              "dataset the model was trained for")
        results = predict_dataset(model, ds, device=dev, batch_size=batch_size, workers=workers,
                                  score_thr=score_thr)
        return ds, results, evaluate_coco(ds.coco, results, ds.class_names, ds.cat_ids,
                                          img_ids=list(ds.ids))

    ds, results, metrics = run(noise)
    result: dict[str, Any] = {**metrics, "checkpoint": str(checkpoint), "split": split}
    if noise:
        result["noise"] = noise
    out_dir = new_run_dir(COMMAND, out)
    _write_artifacts(out_dir, ds, results, score_thr, write_predictions=True)
    title = f"{meta['model_name']} ({checkpoint}) on {data}, split {split}" + \
        (f", noise {noise}" if noise else "")
    con.print(metrics_table(metrics, escape(title)))

    if sweep_kind is not None:
        rows = [{"noise": "clean", "level": None,
                 **{k: metrics[k] for k in ("mAP", "mAP50", "recall")}}]
        for spec, level in specs[1:]:
            _, _, m = run(spec)
            rows.append({"noise": spec, "level": level,
                         **{k: m[k] for k in ("mAP", "mAP50", "recall")}})
        result["noise_sweep"] = rows
        _write_sweep(out_dir, rows, sweep_kind, con)
    atomic_write_json(out_dir / "metrics.json", result)
    con.print(escape("wrote metrics.json, predictions.json, pr_curve.png, confusion_matrix.png"
                     + (", noise_sweep.csv, noise_sweep.png" if sweep_kind else "")
                     + f" to {out_dir}"))
    return result


def _onnx_model(path: Path, score_thr: float) -> tuple[Any, dict[str, Any]]:
    """An ONNX file from ``meddet export`` (fp32 or int8) as an evaluable model + its meta."""
    import torch

    class _OnnxAsModel(torch.nn.Module):
        """An exported model (``meddet.deploy.OnnxDetector``) behind the detector's eval API."""

        def __init__(self, detector: Any) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, images: torch.Tensor, targets: Any = None
                    ) -> list[dict[str, torch.Tensor]]:
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

    if not path.is_file():
        raise MedDetError(f"model {path} does not exist")
    try:
        from meddet.deploy import OnnxDetector
    except ImportError as exc:
        raise MedDetError("evaluating an .onnx model needs onnxruntime: pip install "
                          "'meddet[onnx]'") from exc
    try:
        det = OnnxDetector(path, score_thr=score_thr)
    except ImportError as exc:
        raise MedDetError("evaluating an .onnx model needs onnxruntime: pip install "
                          "'meddet[onnx]'") from exc
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        raise MedDetError(f"cannot load {path} as a meddet ONNX model: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from exc
    meta = {"img_size": det.img_size, "class_names": det.class_names,
            "model_name": f"{det.meta.get('model_name', '?')} (onnx)"}
    return _OnnxAsModel(det), meta


def _write_sweep(out_dir: Path, rows: list[dict[str, Any]], kind: str, con: Any) -> None:
    from meddet.engine.plots import plot_noise_sweep

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["noise", "level", "mAP", "mAP50", "recall"],
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in w.fieldnames})
    atomic_write_text(out_dir / "noise_sweep.csv", buf.getvalue())
    plot_noise_sweep(rows, out_dir / "noise_sweep.png", kind=kind)
    table = Table(title=f"robustness to {kind} noise")
    table.add_column("noise")
    for col in ("mAP", "mAP50", "recall"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["noise"], _fmt(r["mAP"]), _fmt(r["mAP50"]), _fmt(r["recall"]))
    con.print(table)
