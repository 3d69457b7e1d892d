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


def _speedup(row: dict, *, is_ref: bool) -> str:
    """``1.95x (1.80-2.10)``: the ratio of medians and its range over the rounds."""
    if row["speedup"] is None:
        return "-"
    text = f"{row['speedup']:.2f}x"
    if not is_ref and row.get("speedup_min") is not None:
        text += f" ({row['speedup_min']:.2f}-{row['speedup_max']:.2f})"
    return text


def _note(result: dict, *, ref: str | None, optimize: bool, min_time: float) -> str:
    """The footnote: what the columns count and how the timing was done."""
    from meddet.benchmark import FLOP_CONVENTION

    size = result["img_size"]
    parts = [f"GFLOPs: {FLOP_CONVENTION}; counted: backbone + FPN + head on "
             f"1x3x{size}x{size}."]
    if result["iters"]:
        rounds = sorted({r["rounds"] for r in result["models"]})
        span = str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
        limit = f", --min-time {min_time:g} s" if min_time else ""
        parts.append(
            f"Latency: forward + post-processing per image, median and min of {span} timed "
            f"rounds per row (--iters {result['iters']}{limit}) after {result['warmup']} "
            "warm-up runs, the rows interleaved round by round; random weights. "
            "FPS = 1000 / median ms.")
        if ref is not None:
            parts.append("speed-up: ratio of the medians; in brackets its range over the "
                         "rounds.")
        torch_kind = "optimized (BN folded, tabulated nmODE²)" if optimize else "as built"
        load = result["load_avg"]
        parts.append(f"mem: peak memory growth. torch: {torch_kind}. GFLOP/s = GFLOPs x FPS, "
                     "same convention as the matmul peak. Load average "
                     f"{_fmt(load[0], '.1f')} -> {_fmt(load[1], '.1f')}.")
    return " ".join(parts)


def bench(
    models: str = typer.Option(DEFAULT_MODELS, "--models",
                               help="Comma-separated zoo names (default: the Table II models)."),
    img_size: int = typer.Option(512, "--img-size", help="Square input side, a multiple of 32 "
                                 "(the paper measures at 512)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per timed forward."),
    device: str = typer.Option("auto", "--device",
                               help="auto (cuda when available, else cpu), cpu, cuda or cuda:N."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed forwards before timing."),
    iters: int = typer.Option(20, "--iters", help="Timed forwards (rounds) per model, at "
                              "least."),
    min_time: float = typer.Option(0.0, "--min-time", help="Keep timing each model in further "
                                   "rounds until this many seconds were spent on it, so its "
                                   "median is stable (0: exactly --iters rounds)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch "
                                          "(default: torch's current setting)."),
    ref: str | None = typer.Option(None, "--ref", help=f"Model the ratios are relative to "
                                      f"(default {DEFAULT_REF} when benchmarked)."),
    fps: bool = typer.Option(True, "--fps/--no-fps", help="Time inference (--no-fps: "
                             "parameters and GFLOPs only)."),
    json_out: str | None = typer.Option(None, "--json", help="Write the results as JSON to "
                                           "this file, or '-' for stdout."),
    runtime: str = typer.Option("torch", "--runtime", help="Comma-separated: torch, "
                                "onnxruntime, onnxruntime-int8 (ONNX runtimes are timed next "
                                "to eager torch; post-processing included)."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="Time torch on the "
                                  "inference-optimized copy (BN folded, tabulated nmODE²)."),
    profile: bool = typer.Option(False, "--profile", help="Print per-stage latency (backbone, "
                                 "neck, head, nmODE², post-process) of the torch runtime."),
) -> None:
    """Measure parameters, GFLOPs, FPS / latency and peak memory of zoo detectors.

    Models get random weights (nothing is downloaded). Latency includes post-processing;
    FPS and the speed-up come from the median latency, with the minimum and the range of the
    per-round speed-up beside them.
    """
    from meddet.benchmark import PROFILE_STAGES, benchmark_models, relative_to
    from meddet.device import auto_device

    names = parse_csv_list(models, "--models")
    runtimes = parse_csv_list(runtime, "--runtime")
    if any(r != "torch" for r in runtimes) and "torch" not in runtimes:
        runtimes = ["torch", *runtimes]  # always side by side with eager torch
    out = human_console(json_out)
    if ref is None and DEFAULT_REF in names:
        ref = DEFAULT_REF
    if ref is not None and ref not in names:
        # Checked before the (slow) measurement rather than after it.
        raise MedDetError(f"--ref {ref!r} is not among --models ({', '.join(names)}); add it "
                          "or pick another reference")
    with out.status(f"benchmarking {', '.join(names)} at {img_size} px ..."):
        result = benchmark_models(names, img_size=img_size, batch_size=batch_size,
                                  device=auto_device(device), warmup=warmup, iters=iters,
                                  min_time=min_time, threads=threads,
                                  fps=fps, runtimes=runtimes, optimize=optimize,
                                  profile=profile)
    ratios = relative_to(result, ref) if ref is not None else {}
    if ref is not None:
        result["ref"] = ref
        for row in result["models"]:
            row.update(ratios[row["label"]])

    title = (f"{result['device']} ({result['device_name']}), {result['threads']} threads, "
             f"torch {result['torch']}, {img_size} px, batch {batch_size}")
    if ref is not None:
        title += f"; ratios vs {ref}"
    if result.get("matmul_peak_gflops"):
        title += f"; matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    for col in ("params M", "GFLOPs", "FPS", "median ms", "min ms", "mem MB", "GFLOP/s"):
        table.add_column(col, justify="right", no_wrap=True)
    if ref is not None:
        for col in ("speed-up (range)", "-params%", "-FLOPs%"):
            table.add_column(col, justify="right", no_wrap=True)
    for row in result["models"]:
        cells = [row["label"], f"{row['params_m']:.2f}", f"{row['gflops']:.2f}",
                 _fmt(row["fps"], ".2f"), _fmt(row["latency_ms_median"], ".1f"),
                 _fmt(row["latency_ms_min"], ".1f"), _fmt(row["peak_mem_mb"], ".0f"),
                 _fmt(row["gflops_per_s"], ".1f")]
        if ref is not None:
            cells += [_speedup(row, is_ref=row["label"] == ref),
                      f"{row['params_reduction_pct']:.1f}", f"{row['flops_reduction_pct']:.1f}"]
        table.add_row(*cells)
    if not out.is_terminal:
        # Pipes and log files get rich's 80-column default, too narrow for eleven columns.
        out = Console(file=out.file, width=max(out.width, 140), highlight=False)
    out.print(table)
    profiled = [r for r in result["models"] if r.get("profile_ms")]
    if profiled:
        prof = Table(title="per-stage latency, ms/img (share of the sum)", box=box.SIMPLE_HEAD)
        prof.add_column("model", no_wrap=True)
        for stage in PROFILE_STAGES:
            prof.add_column(stage, justify="right", no_wrap=True)
        for r in profiled:
            total = sum(r["profile_ms"].values()) or 1.0
            prof.add_row(r["label"], *[f"{r['profile_ms'][s]:.1f} ({100 * r['profile_ms'][s] / total:.0f}%)"
                                       for s in PROFILE_STAGES])
        out.print(prof)
    out.print(_note(result, ref=ref, optimize=optimize, min_time=min_time))
    emit_json(result, json_out)
