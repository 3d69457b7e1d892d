"""`meddet eval`: COCO metrics of a checkpoint (optionally on noisy images) or of a results file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from meddet.cli._common import check_output_path, emit_json, human_console
from meddet.errors import MedDetError

COMMAND = "eval"


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, (int, float)) and v < 0) else f"{v:.4f}"


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Overall and per-class metrics as a rich table."""
    from meddet.engine.evaluator import METRIC_KEYS, METRIC_LABELS, RECALL_LABEL

    table = Table(title=title)
    table.add_column("class")
    for col in (*(METRIC_LABELS[k] for k in METRIC_KEYS), "GT boxes"):
        table.add_column(col, justify="right")
    for name, m in metrics["per_class"].items():
        table.add_row(name, *(_fmt(m[k]) for k in METRIC_KEYS), str(m["num_gt"]))
    total = sum(m["num_gt"] for m in metrics["per_class"].values())
    table.add_row("[bold]all[/]", *(_fmt(metrics[k]) for k in METRIC_KEYS), str(total))
    agn = metrics.get("class_agnostic")
    if agn is not None:
        table.add_row("[dim]any class[/]", _fmt(agn["mAP"]), _fmt(agn["mAP50"]), "", "",
                      _fmt(agn["recall"]), str(total))
    table.caption = (f"{RECALL_LABEL}: share of all GT boxes matched at IoU 0.5 among each "
                     "image's top 100 detections (classes pooled); AR100: COCO's average "
                     "recall over classes and IoU 0.5:0.95"
                     + ("; any class: the same detections matched whatever their class "
                        "(objects found, classes ignored)" if agn is not None else ""))
    return table


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
    device: str = typer.Option("auto", "--device",
                               help="auto (cuda when available, else cpu), cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise (reproducible corruption)."),
) -> None:
    """Evaluate a checkpoint or a COCO results file with pycocotools (bbox).

    Prints mAP, mAP50, mAP75, AR100 and recall@.5 (overall and per class) and writes
    metrics.json, predictions.json, pr_curve.png and confusion_matrix.png to the run directory.
    """
    from meddet.engine.evaluate import NOISE_AND_SWEEP, evaluate_checkpoint, evaluate_predictions
    from meddet.runs import new_run_dir

    con = human_console(json_dest)
    check_output_path(json_dest)
    if (checkpoint is None) == (predictions is None):
        raise MedDetError("pass either a CHECKPOINT or --predictions PRED.json (exactly one)")
    if noise and noise_sweep:
        raise MedDetError(NOISE_AND_SWEEP)
    if predictions is not None and (noise or noise_sweep):
        raise MedDetError("--noise/--noise-sweep need a CHECKPOINT: a results file is already made")

    if predictions is not None:
        result = evaluate_predictions(predictions, data=data, split=split, img_size=img_size,
                                      score_thr=score_thr)
        title = f"{predictions} on {data}, split {split}"
    else:
        result = evaluate_checkpoint(checkpoint, data=data, split=split, img_size=img_size,
                                     score_thr=score_thr, noise=noise, noise_sweep=noise_sweep,
                                     batch_size=batch_size, workers=workers, device=device,
                                     seed=seed)
        title = f"{result.model_name} ({checkpoint}) on {data}, split {split}" + \
            (f", noise {noise}" if noise else "")
    # The run directory is made only once the evaluation has succeeded: a failed one leaves none.
    out_dir = new_run_dir(COMMAND, out)
    files = result.save(out_dir)
    con.print(metrics_table(result.metrics, escape(title)))
    if result.noise_sweep is not None:
        con.print(sweep_table(result.noise_sweep, result.sweep_kind))
    con.print(escape(f"wrote {', '.join(files)} to {out_dir}"))
    emit_json(result.to_dict(), json_dest)


def sweep_table(rows: list[dict[str, Any]], kind: str | None) -> Table:
    """The rows of a noise sweep (clean first) as a rich table."""
    from meddet.engine.evaluator import RECALL_LABEL

    table = Table(title=f"robustness to {kind} noise")
    table.add_column("noise")
    for col in ("mAP", "mAP50", RECALL_LABEL):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["noise"], _fmt(r["mAP"]), _fmt(r["mAP50"]), _fmt(r["recall"]))
    return table
