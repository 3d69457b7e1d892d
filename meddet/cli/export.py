"""`meddet export`: ONNX / TorchScript export with a self-check against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meddet.cli._common import console
from meddet.errors import MedDetError


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A meddet checkpoint (.pt).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")],
    img_size: Annotated[int | None, typer.Option(
        "--img-size", help="Fixed input size, a multiple of 32 (default: the checkpoint's "
        "training size).")] = None,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="Make the batch dimension symbolic.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output file (default: next to the checkpoint, .onnx or "
        ".torchscript.pt).")] = None,
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="Compare the export with PyTorch after writing it.")] = True,
    ode: Annotated[str, typer.Option(
        "--ode", help="How nmODE² enters the graph: table (interpolated solution table, "
        "~10 ops per block, fast) or unrolled (the fixed-step solver, ~150 ops).")] = "table",
    int8: Annotated[bool, typer.Option(
        "--int8", help="Also write a static int8 (QDQ, convolutions) ONNX model, calibrated "
        "on --calib-data; measure its accuracy with `meddet eval MODEL.int8.onnx`.")] = False,
    calib_data: Annotated[Path | None, typer.Option(
        "--calib-data", help="Dataset folder whose train split calibrates --int8.")] = None,
    calib_images: Annotated[int, typer.Option(
        "--calib-images", min=1, help="Calibration images for --int8.")] = 16,
) -> None:
    """Export a detector; the graph ends at the raw per-level outputs (see docs/deploy.md)."""
    from meddet.export import FORMATS, export_checkpoint

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise MedDetError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise MedDetError("--int8 needs --format onnx (onnxruntime quantizes ONNX models)")
    if int8 and calib_data is None:
        raise MedDetError("--int8 needs --calib-data DATASET: its train images calibrate the "
                          "int8 activation ranges")
    if int8:
        from meddet.engine.defaults import require_split

        require_split(calib_data, "train")
    with console.status(f"exporting to {fmt} ...", spinner="dots"):
        report = export_checkpoint(checkpoint, fmt=fmt, img_size=img_size,
                                   dynamic_batch=dynamic_batch, out=out, check=check,
                                   ode=ode)
    batch = "B" if dynamic_batch or fmt == "torchscript" else "1"
    lines = [(f"wrote {report.path} ({fmt}, input [{batch}, 3, {report.img_size}, "
              f"{report.img_size}], outputs {', '.join(report.outputs)})")]
    if check:
        lines.append(f"check raw outputs: max |export - torch| = {report.raw_max_abs_diff:.2e} "
                     f"(tolerance 1e-04) {'ok' if report.raw_ok else 'FAILED'}")
        for d in report.detections:
            lines.append(f"check detections at score_thr={d.score_thr:g}: torch "
                         f"{d.torch_count}, export {d.export_count}, matched {d.matched}, max box "
                         f"diff {d.max_box_diff:.2e} px, max score diff "
                         f"{d.max_score_diff:.2e} {'ok' if d.ok else 'FAILED'}")
    for line in lines:
        # Plain text: paths and shapes contain brackets that rich would read as markup.
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if check and not report.ok:
        raise MedDetError(f"the exported model {report.path} does not agree with PyTorch "
                          "(see the check above); do not deploy it")
    if check:
        console.print("export check passed", style="green", markup=False)
    if int8:
        q8 = _write_int8(report.path, calib_data, calib_images, report.img_size)
        console.print(f"wrote {q8} (int8 QDQ, convolutions; calibrated on {calib_images} train "
                      f"images of {calib_data}); its accuracy: meddet eval {q8} --data "
                      f"{calib_data}", markup=False, highlight=False, soft_wrap=True)


def _write_int8(fp32: Path, data: Path, n: int, img_size: int) -> Path:
    from meddet.data import CocoDetection
    from meddet.export import quantize_int8

    ds = CocoDetection(data, "train", img_size=img_size, train=False)
    calib = [ds[i][0][None].numpy() for i in range(min(n, len(ds)))]
    out = fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")
    return quantize_int8(fp32, out, calib)
