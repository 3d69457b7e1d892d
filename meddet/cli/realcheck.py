"""`meddet check-real`: score a checkpoint on the hand-labelled real disc slices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meddet.cli._common import check_output_path, emit_json, human_console
from meddet.errors import MedDetError

COMMAND = "check-real"
#: Where the two volumes come from (the labels check their sha256).
VOLUMES_SOURCE = ("sct_t2_cervical.nii.gz and sct_t1w_cervical.nii.gz are the T2- and "
                  "T1-weighted cervical volumes of spinalcordtoolbox's public testing data "
                  "(github.com/spinalcordtoolbox/sct_testing_data, commit af4c7e87; MIT "
                  "licence, NeuroPoly)")
VOLUMES = ("sct_t2_cervical.nii.gz", "sct_t1w_cervical.nii.gz")


def check_volumes(volumes: Path | None) -> Path:
    """The folder holding both real volumes (``volumes`` or the default), checked before any
    output is made.

    Raises:
        MedDetError: the folder or a volume is missing; the message says where they come from.
    """
    from meddet.engine.realcheck import default_volumes_dir

    folder = volumes if volumes is not None else default_volumes_dir()
    missing = [v for v in VOLUMES if not (folder / v).is_file()]
    if missing:
        raise MedDetError(f"real MRI volume {missing[0]} not found in {folder}; {VOLUMES_SOURCE}: "
                          "put them in a folder and pass --volumes DIR (or set "
                          "MEDDET_SHARED_DATA to the folder that holds real-mri/)")
    return folder


def check_real(
    checkpoint: Annotated[Path | None, typer.Argument(
        help="A meddet checkpoint (.pt); not needed with --labels-only.")] = None,
    volumes: Annotated[Path | None, typer.Option(
        "--volumes", help="Folder holding sct_t2_cervical.nii.gz and sct_t1w_cervical.nii.gz, "
        "the T2- and T1-weighted cervical volumes of spinalcordtoolbox's public testing data "
        "(github.com/spinalcordtoolbox/sct_testing_data, MIT licence) (default: "
        "$MEDDET_SHARED_DATA/real-mri, else ../shared/data/real-mri).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: a new runs/check-real/expN).")] = None,
    img_size: Annotated[int | None, typer.Option(
        "--img-size", help="Network input size (default: the checkpoint's).")] = None,
    top_k: Annotated[int, typer.Option(
        "--top-k", min=1, help="Detections per slice that count for recall.")] = 10,
    score_thr: Annotated[float, typer.Option(
        "--score-thr", min=0.0, max=1.0, help="Minimum detection score.")] = 0.05,
    device: Annotated[str, typer.Option("--device", help="auto (cuda when available, else "
                                        "cpu), cpu, cuda or cuda:N.")] = "auto",
    labels_only: Annotated[bool, typer.Option(
        "--labels-only", help="Only draw the labelled slices (one figure per volume).")] = False,
    json_dest: Annotated[str | None, typer.Option(
        "--json", metavar="PATH|-", help="Write the metrics as JSON ('-' = stdout).")] = None,
    resample: Annotated[str, typer.Option(
        "--resample", help="auto: resample the 1 mm slices to the pixel size the model was "
        "trained at when the checkpoint records it; spacing: require that; fixed: resize each "
        "slice so its long side is the input size.")] = "auto",
    input_spacing: Annotated[float | None, typer.Option(
        "--input-spacing", min=0.001, metavar="MM", help="The pixel size (mm per input pixel) "
        "the model was trained at, for a checkpoint that does not record it (it replaces the "
        "record): the median of the training images' pixel_mm x image side / input size.")
    ] = None,
) -> None:
    """Find real intervertebral discs: recall among each slice's top-k detections and AP50.

    Runs the checkpoint on nine hand-labelled sagittal slices of two real cervical MRI volumes
    (32 discs) and scores it class-agnostically: per volume, the discs found at IoU 0.1, 0.3
    and 0.5, AP50, and the median predicted / labelled box height and width. Writes
    metrics.json and one overlay per slice (labels green, the top-k detections red) to the
    output folder.
    """
    from rich.markup import escape
    from rich.table import Table

    from meddet._io import atomic_write_json
    from meddet.device import resolve_device
    from meddet.engine.realcheck import evaluate_real_discs, render_real_disc_labels
    from meddet.runs import discard_if_failed, first_missing, new_run_dir, run_dir_target

    con = human_console(json_dest)
    check_output_path(json_dest)
    if labels_only:
        if checkpoint is not None:
            raise MedDetError("--labels-only draws the labels without a model; drop CHECKPOINT")
    elif checkpoint is None:
        raise MedDetError("pass a CHECKPOINT to evaluate (or --labels-only to draw the labels)")
    elif not checkpoint.is_file():
        raise MedDetError(f"checkpoint {checkpoint} does not exist")
    volumes = check_volumes(volumes)
    dev = str(resolve_device(device))
    created = out is None or not out.exists()
    made = first_missing(run_dir_target(COMMAND, out))
    run_dir = new_run_dir(COMMAND, out)
    # A checkpoint or volume found unusable while reading leaves no empty run folder behind.
    with discard_if_failed(run_dir, created=created, made=made, outputs=("overlays",)):
        if labels_only:
            for path in render_real_disc_labels(run_dir, volumes_dir=volumes):
                con.print(escape(f"wrote {path}"))
            return
        result = evaluate_real_discs(checkpoint, volumes_dir=volumes, img_size=img_size,
                                     device=dev, top_k=top_k, score_thr=score_thr,
                                     out_dir=run_dir / "overlays", resample=resample,
                                     input_spacing_mm=input_spacing)
    metrics = result.as_dict()
    atomic_write_json(run_dir / "metrics.json", metrics)

    thrs = list(result.found_at)
    table = Table(title=escape(f"real discs: {checkpoint}, input {result.img_size}"))
    for col in ("volume", "slice", "discs", *(f"found IoU {t:g}" for t in thrs)):
        table.add_column(col, justify="left" if col == "volume" else "right")
    for row in result.per_slice:
        table.add_row(escape(_short(row["volume"])), str(row["index"]), str(row["discs"]),
                      *(str(n) for n in row["found_at"].values()))
    con.print(table)
    con.print(_volume_table(result, top_k))
    for line in _edge_lines(result):
        con.print(escape(line))
    con.print(escape(f"pre-processing: {result.preprocessing}"))
    con.print(f"recall@IoU0.5 (top {top_k}): {result.recall:.3f} ({result.found}/"
              f"{result.discs})   AP50: {result.ap50:.3f}")
    con.print(escape(f"wrote metrics.json and {len(result.overlays)} overlays to {run_dir}"))
    emit_json(metrics, json_dest)


def _short(volume: str) -> str:
    """``sct_t2_cervical.nii.gz`` -> ``t2_cervical``: narrow enough for an 80-column table."""
    return volume.removesuffix(".gz").removesuffix(".nii").removeprefix("sct_")


def _volume_table(result, top_k: int):
    """Per volume: found discs at each IoU, AP50, median predicted / labelled box size."""
    from rich.markup import escape
    from rich.table import Table

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table = Table(title=f"per volume: discs found among each slice's top {top_k} at IoU "
                  f"{' / '.join(f'{t:g}' for t in result.found_at)}; box height and width: "
                  "median predicted / labelled")
    for col in ("volume", *(f"IoU {t:g}" for t in result.found_at), "AP50", "height",
                "width"):
        table.add_column(col, justify="left" if col == "volume" else "right")
    for v in result.volumes:
        table.add_row(escape(_short(v.volume)),
                      *(f"{n}/{v.discs}" for n in v.found.values()), f"{v.ap50:.3f}",
                      ratio(v.height_ratio), ratio(v.width_ratio))
    return table


def _edge_lines(result) -> list[str]:
    """Per volume, the median pixels by which the matched boxes reach beyond the labels."""
    return [f"{_short(v.volume)}: box edges beyond the label, median px (- inside): "
            + ", ".join(f"{side} {px:+.1f}" for side, px in v.edge_offsets.items())
            for v in result.volumes if v.edge_offsets is not None]
