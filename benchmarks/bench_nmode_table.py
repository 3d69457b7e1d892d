"""nmODE²'s share of `meddet_lite` inference: the table lookup as it was vs as it is.

``meddet bench --profile`` times each stage over 3 runs, too few on a noisy shared VM to
compare two versions of one stage. This script builds the optimized `meddet_lite` (BatchNorm
folded, tabulated nmODE², channels_last) once and alternates two lookup implementations over
``--rounds`` rounds of :func:`meddet.benchmark.profile_stages`, printing the median nmODE² time
and share of each:

* ``before``: the lookup up to 2026-11-25 (float ``remainder`` for the periodic wrap, int64
  indices, ``torch.take`` into fresh output tensors);
* ``now``: :func:`meddet.models.nmode._table_lookup` (bitwise AND wrap on int32 indices,
  ``index_select`` into the spent float buffers).

    python benchmarks/bench_nmode_table.py --threads 2 --rounds 12
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

import meddet.models.nmode as nm
from meddet.benchmark import profile_stages
from meddet.models import optimize_for_inference
from meddet.models.zoo import build_detector


def lookup_before(gamma: torch.Tensor, tables: tuple[torch.Tensor, ...], with_sens: bool
                  ) -> tuple[torch.Tensor, None]:
    """The earlier lookup, inference half only (the benchmark runs without gradients)."""
    assert not with_sens
    y_tab, dy_tab = tables[:2]
    n = y_tab.numel()
    pos = torch.mul(gamma, n / math.pi)
    idx_f = torch.floor(pos)
    frac = pos.sub_(idx_f)
    idx = idx_f.remainder_(n).to(torch.long)
    return torch.take(dy_tab, idx).mul_(frac).add_(torch.take(y_tab, idx)), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meddet_lite")
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = optimize_for_inference(build_detector(a.model).eval())
    x = torch.randn(1, 3, a.img_size, a.img_size)
    if getattr(model, "prefers_channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    impls = {"before": lookup_before, "now": nm._table_lookup}
    ode: dict[str, list[float]] = {k: [] for k in impls}
    share: dict[str, list[float]] = {k: [] for k in impls}
    try:
        for _ in range(a.rounds):
            for name, fn in impls.items():
                nm._table_lookup = fn
                stages = profile_stages(model, x, warmup=1, iters=3)
                ode[name].append(stages["nmode"])
                share[name].append(stages["nmode"] / sum(stages.values()))
    finally:
        nm._table_lookup = impls["now"]
    print(f"{a.model}, {a.img_size} px, {a.threads} threads, {a.rounds} rounds (medians)")
    for name in impls:
        print(f"  {name:7s} nmODE² {statistics.median(ode[name]):6.2f} ms/img, "
              f"{100 * statistics.median(share[name]):4.1f} % of the stage sum")


if __name__ == "__main__":
    main()
