"""Model cost: parameters, GFLOPs, inference speed and peak memory (paper Table II).

What is measured, exactly:

* **Parameters**: every parameter of the detector (backbone + FPN + head), trainable or frozen,
  in millions. Post-processing and the assigner have none.
* **GFLOPs**: fvcore's :class:`~fvcore.nn.FlopCountAnalysis` of the network forward
  (``forward_raw``: backbone, FPN, head) on one ``1 x 3 x img_size x img_size`` image. fvcore
  counts one multiply-accumulate as one FLOP, as the paper (via mmcv) does. Convolutions, norms
  and upsampling are counted; elementwise ops (activations, additions, the nmODE² sin/cos
  evaluations: about 20 per element of the head towers' output, < 0.2 % of the total) and
  post-processing are not.
* **Speed**: eval-mode ``forward(images)`` including post-processing (decode, score threshold,
  NMS), under ``torch.inference_mode``, after ``warmup`` untimed calls; ``iters`` timed calls on
  random images. Latency is per image (call time / batch size); FPS = images / second. With
  untrained weights few locations pass the 0.05 score threshold, so NMS is cheaper than on a
  trained model.
* **Peak memory**: the model is built afresh for this (after the FLOP count, whose tracer
  garbage must not count). On CUDA, ``torch.cuda.max_memory_allocated`` during build + timing. On Linux
  CPU, the growth of the process's resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the resident size before the model was built: weights,
  activations and allocator overhead. Elsewhere ``None``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from meddet.errors import MedDetError

__all__ = [
    "FLOP_CONVENTION",
    "TABLE2_PAPER",
    "benchmark_models",
    "count_gflops",
    "count_params",
    "relative_to",
    "resolve_device",
]

FLOP_CONVENTION = "fvcore, 1 multiply-add = 1 FLOP"

# Paper Table II at 512 px: (parameters in M, GFLOPs).
TABLE2_PAPER: dict[str, tuple[float, float]] = {
    "gfl_r152": (66.51, 92.13),
    "gfl_r101": (51.24, 71.20),
    "gfl_r50": (32.32, 50.21),
    "meddet": (10.42, 31.69),
}


class _RawForward(nn.Module):
    """``forward_raw`` as a module returning a flat tuple, which fvcore's tracer needs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        feats, cls_scores, bbox_preds = self.detector.forward_raw(images)
        return (*feats, *cls_scores, *bbox_preds)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``, frozen ones included."""
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, img_size: int) -> float:
    """GFLOPs of ``model.forward_raw`` on one ``[1, 3, img_size, img_size]`` image (fvcore).

    Args:
        model: a detector with ``forward_raw``; evaluated in eval mode (restored afterwards).
        img_size: input side in pixels.

    Returns:
        10^9 FLOPs with one multiply-accumulate counted as one FLOP.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore imports torch.jit.script
        from fvcore.nn import FlopCountAnalysis  # local: slow import, only needed here

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    images = torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    try:
        analysis = FlopCountAnalysis(_RawForward(model), images)
        # Elementwise ops are deliberately uncounted (see the module docstring); fvcore would
        # otherwise warn about each of them.
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and torch.jit deprecation chatter
            total = analysis.total()
    finally:
        model.train(was_training)
    return total / 1e9


def resolve_device(device: str) -> torch.device:
    """Check that ``device`` (``cpu``, ``cuda``, ``cuda:N``) exists here.

    Raises:
        MedDetError: unknown device string or CUDA not available.
    """
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise MedDetError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedDetError(f"--device {device} requested but CUDA is not available on this "
                              "machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MedDetError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here")
    elif dev.type != "cpu":
        raise MedDetError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    return dev


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


