"""`meddet predict`: detect on PNG/JPEG/TIFF, DICOM files or series and NIfTI volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meddet.cli._common import console
from meddet.errors import MedDetError

# Skipped inputs printed one by one before the rest are only counted.
_MAX_SKIP_LINES = 20


def predict(
    checkpoint: Annotated[Path, typer.Argument(
        help="A meddet checkpoint (.pt) or a model exported by `meddet export --format onnx` "
        "(.onnx, run with onnxruntime on the CPU).")],
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files (PNG, JPEG, TIFF), DICOM files, NIfTI volumes (.nii, .nii.gz), or "
        "folders of these (a folder of DICOM slices is read as a series).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: a new runs/predict/expN).")] = None,
    score_thr: Annotated[float, typer.Option(
        "--score-thr", help="Minimum detection score.")] = 0.3,
    img_size: Annotated[int | None, typer.Option(
        "--img-size", help="Network input size (default: the checkpoint's).")] = None,
    slices: Annotated[str, typer.Option(
        "--slices", help="Volumes: mid, all, or 0-based indices like 8,10,12 (sagittal slices "
        "of NIfTI; slices of a DICOM series; ignored for 2-D images).")] = "all",
    device: Annotated[str, typer.Option("--device", help="auto (cuda when available, else "
                                        "cpu), cpu, cuda or cuda:N; an .onnx model runs on "
                                        "the CPU.")] = "auto",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Images per forward pass.")] = 4,
    resample: Annotated[str, typer.Option(
        "--resample", help="auto: resample slices with a known pixel spacing (NIfTI, DICOM) to "
        "the pixel size the model was trained at, when the checkpoint records it; spacing: "
        "require that; fixed: resize every image so its long side is the input size.")
    ] = "auto",
) -> None:
    """Detect disc herniations and write overlays, predictions.json and predictions.csv."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from meddet.api import load_predictor
    from meddet.inference import predict_inputs
    from meddet.inference.readers import discover_inputs, parse_slices
    from meddet.runs import (
        discard_if_failed,
        first_missing,
        new_run_dir,
        run_dir_target,
        write_run_config,
    )

    spec = parse_slices(slices)
    if batch_size < 1:
        raise MedDetError(f"--batch-size must be >= 1, got {batch_size}")
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise MedDetError(f"input {missing[0]} does not exist")
    if not discover_inputs(inputs):
        raise MedDetError(f"no image, DICOM or NIfTI file in {', '.join(map(str, inputs))}; "
                          "predict reads .png .jpg .jpeg .tif .tiff .dcm .nii .nii.gz (and "
                          "DICOM files without a suffix)")
    predictor = load_predictor(checkpoint, device=device, img_size=img_size,
                               score_thr=score_thr)
    predictor.set_resample(resample)
    created = out is None or not out.exists()
    made = first_missing(run_dir_target("predict", out))
    run_dir = new_run_dir("predict", out)
    settings = {"checkpoint": str(checkpoint), "score_thr": score_thr,
                "img_size": predictor.img_size, "slices": slices,
                "device": str(predictor.device), "batch_size": batch_size, "resample": resample}
    write_run_config(run_dir, {"predict": settings}, "predict")

    shown = 0

    with Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("inputs"), TimeRemainingColumn(), console=console,
                  transient=False) as bar:
        task = bar.add_task("predict", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def on_skip(item) -> None:
            nonlocal shown
            shown += 1
            if shown <= _MAX_SKIP_LINES:
                bar.console.print(f"[yellow]skipped[/] {escape(item.source)}: {escape(item.reason)}",
                                  markup=True, highlight=False, soft_wrap=True)

        summary = predict_inputs(predictor, inputs, run_dir, slices=spec,
                                 batch_size=batch_size, progress=progress, on_skip=on_skip,
                                 run_info={"checkpoint": checkpoint.name})

    if summary.images == 0:
        # Nothing was predicted: take back the (empty) outputs instead of leaving them behind.
        first = summary.skipped[0] if summary.skipped else None
        why = f"; first reason: {first.source}: {first.reason}" if first else ""
        with discard_if_failed(run_dir, created=created, made=made,
                               outputs=("config.yaml", "overlays", summary.json_path.name,
                                        summary.csv_path.name)):
            raise MedDetError(f"no image could be read from the {summary.inputs} input(s){why}")
    _print_summary(summary)


def _print_summary(summary) -> None:
    from rich.markup import escape
    from rich.table import Table

    skipped = summary.skipped
    if len(skipped) > _MAX_SKIP_LINES:
        console.print(f"[yellow]... and {len(skipped) - _MAX_SKIP_LINES} more skipped "
                      "(all listed in predictions.json)[/]")
    table = Table(title="meddet predict", show_header=False, title_justify="left")
    table.add_column("item")
    table.add_column("value", overflow="fold")  # paths are folded, never cut with an ellipsis
    table.add_row("inputs", str(summary.inputs))
    table.add_row("images read", str(summary.images))
    table.add_row("images with findings", str(summary.images_with_findings))
    for name, count in summary.findings.items():
        table.add_row(f"findings: {escape(name)}", str(count))
    table.add_row("skipped", str(len(skipped)))
    for reason, count in _reason_counts(skipped):
        table.add_row(f"  {escape(reason)}", str(count))
    for note in summary.notes:
        table.add_row("note", escape(note))
    table.add_row("outputs", escape(str(summary.out_dir)))
    console.print(table)


def _reason_counts(skipped) -> list[tuple[str, int]]:
    """Skip reasons grouped by their kind (the text before the first colon)."""
    counts: dict[str, int] = {}
    for item in skipped:
        kind = item.reason.split(":", 1)[0].split("(", 1)[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])
