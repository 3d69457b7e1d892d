"""Training-step throughput (forward + loss + backward + SGD step) of zoo detectors.

Compares plain GFL-MobileNetV2 with the MedDet student, whose head nmODE² blocks run either
through torchdiffeq (the pre-fused behaviour, ``solver=torchdiffeq``) or the fused solver (the
default), or the interpolated solution table (``solver=table``, opt-in). Variants are interleaved over ``--rounds`` so load from other processes on a shared
machine hits all of them alike; the best round per variant is reported.

    python benchmarks/bench_train_step.py --img-size 256 --batch-size 4 --threads 2 --iters 3
"""

from __future__ import annotations

import argparse
import os
import time

import torch

VARIANTS = {
    "gfl_mbv2": ("gfl_mbv2", {}),
    "meddet[torchdiffeq]": ("meddet", {"nmode_kwargs": {"solver": "torchdiffeq"}}),
    "meddet[fused]": ("meddet", {}),
    "meddet[table]": ("meddet", {"nmode_kwargs": {"solver": "table"}}),
}


def _targets(batch: int, size: int) -> list[dict]:
    s = size / 256
    return [{"boxes": torch.tensor([[40.0, 60.0, 140.0, 200.0], [160.0, 20.0, 240.0, 80.0]]) * s,
             "labels": torch.tensor([0, 1])} for _ in range(batch)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time (all threads), robust to other processes' load "
                         "on a shared machine; use with --threads 1 (idle OpenMP threads spin)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    from meddet.models import build_detector

    torch.set_num_threads(a.threads)
    print(f"{a.img_size} px, batch {a.batch_size}, {a.threads} threads, {a.clock} clock, "
          f"load average {os.getloadavg()}")
    names = a.variants.split(",")
    models, opts = {}, {}
    for v in names:
        torch.manual_seed(0)
        zoo, kw = VARIANTS[v]
        models[v] = build_detector(zoo, **kw).train()
        opts[v] = torch.optim.SGD(models[v].parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
    targets = _targets(a.batch_size, a.img_size)
    best = {v: float("inf") for v in names}
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    for r in range(a.rounds):
        for v in names:
            m, opt = models[v], opts[v]
            for i in range(a.iters + (1 if r == 0 else 0)):  # one warm-up step in round 0
                t0 = clock()
                opt.zero_grad(set_to_none=True)
                m(images, targets)["loss"].backward()
                opt.step()
                dt = clock() - t0
                if r > 0 or i > 0:
                    best[v] = min(best[v], dt)
    print(f"{'variant':22} {'best s/step':>12} {'img/s':>8} {'vs gfl_mbv2':>12}")
    base = best.get("gfl_mbv2")
    for v in names:
        rel = f"{base / best[v]:.2f}x" if base else "-"
        print(f"{v:22} {best[v]:12.3f} {a.batch_size / best[v]:8.2f} {rel:>12}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
