"""`meddet bench`: parameters, GFLOPs, speed and memory of zoo detectors (paper Table II).

Thin: it parses options, calls :func:`meddet.benchmark.benchmark_models`, prints a rich table
(with ratios to ``--ref``) and optionally writes the JSON.
"""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from meddet.cli._common import emit_json, human_console, parse_csv_list
from meddet.errors import MedDetError

DEFAULT_MODELS = "gfl_r50,gfl_r101,gfl_r152,meddet"
DEFAULT_REF = "gfl_r50"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def bench(
    models: str = typer.Option(DEFAULT_MODELS, "--models",
                               help="Comma-separated zoo names (default: the Table II models)."),
    img_size: int = typer.Option(512, "--img-size", help="Square input side, a multiple of 32 "
                                 "(the paper measures at 512)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per timed forward."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed forwards before timing."),
    iters: int = typer.Option(20, "--iters", help="Timed forwards."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch "
                                          "(default: torch's current setting)."),
    ref: str | None = typer.Option(None, "--ref", help=f"Model the ratios are relative to "
                                      f"(default {DEFAULT_REF} when benchmarked)."),
    fps: bool = typer.Option(True, "--fps/--no-fps", help="Time inference (--no-fps: "
                             "parameters and GFLOPs only)."),
    json_out: str | None = typer.Option(None, "--json", help="Write the results as JSON to "
                                           "this file, or '-' for stdout."),
) -> None:
    """Measure parameters, GFLOPs, FPS / latency and peak memory of zoo detectors.

    Models get random weights (nothing is downloaded). Latency includes post-processing.
    """
    from meddet.benchmark import FLOP_CONVENTION, benchmark_models, relative_to

    names = parse_csv_list(models, "--models")
    out = human_console(json_out)
    if ref is None and DEFAULT_REF in names:
        ref = DEFAULT_REF
    if ref is not None and ref not in names:
        # Checked before the (slow) measurement rather than after it.
        raise MedDetError(f"--ref {ref!r} is not among --models ({', '.join(names)}); add it "
                          "or pick another reference")
    with out.status(f"benchmarking {', '.join(names)} at {img_size} px ..."):
        result = benchmark_models(names, img_size=img_size, batch_size=batch_size,
                                  device=device, warmup=warmup, iters=iters, threads=threads,
                                  fps=fps)
    ratios = relative_to(result, ref) if ref is not None else {}
    if ref is not None:
        result["ref"] = ref
        for row in result["models"]:
            row.update(ratios[row["name"]])

    title = (f"{result['device']} ({result['device_name']}), {result['threads']} threads, "
             f"torch {result['torch']}, {img_size} px, batch {batch_size}")
    if ref is not None:
        title += f"; ratios vs {ref}"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    for col in ("params M", "GFLOPs", "FPS", "ms/img", "mem MB"):
        table.add_column(col, justify="right", no_wrap=True)
    if ref is not None:
        for col in ("speed-up", "-params%", "-FLOPs%"):
            table.add_column(col, justify="right", no_wrap=True)
    for row in result["models"]:
        latency = "-"
        if row["latency_ms_mean"] is not None:
            latency = f"{row['latency_ms_mean']:.0f}±{row['latency_ms_std']:.0f}"
        cells = [row["name"], f"{row['params_m']:.2f}", f"{row['gflops']:.2f}",
                 _fmt(row["fps"], ".2f"), latency, _fmt(row["peak_mem_mb"], ".0f")]
        if ref is not None:
            speedup = row["speedup"]
            cells += [_fmt(speedup, ".2f") + ("x" if speedup is not None else ""),
                      f"{row['params_reduction_pct']:.1f}", f"{row['flops_reduction_pct']:.1f}"]
        table.add_row(*cells)
    if not out.is_terminal:
        # Pipes and log files get rich's 80-column default, too narrow for nine columns.
        out = Console(file=out.file, width=max(out.width, 120), highlight=False)
    out.print(table)
    note = (f"GFLOPs: {FLOP_CONVENTION}; counted: backbone + FPN + head on "
            f"1x3x{img_size}x{img_size}.")
    if fps:
        note += (f" ms/img: mean±std latency of forward + post-processing, {iters} timed "
                 f"runs after {warmup} warm-up runs; random weights. mem: peak memory growth.")
    out.print(note)
    emit_json(result, json_out)