class _CpuPeakRss:
    """Peak resident memory growth on Linux via ``VmHWM`` (reset with ``clear_refs``)."""

    def __init__(self) -> None:
        self.baseline_kb: int | None = None

    @staticmethod
    def _status_kb(field: str) -> int | None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(rf"{field}:\s+(\d+) kB", text)
        return int(match.group(1)) if match else None

    def start(self) -> None:
        gc.collect()
        # Hand freed heap pages back to the OS so the previous model's memory does not hide
        # this one's growth (glibc keeps them resident otherwise).
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5": reset the RSS high-water mark
        except OSError:
            self.baseline_kb = None
            return
        self.baseline_kb = self._status_kb("VmRSS")

    def peak_mb(self) -> float | None:
        peak = self._status_kb("VmHWM")
        if self.baseline_kb is None or peak is None:
            return None
        return max(peak - self.baseline_kb, 0) / 1024


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_model(model: nn.Module, images: Tensor, dev: torch.device, warmup: int,
                iters: int) -> list[float]:
    """Seconds per call of ``model(images)`` (post-processing included) for ``iters`` calls."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(images)
        _sync(dev)
        for _ in range(iters):
            t0 = time.perf_counter()
            model(images)
            _sync(dev)  # CUDA kernels are asynchronous: time their completion
            times.append(time.perf_counter() - t0)
    return times


def _bench_one(name: str, *, img_size: int, batch_size: int, dev: torch.device, warmup: int,
               iters: int, fps: bool) -> dict[str, Any]:
    from meddet.models import build_detector

    torch.manual_seed(0)
    model = build_detector(name).eval()
    row: dict[str, Any] = {
        "name": name,
        "params_m": count_params(model) / 1e6,
        # Counted on CPU; the count does not depend on the device.
        "gflops": count_gflops(model, img_size),
        "fps": None,
        "latency_ms_mean": None,
        "latency_ms_std": None,
        "latency_ms_min": None,
        "peak_mem_mb": None,
    }
    if fps:
        # Build again inside the memory window: the FLOP tracer's garbage must not count, the
        # weights must.
        del model
        cpu_mem = _CpuPeakRss()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        else:
            cpu_mem.start()
        torch.manual_seed(0)
        model = build_detector(name).eval().to(dev)
        images = torch.randn(batch_size, 3, img_size, img_size, device=dev)
        times = _time_model(model, images, dev, warmup, iters)
        per_img_ms = [1000 * t / batch_size for t in times]
        row["latency_ms_mean"] = statistics.fmean(per_img_ms)
        row["latency_ms_std"] = statistics.stdev(per_img_ms) if len(per_img_ms) > 1 else 0.0
        # The minimum is the number least disturbed by other processes on a shared machine.
        row["latency_ms_min"] = min(per_img_ms)
        row["fps"] = batch_size * len(times) / sum(times)
        if dev.type == "cuda":
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        else:
            row["peak_mem_mb"] = cpu_mem.peak_mb()
    del model
    gc.collect()
    return row


def benchmark_models(
    names: list[str],
    *,
    img_size: int = 512,
    batch_size: int = 1,
    device: str = "cpu",
    warmup: int = 3,
    iters: int = 20,
    threads: int | None = None,
    fps: bool = True,
) -> dict[str, Any]:
    """Measure parameters, GFLOPs and (optionally) speed and memory of zoo detectors.

    Models are built with random weights (nothing is downloaded) and measured one after the
    other in this process. See the module docstring for what each number includes.

    Args:
        names: zoo names (keys of ``meddet.models.DETECTORS``).
        img_size: square input side; a multiple of 32.
        batch_size: images per timed call.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        warmup: untimed calls before timing.
        iters: timed calls.
        threads: CPU threads for torch (``torch.set_num_threads``) during the run; None keeps
            the current setting.
        fps: also time inference and record peak memory; False gives parameters and GFLOPs
            only (speed fields are None).

    Returns:
        ``{"device", "device_name", "torch", "threads", "img_size", "batch_size", "warmup",
        "iters", "flops": FLOP_CONVENTION, "models": [{"name", "params_m", "gflops", "fps",
        "latency_ms_mean", "latency_ms_std", "latency_ms_min", "peak_mem_mb"}, ...]}`` in the
        order of ``names``.

    Raises:
        MedDetError: unknown model, img_size not a multiple of 32, bad counts, missing device.
    """
    from meddet.models import DETECTORS

    if not names:
        raise MedDetError("no models to benchmark; pass e.g. --models gfl_r50,meddet")
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise MedDetError(f"unknown model {unknown[0]!r}; use one of: {', '.join(DETECTORS)}")
    if img_size < 32 or img_size % 32:
        raise MedDetError(f"--img-size must be a positive multiple of 32, got {img_size}")
    if batch_size < 1:
        raise MedDetError(f"--batch-size must be >= 1, got {batch_size}")
    if iters < 1:
        raise MedDetError(f"--iters must be >= 1, got {iters}")
    if warmup < 0:
        raise MedDetError(f"--warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise MedDetError(f"--threads must be >= 1, got {threads}")
    dev = resolve_device(device)

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = [
            _bench_one(n, img_size=img_size, batch_size=batch_size, dev=dev, warmup=warmup,
                       iters=iters, fps=fps)
            for n in names
        ]
    finally:
        torch.set_num_threads(old_threads)
    return {
        "device": str(dev),
        "device_name": _device_name(dev),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": threads if threads is not None else old_threads,
        "img_size": img_size,
        "batch_size": batch_size,
        "warmup": warmup,
        "iters": iters if fps else 0,
        "flops": FLOP_CONVENTION,
        "models": rows,
    }


def relative_to(result: dict[str, Any], ref: str) -> dict[str, dict[str, float | None]]:
    """Ratios of every model to the reference model ``ref`` of the same result.

    Returns:
        per model name ``{"speedup": fps / fps_ref, "params_reduction_pct": 100 * (1 -
        params / params_ref), "flops_reduction_pct": ...}``; ``speedup`` is None without FPS.

    Raises:
        MedDetError: ``ref`` was not benchmarked.
    """
    rows = {r["name"]: r for r in result["models"]}
    if ref not in rows:
        raise MedDetError(f"reference model {ref!r} is not among the benchmarked models "
                          f"({', '.join(rows)}); add it to --models or pick another --ref")
    base = rows[ref]
    out: dict[str, dict[str, float | None]] = {}
    for name, r in rows.items():
        speedup = None
        if r["fps"] is not None and base["fps"]:
            speedup = r["fps"] / base["fps"]
        out[name] = {
            "speedup": speedup,
            "params_reduction_pct": 100 * (1 - r["params_m"] / base["params_m"]),
            "flops_reduction_pct": 100 * (1 - r["gflops"] / base["gflops"]),
        }
    return out
