"""Latency of candidate student necks/heads at 512 px (how meddet_lite was chosen).

    python benchmarks/bench_lite_variants.py [--threads 2] [--img-size 512] [--rounds 5]

Each variant is the MobileNetV2 + nmODE² student built through the zoo's builder with another
neck/head size, optimized for inference (BN folded, tabulated nmODE²), timed in one process
with the variants interleaved round by round so that load changes hit all of them alike.
Prints parameters and the median / min latency per image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from meddet.models import optimize_for_inference
from meddet.models.zoo import LITE_ARCH, PAPER_ARCH, _build_gfl

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
    models = {}
    for name, arch in VARIANTS.items():
        m = _build_gfl(2, name=name, backbone_name="mobilenet_v2", default_nmode="head",
                       arch=arch).eval()
        models[name] = (optimize_for_inference(m, channels_last=False),
                        sum(p.numel() for p in m.parameters()) / 1e6)
    times: dict[str, list[float]] = {n: [] for n in models}
    with torch.inference_mode():
        for m, _ in models.values():
            m(x)
            m(x)
        for _ in range(a.rounds):
            for n, (m, _) in models.items():
                t0 = time.perf_counter()
                m(x)
                times[n].append(1000 * (time.perf_counter() - t0))
    print(f"{a.img_size} px, {a.threads} threads, {a.rounds} rounds")
    for n, (_, params) in models.items():
        print(f"{n:30s} {params:6.2f} M  median {statistics.median(times[n]):6.0f} ms  "
              f"min {min(times[n]):6.0f} ms")


if __name__ == "__main__":
    main()
