"""Latency of candidate student necks/heads at 512 px (how meddet_lite was chosen).

    python benchmarks/bench_lite_variants.py [--threads 2] [--img-size 512] [--rounds 5]

Each variant is the MobileNetV2 + nmODE² student built through the zoo's builder with another
neck/head size, optimized for inference (BN folded, tabulated nmODE²), timed in one process
with the variants interleaved round by round so that load changes hit all of them alike.
Prints parameters and the median / min latency per image.
"""

from __future__ import annotations

import argparse

import torch

from meddet.benchmark import count_params, time_rounds, timing_stats
from meddet.benchmark.measure import torch_call
from meddet.models import optimize_for_inference
from meddet.models.zoo import LITE_ARCH, PAPER_ARCH, build_gfl

VARIANTS = {
    "256/256 x4 dense (meddet)": PAPER_ARCH,
    "128/128 x2 dense": dict(fpn_channels=128, head_channels=128, stacked_convs=2,
                             depthwise=False),
    "128/128 x4 dw (meddet_lite)": LITE_ARCH,
    "128/128 x2 dw": dict(fpn_channels=128, head_channels=128, stacked_convs=2, depthwise=True),
    "96/96 x4 dw": dict(fpn_channels=96, head_channels=96, stacked_convs=4, depthwise=True),
    "96/96 x2 dw": dict(fpn_channels=96, head_channels=96, stacked_convs=2, depthwise=True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.randn(1, 3, a.img_size, a.img_size)
    cpu = torch.device("cpu")
    calls, params = [], []
    for name, arch in VARIANTS.items():
        m = build_gfl(2, name=name, backbone_name="mobilenet_v2", default_nmode="head",
                      arch=arch).eval()
        params.append(count_params(m) / 1e6)
        calls.append(torch_call(optimize_for_inference(m, channels_last=False), x, cpu))
    times = time_rounds(calls, warmup=2, iters=a.rounds)
    print(f"{a.img_size} px, {a.threads} threads, {a.rounds} rounds")
    for name, p, t in zip(VARIANTS, params, times):
        s = timing_stats(t)
        print(f"{name:30s} {p:6.2f} M  median {s['latency_ms_median']:6.0f} ms  "
              f"min {s['latency_ms_min']:6.0f} ms")


if __name__ == "__main__":
    main()
