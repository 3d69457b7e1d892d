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
  random images, **interleaved across models and runtimes**: each round times every row once,
  so load that comes and goes on a shared machine affects all rows alike and the ratios are
  side by side. Latency is per image (call time / batch size); FPS = images / second. With
  untrained weights few locations pass the 0.05 score threshold, so NMS is cheaper than on a
  trained model.
* **Runtimes** (``runtimes``): ``torch`` is eager PyTorch; by default on the
  :func:`meddet.models.optimize_for_inference` copy (BatchNorm folded into the convs, nmODE²
  through its interpolated solution table; detections equal the plain model's to ~1e-5),
  ``optimize=False`` times the model as built. ``onnxruntime`` exports the model with
  :mod:`meddet.export` (ONNX, raw outputs) to a temporary directory and times
  ``session.run`` plus :func:`meddet.deploy.postprocess` (numpy), so its FPS includes
  post-processing too; ``intra_op_num_threads`` = ``threads``. ``onnxruntime-int8`` first
  quantizes that file statically (QDQ, convolutions only: per-channel int8 weights, uint8
  activations calibrated on a few synthetic images; nmODE² stays float32); its accuracy is not measured here (use ``meddet eval``).
* **GFLOP/s**: GFLOPs x FPS, next to the machine's matmul peak measured with the same
  thread count (best of a few ``torch.mm`` of 1024 x 1024 float32 matrices, n³ multiply-adds
  each: the same 1 MAC = 1 FLOP convention as the GFLOPs column).
* **Profile** (``profile=True``, torch runtime): per-stage latency of backbone, FPN, head
  (without nmODE²), nmODE² (every block wherever it sits) and post-processing, timed stage by
  stage on the same model and input.
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
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from meddet import paper
from meddet.device import device_name, resolve_device
from meddet.errors import MedDetError
from meddet.geometry import check_img_size

__all__ = [
    "FLOP_CONVENTION",
    "RUNTIMES",
    "TABLE2_PAPER",
    "benchmark_models",
    "count_gflops",
    "count_params",
    "matmul_peak_gflops",
    "profile_stages",
    "relative_to",
    "resolve_device",
]

FLOP_CONVENTION = "fvcore, 1 multiply-add = 1 FLOP"
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
PROFILE_STAGES = ("backbone", "neck", "head", "nmode", "postprocess")

# Paper Table II at 512 px: (parameters in M, GFLOPs).
TABLE2_PAPER = paper.TABLE2  # the paper's (params M, GFLOPs); kept under this name for callers


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


def _torch_call(model: nn.Module, images: Tensor, dev: torch.device) -> Callable[[], None]:
    """One timed unit: ``model(images)`` (post-processing included), finished on the device."""

    def call() -> None:
        with torch.inference_mode():
            model(images)
        _sync(dev)  # CUDA kernels are asynchronous: time their completion

    return call


def _time_rounds(calls: list[Callable[[], None]], warmup: int, iters: int) -> list[list[float]]:
    """Seconds per call of each of ``calls``, timed in interleaved rounds.

    Every call is warmed up first; then each round times every call once, in order. Load that
    comes and goes on a shared machine hits all models alike instead of whichever happened to
    be timed at that moment, so the ratios between models are measured side by side.
    """
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(iters):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[i].append(time.perf_counter() - t0)
    return times


def matmul_peak_gflops(n: int = 1024, iters: int = 5) -> float:
    """Best ``torch.mm`` throughput of ``n x n`` float32 matrices with the current threads.

    Returns:
        10^9 multiply-adds per second (the GFLOPs column's convention: 1 MAC = 1 FLOP).
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return n**3 / best / 1e9


def profile_stages(model: nn.Module, images: Tensor, *, warmup: int = 1, iters: int = 3
                   ) -> dict[str, float]:
    """Mean per-image latency (ms) of backbone, neck, head, nmODE² and post-processing.

    nmODE² time is measured by hooks on every ``NmODE`` / ``NmODE2`` module and subtracted from
    the stage it sits in (head, FPN or backbone). CPU only (no CUDA synchronisation).
    """
    from meddet.models.nmode import NmODE, NmODE2

    ode_time = [0.0]
    starts: dict[int, float] = {}

    def pre(mod: nn.Module, _inp: Any) -> None:
        starts[id(mod)] = time.perf_counter()

    def post(mod: nn.Module, _inp: Any, _out: Any) -> None:
        ode_time[0] += time.perf_counter() - starts.pop(id(mod))

    handles = []
    for m in model.modules():
        if isinstance(m, (NmODE, NmODE2)):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    totals = dict.fromkeys(PROFILE_STAGES, 0.0)
    img_shape = (int(images.shape[-2]), int(images.shape[-1]))
    try:
        with torch.inference_mode():
            for it in range(warmup + iters):
                stage_t: dict[str, float] = {}
                t = time.perf_counter()
                for stage in ("backbone", "neck", "head", "postprocess"):
                    ode_time[0] = 0.0
                    if stage == "backbone":
                        x: Any = model.backbone(images)
                    elif stage == "neck":
                        x = model.neck(x)
                    elif stage == "head":
                        x = model.head(x)
                    else:
                        model.postprocess(x[0], x[1], img_shape)
                    now = time.perf_counter()
                    stage_t[stage] = now - t - ode_time[0]
                    stage_t["nmode"] = stage_t.get("nmode", 0.0) + ode_time[0]
                    t = now
                if it >= warmup:
                    for k in PROFILE_STAGES:
                        totals[k] += stage_t[k]
    finally:
        for h in handles:
            h.remove()
    return {k: 1000 * v / iters / images.shape[0] for k, v in totals.items()}


def _timing_fields(times: list[float], batch_size: int) -> dict[str, Any]:
    per_img_ms = [1000 * t / batch_size for t in times]
    return {
        "latency_ms_mean": statistics.fmean(per_img_ms),
        "latency_ms_std": statistics.stdev(per_img_ms) if len(per_img_ms) > 1 else 0.0,
        # The minimum is the number least disturbed by other processes on a shared machine.
        "latency_ms_min": min(per_img_ms),
        "fps": batch_size * len(times) / sum(times),
    }


def _export_onnx(model: nn.Module, img_size: int, out: Path, int8: bool) -> Path:
    """Raw-output ONNX of ``model`` (and its static int8 QDQ version when ``int8``)."""
    from meddet.export import export_model

    try:
        import onnxruntime
    except ImportError as exc:
        raise MedDetError("--runtime onnxruntime needs onnxruntime: pip install "
                          "'meddet[onnx]'") from exc
    onnxruntime.set_default_logger_severity(3)  # quantizer sessions: same harmless warnings
    fp32 = out / "model.onnx"
    names = [f"class{i}" for i in range(int(model.num_classes))]
    export_model(model, names, fmt="onnx", img_size=img_size, out=fp32, dynamic_batch=True,
                 check=False)
    if not int8:
        return fp32
    from meddet.export import _synthetic_batch, quantize_int8

    calib = [_synthetic_batch(img_size, 1)[0].numpy() for _ in range(1)]
    calib += [torch.randn(1, 3, img_size, img_size).numpy() for _ in range(3)]
    q8 = out / "model_int8.onnx"
    quantize_int8(fp32, q8, calib)
    return q8


def _time_onnx(path: Path, model: nn.Module, images: Tensor, threads: int, warmup: int,
               iters: int) -> list[float]:
    """Seconds per onnxruntime run + numpy post-process of the exported ``model``."""
    return _time_rounds([_onnx_call(path, model, images, threads)], warmup, iters)[0]


def _onnx_call(path: Path, model: nn.Module, images: Tensor, threads: int
               ) -> Callable[[], None]:
    import onnxruntime as ort

    from meddet import deploy

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the exporter's unused initializers are harmless warnings
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n_levels = len(model.strides)
    pp = model.postprocessor
    x = images.cpu().numpy()
    img_shape = (int(x.shape[-2]), int(x.shape[-1]))

    def call() -> None:
        outs = sess.run(None, {"images": x})
        deploy.postprocess(outs[:n_levels], outs[n_levels:], strides=model.strides,
                           img_shape=img_shape, reg_max=int(model.reg_max),
                           score_thr=float(pp.score_thr), nms_pre=int(pp.nms_pre),
                           nms_iou=float(pp.nms_iou), max_per_img=int(pp.max_per_img),
                           center_offset=float(model.center_offset),
                           anchor_scale=float(model.anchor_scale))

    return call


def _bench_one(name: str, *, img_size: int, batch_size: int, dev: torch.device, warmup: int,
               fps: bool, runtimes: tuple[str, ...] = ("torch",), optimize: bool = True,
               threads: int = 1) -> list[tuple[dict[str, Any], Callable[[], None] | None,
                                                nn.Module | None, Tensor | None]]:
    """Rows of one model, each with the call to time (and the torch model, for ``--profile``).

    The model of each runtime is built, converted and warmed up inside its memory window; the
    timing itself happens later, interleaved with the other models (``_time_rounds``).
    """
    from meddet.models import build_detector, optimize_for_inference

    torch.manual_seed(0)
    model = build_detector(name).eval()
    base: dict[str, Any] = {
        "name": name,
        "params_m": count_params(model) / 1e6,
        # Counted on CPU; the count does not depend on the device.
        "gflops": count_gflops(model, img_size),
        "fps": None,
        "latency_ms_mean": None,
        "latency_ms_std": None,
        "latency_ms_min": None,
        "peak_mem_mb": None,
        "gflops_per_s": None,
    }
    del model
    if not fps:
        gc.collect()
        return [(dict(base, runtime="torch", optimized=False, label=name), None, None, None)]
    out = []
    for runtime in runtimes:
        row = dict(base, runtime=runtime,
                   optimized=bool(optimize and runtime == "torch"),
                   label=name if runtime == "torch" else f"{name} ({runtime})")
        gc.collect()
        # Build again inside the memory window: the FLOP tracer's garbage must not count, the
        # weights must.
        cpu_mem = _CpuPeakRss()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        else:
            cpu_mem.start()
        torch.manual_seed(0)
        model = build_detector(name).eval()
        images = torch.randn(batch_size, 3, img_size, img_size)
        if runtime == "torch":
            if optimize:
                model = optimize_for_inference(model)
            model = model.to(dev)
            images = images.to(dev)
            call = _torch_call(model, images, dev)
        else:
            if dev.type != "cpu":
                raise MedDetError(f"--runtime {runtime} runs on the CPU; use --device cpu")
            with tempfile.TemporaryDirectory(prefix="meddet_bench_") as tmp:
                path = _export_onnx(model, img_size, Path(tmp), runtime.endswith("int8"))
                call = _onnx_call(path, model, images, threads)  # the session holds the graph
        for _ in range(warmup):
            call()
        if dev.type == "cuda":
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        else:
            row["peak_mem_mb"] = cpu_mem.peak_mb()
        out.append((row, call, model if runtime == "torch" else None, images))
    gc.collect()
    return out


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
    runtimes: tuple[str, ...] | list[str] = ("torch",),
    optimize: bool = True,
    profile: bool = False,
    peak: bool = True,
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
        runtimes: any of :data:`RUNTIMES`; one row per (model, runtime), models outermost.
        optimize: time the torch runtime on :func:`meddet.models.optimize_for_inference`'s
            copy (False: the model as built).
        profile: add ``profile_ms`` (per-stage latency, see :func:`profile_stages`) to the
            torch rows (CPU only).
        peak: measure the matmul peak (``matmul_peak_gflops``) when timing on the CPU.

    Returns:
        ``{"device", "device_name", "torch", "threads", "img_size", "batch_size", "warmup",
        "iters", "flops": FLOP_CONVENTION, "matmul_peak_gflops", "load_avg", "models":
        [{"name", "runtime", "label", "optimized", "params_m", "gflops", "fps",
        "latency_ms_mean", "latency_ms_std", "latency_ms_min", "peak_mem_mb", "gflops_per_s",
        ["profile_ms"]}, ...]}`` in the order of ``names``.

    Raises:
        MedDetError: unknown model, img_size not a multiple of 32, bad counts, missing device.
    """
    from meddet.models import DETECTORS

    if not names:
        raise MedDetError("no models to benchmark; pass e.g. --models gfl_r50,meddet")
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise MedDetError(f"unknown model {unknown[0]!r}; use one of: {', '.join(DETECTORS)}")
    check_img_size(img_size)
    if batch_size < 1:
        raise MedDetError(f"--batch-size must be >= 1, got {batch_size}")
    if iters < 1:
        raise MedDetError(f"--iters must be >= 1, got {iters}")
    if warmup < 0:
        raise MedDetError(f"--warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise MedDetError(f"--threads must be >= 1, got {threads}")
    runtimes = tuple(runtimes)
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise MedDetError(f"unknown runtime {bad[0] if bad else ''!r}; use one of: "
                          f"{', '.join(RUNTIMES)}")
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
        prepared = [
            item
            for n in names
            for item in _bench_one(n, img_size=img_size, batch_size=batch_size, dev=dev,
                                   warmup=warmup, fps=fps, runtimes=runtimes,
                                   optimize=optimize, threads=threads or torch.get_num_threads())
        ]
        rows = [row for row, *_ in prepared]
        if fps:
            # Every model and runtime in interleaved rounds (see _time_rounds); warm-up was
            # done when each was built.
            timed = _time_rounds([call for _, call, _, _ in prepared], 0, iters)
            for (row, _, model, images), times in zip(prepared, timed):
                row.update(_timing_fields(times, batch_size))
                row["gflops_per_s"] = row["gflops"] * row["fps"]
                if profile and model is not None and dev.type == "cpu":
                    row["profile_ms"] = profile_stages(model, images,
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


def relative_to(result: dict[str, Any], ref: str) -> dict[str, dict[str, float | None]]:
    """Ratios of every model to the reference model ``ref`` of the same result.

    Returns:
        per row label (the model name; ``name (runtime)`` for non-torch rows)
        ``{"speedup": fps / fps_ref, "params_reduction_pct": 100 * (1 -
        params / params_ref), "flops_reduction_pct": ...}``; ``speedup`` is None without FPS.

    Raises:
        MedDetError: ``ref`` was not benchmarked.
    """
    rows = {r.get("label", r["name"]): r for r in result["models"]}
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
