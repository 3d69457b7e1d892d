"""`meddet report`: one finding per disc level for a sagittal series (Markdown, JSON, DICOM SR)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from meddet.cli._common import console


def report(
    series: Annotated[Path, typer.Argument(
        help="One sagittal series: a folder of DICOM slices or a NIfTI volume (.nii, .nii.gz).")],
    model: Annotated[Path, typer.Option("--model", help="A meddet checkpoint (.pt).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: a new runs/report/expN).")] = None,
    first_level: Annotated[str | None, typer.Option(
        "--first-level", help="Name of the most cranial disc found (default C2/3: the series "
        "is assumed to start at the skull base).")] = None,
    lateral_mm: Annotated[float, typer.Option(
        "--lateral-mm", help="Detect on the slices within this distance of the middle slice.")]
    = 8.0,
    min_slices: Annotated[int, typer.Option(
        "--min-slices", help="Slices a disc must be detected on to be named.")] = 2,
    score_thr: Annotated[float, typer.Option(
        "--score-thr", help="Minimum score of a detection the report uses.")] = 0.3,
    protrusion_thr: Annotated[float, typer.Option(
        "--protrusion-thr", help="A disc is called protrusion when its protrusion score reaches "
        "this on any slice.")] = 0.5,
    sr: Annotated[bool, typer.Option(
        "--sr/--no-sr", help="Write a DICOM Structured Report (DICOM input only).")] = True,
    sc: Annotated[bool, typer.Option(
        "--sc/--no-sc", help="Write the key images as DICOM Secondary Capture (DICOM input "
        "only).")] = True,
    img_size: Annotated[int | None, typer.Option(
        "--img-size", help="Network input size (default: the checkpoint's).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Report one finding per disc level (C2/3 ... C7/T1) of a sagittal series."""
    from rich.markup import escape
    from rich.table import Table

    from meddet.inference import Predictor
    from meddet.report import ReportSettings, load_series, report_series, write_report
    from meddet.runs import new_run_dir, write_run_config

    settings = ReportSettings(
        lateral_mm=lateral_mm, first_level=first_level or "C2/3",
        first_level_given=first_level is not None, min_slices=min_slices,
        positive_thr=protrusion_thr, score_thr=score_thr)
    # Everything that can fail on the user's input fails before the output folder exists.
    loaded = load_series(series)
    predictor = Predictor.from_checkpoint(model, device=device, img_size=img_size,
                                          score_thr=score_thr)
    result, loaded = report_series(predictor, loaded, settings)
    result.checkpoint = model.name
    created = out is None or not out.exists()
    run_dir = new_run_dir("report", out)
    try:
        files = write_report(result, loaded, run_dir, sr=sr, sc=sc)
        write_run_config(run_dir, {"report": {
            "series": str(series), "model": str(model), "first_level": settings.first_level,
            "first_level_given": settings.first_level_given, "lateral_mm": lateral_mm,
            "min_slices": min_slices, "score_thr": score_thr, "protrusion_thr": protrusion_thr,
            "sr": sr, "sc": sc, "img_size": predictor.img_size, "device": device}}, "report")
    except BaseException:
        if created:  # no half-made report folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    console.print(f"Level naming: {escape(settings.assumption)}", soft_wrap=True)
    table = Table(title=f"meddet report: {escape(str(series))}", title_justify="left")
    for col in ("level", "finding", "confidence", "key slice", "detected on slices"):
        table.add_column(col)
    for f in result.findings:
        table.add_row(f.level, escape(f.finding),
                      "" if f.confidence is None else f"{f.confidence:.2f}",
                      "" if f.key_slice is None else str(f.key_slice),
                      ", ".join(map(str, f.slices)))
    console.print(table)
    if result.set_aside:
        console.print(f"{len(result.set_aside)} detection group(s) not used for a level "
                      "(listed in report.md)")
    for note in result.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    written = [files.markdown, files.json] + ([files.sr] if files.sr else []) + \
        ([run_dir / "key_images"] if files.secondary_capture else [])
    console.print("outputs: " + ", ".join(escape(str(p)) for p in written), soft_wrap=True)
