"""``benchmark_models``: validate, build each row, time all rows in interleaved rounds, assemble."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from meddet.benchmark.measure import (
    FLOP_CONVENTION,
    check_timing_args,
    count_gflops,
    count_params,
    time_rounds,
    torch_call,
)
from meddet.benchmark.memory import PeakMemory
from meddet.benchmark.profile import matmul_peak_gflops, profile_stages
from meddet.benchmark.report import timing_stats
from meddet.device import device_name, resolve_device
from meddet.errors import MedDetError
from meddet.geometry import check_img_size

__all__ = ["RUNTIMES", "benchmark_models"]

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")

# Row keys filled by timing; None when speed is not measured (``fps=False``).
_SPEED_KEYS = ("fps", "latency_ms_median", "latency_ms_min", "latency_ms_mean",
               "latency_ms_std", "rounds", "times_s", "peak_mem_mb", "gflops_per_s")


@dataclass
class _Prepared:
    """One row, built and warmed up, waiting for the interleaved timing."""

    row: dict[str, Any]
    call: Callable[[], None]
    model: nn.Module | None  # the torch model, for the per-stage profile
    images: Tensor


def _prepare(name: str, *, img_size: int, batch_size: int, dev: torch.device, warmup: int,
             fps: bool, runtimes: tuple[str, ...], optimize: bool, threads: int
             ) -> tuple[list[dict[str, Any]], list[_Prepared]]:
    """The rows of one model, and (when timing) each row's call, built and warmed up.

    Each runtime's model is built, converted and warmed up inside its memory window; the
    timing itself happens later, interleaved with the other models (:func:`time_rounds`).
    """
    from meddet.benchmark.onnx import export_onnx, onnx_call
    from meddet.models import build_detector, optimize_for_inference, skip_weight_init

    # Counting needs the graph, not the values: skip the random initialisation (seconds for
    # a ResNet-152). The timed copy below is initialised normally.
    with skip_weight_init():
        model = build_detector(name).eval()
    base: dict[str, Any] = {
        "name": name,
        "params_m": count_params(model) / 1e6,
        # Counted on CPU; the count does not depend on the device.
        "gflops": count_gflops(model, img_size),
        **dict.fromkeys(_SPEED_KEYS),
    }
    del model
    if not fps:
        gc.collect()
        return [dict(base, runtime="torch", optimized=False, label=name)], []
    prepared = []
    for runtime in runtimes:
        row = dict(base, runtime=runtime, optimized=bool(optimize and runtime == "torch"),
                   label=name if runtime == "torch" else f"{name} ({runtime})")
        # Build again inside the memory window: the FLOP tracer's garbage must not count, the
        # weights must.
        memory = PeakMemory(dev)
        memory.start()
        torch.manual_seed(0)
        model = build_detector(name).eval()
        images = torch.randn(batch_size, 3, img_size, img_size)
        if runtime == "torch":
            if optimize:
                model = optimize_for_inference(model)
            model = model.to(dev)
            images = images.to(dev)
            call = torch_call(model, images, dev)
        else:
            with tempfile.TemporaryDirectory(prefix="meddet_bench_") as tmp:
                path = export_onnx(model, img_size, Path(tmp), int8=runtime.endswith("int8"))
                call = onnx_call(path, model, images, threads)  # the session holds the graph
        for _ in range(warmup):
            call()
        row["peak_mem_mb"] = memory.peak_mb()
        prepared.append(_Prepared(row, call, model if runtime == "torch" else None, images))
    # No gc.collect() here: the next model's PeakMemory.start() collects before it measures.
    return [p.row for p in prepared], prepared


def _validate(names: list[str], *, img_size: int, batch_size: int, warmup: int, iters: int,
              threads: int | None, runtimes: tuple[str, ...], min_time: float) -> None:
    from meddet.models import DETECTORS

    if not names:
        raise MedDetError("no models to benchmark; pass e.g. --models gfl_r50,meddet")
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise MedDetError(f"unknown model {unknown[0]!r}; use one of: {', '.join(DETECTORS)}")
    check_img_size(img_size)
    if batch_size < 1:
        raise MedDetError(f"--batch-size must be >= 1, got {batch_size}")
    check_timing_args(warmup=warmup, iters=iters, min_time=min_time)
    if threads is not None and threads < 1:
        raise MedDetError(f"--threads must be >= 1, got {threads}")
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise MedDetError(f"unknown runtime {bad[0] if bad else ''!r}; use one of: "
                          f"{', '.join(RUNTIMES)}")


def benchmark_models(
    names: list[str],
    *,
    img_size: int = 512,
    batch_size: int = 1,
    device: str = "cpu",
    warmup: int = 3,
    iters: int = 20,
    min_time: float = 0.0,
    threads: int | None = None,
    fps: bool = True,
    runtimes: tuple[str, ...] | list[str] = ("torch",),
    optimize: bool = True,
    profile: bool = False,
    peak: bool = True,
) -> dict[str, Any]:
    """Measure parameters, GFLOPs and (optionally) speed and memory of zoo detectors.

    Models are built with random weights (nothing is downloaded) and measured in this
    process; every row is timed in the same interleaved rounds. See :mod:`meddet.benchmark`
    for what each number includes.

    Args:
        names: zoo names (keys of ``meddet.models.DETECTORS``).
        img_size: square input side; a multiple of 32.
        batch_size: images per timed call.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        warmup: untimed calls of each row before timing.
        iters: minimum timed calls (rounds) of each row.
        min_time: minimum total timed seconds of each row: a row keeps being timed, in further
            rounds, until it has ``iters`` calls and this much time (0: exactly ``iters``).
        threads: CPU threads for torch (``torch.set_num_threads``) during the run; None keeps
            the current setting.
        fps: also time inference and record peak memory; False gives parameters and GFLOPs
            only (speed fields are None).
        runtimes: any of :data:`RUNTIMES`; one row per (model, runtime), models outermost.
        optimize: time the torch runtime on :func:`meddet.models.optimize_for_inference`'s
            copy (False: the model as built).
        profile: add ``profile_ms`` (per-stage latency, see :func:`profile_stages`) to the
            torch rows (CPU only).
        peak: measure the matmul peak (``matmul_peak_gflops``) when timing on the CPU.

    Returns:
        ``{"device", "device_name", "torch", "python", "threads", "img_size", "batch_size",
        "warmup", "iters", "min_time", "flops": FLOP_CONVENTION, "matmul_peak_gflops",
        "load_avg", "models": [row, ...]}``, rows in the order of ``names`` (then runtimes).
        Each row has ``"name", "runtime", "label", "optimized", "params_m", "gflops"`` and
        the timing fields of :func:`timing_stats`: ``"latency_ms_median", "latency_ms_min",
        "latency_ms_mean", "latency_ms_std"`` (ms per image), ``"fps"`` (images per second
        **at the median latency**; before the median was introduced it was images / total
        timed seconds), ``"rounds"``, ``"times_s"`` (raw seconds per call, in round order);
        plus ``"peak_mem_mb"``, ``"gflops_per_s"`` (GFLOPs x FPS) and, with ``profile``,
        ``"profile_ms"``. Timing fields are None with ``fps=False``.

    Raises:
        MedDetError: unknown model or runtime, img_size not a multiple of 32, bad counts or
            ``min_time``, missing device, ONNX runtimes on a GPU.
    """
    runtimes = tuple(runtimes)
    _validate(names, img_size=img_size, batch_size=batch_size, warmup=warmup, iters=iters,
              threads=threads, runtimes=runtimes, min_time=min_time)
    dev = resolve_device(device)
    if dev.type != "cpu" and any(r != "torch" for r in runtimes):
        raise MedDetError("--runtime onnxruntime / onnxruntime-int8 run on the CPU; use "
                          "--device cpu")

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    load_before = _load_avg()
    peak_gflops = None
    try:
        if fps and peak and dev.type == "cpu":
            peak_gflops = matmul_peak_gflops()
        rows: list[dict[str, Any]] = []
        prepared: list[_Prepared] = []
        for n in names:
            model_rows, model_prepared = _prepare(
                n, img_size=img_size, batch_size=batch_size, dev=dev, warmup=warmup, fps=fps,
                runtimes=runtimes, optimize=optimize,
                threads=threads or torch.get_num_threads())
            rows += model_rows
            prepared += model_prepared
        # Every row in the same interleaved rounds; warm-up was done when each was built.
        timed = time_rounds([p.call for p in prepared], 0, iters, min_time=min_time)
        for p, times in zip(prepared, timed):
            p.row.update(timing_stats(times, batch_size))
            p.row["gflops_per_s"] = p.row["gflops"] * p.row["fps"]
            if profile and p.model is not None and dev.type == "cpu":
                p.row["profile_ms"] = profile_stages(p.model, p.images,
                                                     iters=max(1, min(iters, 3)))
        del prepared
        gc.collect()
    finally:
        torch.set_num_threads(old_threads)
    return {
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": threads if threads is not None else old_threads,
        "img_size": img_size,
        "batch_size": batch_size,
        "warmup": warmup,
        "iters": iters if fps else 0,
        "min_time": min_time if fps else 0.0,
        "flops": FLOP_CONVENTION,
        "matmul_peak_gflops": peak_gflops,
        "load_avg": [load_before, _load_avg()],
        "models": rows,
    }


def _load_avg() -> float | None:
    """1-minute load average (None where the OS has none): timings need it on shared hosts."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
