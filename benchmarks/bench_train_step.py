"""Training-step throughput (forward + loss + backward + SGD step) of zoo detectors.

Compares plain GFL-MobileNetV2 with the MedDet student, whose head nmODE² blocks run either
through torchdiffeq (the pre-fused behaviour, ``solver=torchdiffeq``) or the fused solver (the
default), or the interpolated solution table (``solver=table``, opt-in); any other zoo name
is accepted as a variant too. Variants are interleaved over ``--rounds`` so load from other
processes on a shared machine hits all of them alike; the best and the median step per variant
are reported.

``--cpu-amp`` adds a ``+bf16`` twin of every variant whose forward pass runs under bfloat16
autocast on the CPU (what ``train.cpu_amp: true`` does), interleaved with it, and prints the
float32 / bfloat16 ratio of the median steps.

    python benchmarks/bench_train_step.py --img-size 256 --batch-size 4 --threads 2 --iters 3
    python benchmarks/bench_train_step.py --img-size 128 --batch-size 8 --threads 2 --iters 5 \
        --rounds 3 --variants gfl_mbv2,meddet,gfl_r50 --cpu-amp
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
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
    ap.add_argument("--cpu-amp", action="store_true",
                    help="also time every variant under bfloat16 autocast (train.cpu_amp)")
    a = ap.parse_args()
    from meddet.models import build_detector

    torch.set_num_threads(a.threads)
    print(f"{a.img_size} px, batch {a.batch_size}, {a.threads} threads, {a.clock} clock, "
          f"load average {os.getloadavg()}")
    base_names = a.variants.split(",")
    names = [n for v in base_names for n in ((v, v + "+bf16") if a.cpu_amp else (v,))]
    models, opts = {}, {}
    for v in names:
        torch.manual_seed(0)
        zoo, kw = VARIANTS.get(v.removesuffix("+bf16"), (v.removesuffix("+bf16"), {}))
        models[v] = build_detector(zoo, **kw).train()
        opts[v] = torch.optim.SGD(models[v].parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
    targets = _targets(a.batch_size, a.img_size)
    steps: dict[str, list[float]] = {v: [] for v in names}
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    for r in range(a.rounds):
        for v in names:
            m, opt = models[v], opts[v]
            amp = (torch.autocast("cpu", dtype=torch.bfloat16) if v.endswith("+bf16")
                   else contextlib.nullcontext())
            for i in range(a.iters + (1 if r == 0 else 0)):  # one warm-up step in round 0
                t0 = clock()
                opt.zero_grad(set_to_none=True)
                with amp:
                    loss = m(images, targets)["loss"]
                loss.backward()
                opt.step()
                dt = clock() - t0
                if r > 0 or i > 0:
                    steps[v].append(dt)
    best = {v: min(s) for v, s in steps.items()}
    med = {v: statistics.median(s) for v, s in steps.items()}
    print(f"{'variant':22} {'best s/step':>12} {'median':>8} {'img/s':>8} {'vs gfl_mbv2':>12}")
    base = best.get("gfl_mbv2")
    for v in names:
        rel = f"{base / best[v]:.2f}x" if base else "-"
        print(f"{v:22} {best[v]:12.3f} {med[v]:8.3f} {a.batch_size / best[v]:8.2f} {rel:>12}")
    for v in base_names if a.cpu_amp else ():
        print(f"{v}: float32 / bfloat16 autocast, median step: {med[v] / med[v + '+bf16']:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
