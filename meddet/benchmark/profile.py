"""Where the time goes: per-stage latency of a detector and the machine's matmul peak."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PROFILE_STAGES", "matmul_peak_gflops", "profile_stages"]

PROFILE_STAGES = ("backbone", "neck", "head", "nmode", "postprocess")


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

    Args:
        model: an eval-mode detector with ``backbone``, ``neck``, ``head`` and ``postprocess``.
        images: ``float32 [B, 3, S, S]`` network input.
        warmup: untimed passes first.
        iters: timed passes averaged.

    Returns:
        ``{stage: ms per image}`` for every stage of :data:`PROFILE_STAGES`.
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
