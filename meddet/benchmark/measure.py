"""The raw measurements: parameters, fvcore GFLOPs and seconds per call in interleaved rounds."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from meddet.errors import MedDetError

__all__ = [
    "FLOP_CONVENTION", "check_timing_args", "count_gflops", "count_params", "time_rounds",
    "torch_call",
]

FLOP_CONVENTION = "fvcore, 1 multiply-add = 1 FLOP"


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
        # Elementwise ops are deliberately uncounted (see the package docstring); fvcore would
        # otherwise warn about each of them.
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and torch.jit deprecation chatter
            total = analysis.total()
    finally:
        model.train(was_training)
    return total / 1e9


def torch_call(model: nn.Module, images: Tensor, device: torch.device) -> Callable[[], None]:
    """One timed unit: ``model(images)`` (post-processing included), finished on the device.

    Args:
        model: an eval-mode detector on ``device``.
        images: ``float32 [B, 3, S, S]`` network input on ``device``.
        device: where the model runs; CUDA calls wait for their kernels to finish.
    """

    def call() -> None:
        with torch.inference_mode():
            model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are asynchronous: time their completion

    return call


def check_timing_args(*, warmup: int, iters: int, min_time: float) -> None:
    """Validate :func:`time_rounds`' counts up front (before any slow model building).

    Raises:
        MedDetError: ``iters`` < 1, ``warmup`` < 0, or ``min_time`` negative or not finite.
    """
    if iters < 1:
        raise MedDetError(f"--iters must be >= 1, got {iters}")
    if warmup < 0:
        raise MedDetError(f"--warmup must be >= 0, got {warmup}")
    if not (math.isfinite(min_time) and min_time >= 0):
        raise MedDetError(f"--min-time must be a finite number of seconds >= 0, got {min_time}")


def time_rounds(calls: list[Callable[[], None]], warmup: int = 0, iters: int = 1, *,
                min_time: float = 0.0) -> list[list[float]]:
    """Seconds per call of each of ``calls``, timed in interleaved rounds.

    Every call is warmed up first; then each round times every call that still needs timing
    once, in order. Load that comes and goes on a shared machine hits all calls alike instead
    of whichever happened to be timed at that moment, so ratios are measured side by side.
    A call stops being timed once it has ``iters`` times *and* ``min_time`` seconds in total,
    so a fast call gets more rounds than a slow one under ``min_time``; round ``r`` is entry
    ``r`` of every list that long (the lists are prefixes of the same sequence of rounds).

    Args:
        calls: zero-argument callables.
        warmup: untimed calls of each before the first round.
        iters: minimum number of timed calls of each (>= 1).
        min_time: minimum total timed seconds of each (>= 0, finite).

    Returns:
        Per call, its durations in seconds in round order.

    Raises:
        MedDetError: ``iters`` < 1, ``warmup`` < 0, or ``min_time`` negative or not finite.
    """
    check_timing_args(warmup=warmup, iters=iters, min_time=min_time)
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    spent = [0.0] * len(calls)
    while True:
        active = [i for i in range(len(calls)) if len(times[i]) < iters or spent[i] < min_time]
        if not active:
            return times
        for i in active:
            t0 = time.perf_counter()
            calls[i]()
            dt = time.perf_counter() - t0
            times[i].append(dt)
            spent[i] += dt
