"""From raw round times to reported figures: latency statistics, FPS and ratios between rows.

Speed is summarised by the **median** call time: one call disturbed by another process moves
a mean (and images / total time) arbitrarily far, but moves the median by at most one rank.
The minimum is reported beside it as the least disturbed figure. Ratios between models are
ratios of medians, with the range of the per-round ratio (rows timed in the same round see
the same machine load) to show how much they move.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from meddet.errors import MedDetError

__all__ = ["relative_to", "round_ratios", "timing_stats"]


def timing_stats(times_s: Sequence[float], batch_size: int = 1) -> dict[str, Any]:
    """Latency and FPS of one row from its per-round call times.

    Args:
        times_s: seconds per timed call (each call processes ``batch_size`` images), in round
            order; at least one.
        batch_size: images per call.

    Returns:
        ``{"latency_ms_median", "latency_ms_min", "latency_ms_mean", "latency_ms_std"}`` in
        milliseconds per image, ``"fps"`` (images per second at the median latency,
        ``1000 / latency_ms_median``), ``"rounds"`` (number of timed calls) and ``"times_s"``
        (the call times, unchanged).
    """
    if not times_s:
        raise ValueError("timing_stats needs at least one time")
    per_img_ms = [1000 * t / batch_size for t in times_s]
    median = statistics.median(per_img_ms)
    return {
        "latency_ms_median": median,
        # The minimum is the number least disturbed by other processes on a shared machine.
        "latency_ms_min": min(per_img_ms),
        "latency_ms_mean": statistics.fmean(per_img_ms),
        "latency_ms_std": statistics.stdev(per_img_ms) if len(per_img_ms) > 1 else 0.0,
        "fps": 1000 / median,
        "rounds": len(per_img_ms),
        "times_s": [float(t) for t in times_s],
    }


def round_ratios(ref_times_s: Sequence[float], times_s: Sequence[float]) -> list[float]:
    """Per-round speed-up of a row over the reference: ``ref_times_s[r] / times_s[r]``.

    Only rounds both rows were timed in count (with ``min_time`` a fast row is timed in more
    rounds than a slow one; see :func:`meddet.benchmark.time_rounds`).
    """
    return [t_ref / t for t_ref, t in zip(ref_times_s, times_s) if t > 0]


def relative_to(result: dict[str, Any], ref: str) -> dict[str, dict[str, float | None]]:
    """Ratios of every row of ``result`` to the reference row ``ref``.

    Args:
        result: :func:`meddet.benchmark.benchmark_models`'s result (rows need ``params_m``,
            ``gflops`` and ``fps``; ``times_s`` for the ratio's range).
        ref: the reference row's label (the model name; ``name (runtime)`` for non-torch rows).

    Returns:
        Per row label ``{"speedup": fps / fps_ref`` (the ratio of median latencies, ref over
        row), ``"speedup_min", "speedup_max"`` (range of the per-round ratio, see
        :func:`round_ratios`), ``"params_reduction_pct": 100 * (1 - params / params_ref),
        "flops_reduction_pct": ...}``. Speed entries are None without timings.

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
        speedup = lo = hi = None
        if r["fps"] is not None and base["fps"]:
            speedup = r["fps"] / base["fps"]
        per_round = round_ratios(base.get("times_s") or [], r.get("times_s") or [])
        if speedup is not None and per_round:
            lo, hi = min(per_round), max(per_round)
        out[name] = {
            "speedup": speedup,
            "speedup_min": lo,
            "speedup_max": hi,
            "params_reduction_pct": 100 * (1 - r["params_m"] / base["params_m"]),
            "flops_reduction_pct": 100 * (1 - r["gflops"] / base["gflops"]),
        }
    return out
