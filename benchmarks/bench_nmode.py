"""nmODE² solver paths side by side: forward + backward time and peak memory.

Each (solver, mode) runs in its own subprocess so that its peak resident memory (Linux
``VmHWM`` growth over the resident size after the input was allocated) is not hidden by an
earlier run; the subprocesses run one after another, interleaved over ``--rounds`` so a burst
of load from other processes on a shared machine hits every solver alike.

    python benchmarks/bench_nmode.py --shape 4,256,64,64 --threads 2 --iters 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SOLVERS = {
    "torchdiffeq": {"solver": "torchdiffeq"},
    "unrolled": {"unrolled": True},
    "fused": {"solver": "fused"},
    "table": {"solver": "table"},
}


def _child(solver: str, mode: str, shape: list[int], threads: int, iters: int,
           clock_name: str) -> dict:
    import torch

    from meddet.benchmark import PeakRss
    from meddet.models.nmode import NmODE2

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = 2 * torch.randn(*shape)
    m = NmODE2(**SOLVERS[solver])

    def step() -> None:
        if mode == "train":
            xr = x.detach().requires_grad_()
            m(xr).sum().backward()
        else:
            with torch.inference_mode():
                m(x)

    step()  # warm-up (allocator, lazy imports)
    mem = PeakRss()
    mem.start()
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    times = []
    for _ in range(iters):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return {"solver": solver, "mode": mode, "ms_min": 1000 * min(times),
            "ms_mean": 1000 * sum(times) / len(times), "peak_mb": mem.peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,256,64,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time (all threads), robust to other processes' load "
                         "on a shared machine; use with --threads 1 (idle OpenMP threads spin)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--modes", default="train,infer")
    ap.add_argument("--child", nargs=2, metavar=("SOLVER", "MODE"))
    a = ap.parse_args()
    shape = [int(v) for v in a.shape.split(",")]
    if a.child:
        print(json.dumps(_child(a.child[0], a.child[1], shape, a.threads, a.iters, a.clock)))
        return
    print(f"shape {shape}, {a.threads} threads, {a.clock} clock, "
          f"load average {os.getloadavg()}")
    best: dict[tuple[str, str], dict] = {}
    for _ in range(a.rounds):
        for mode in a.modes.split(","):
            for solver in a.solvers.split(","):
                out = subprocess.run(
                    [sys.executable, __file__, "--shape", a.shape, "--threads", str(a.threads),
                     "--iters", str(a.iters), "--clock", a.clock, "--child", solver, mode],
                    check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                key = (solver, mode)
                if key not in best or row["ms_min"] < best[key]["ms_min"]:
                    best[key] = row
    print(f"{'mode':6} {'solver':12} {'min ms':>9} {'mean ms':>9} {'peak MB':>9}")
    for (solver, mode), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{mode:6} {solver:12} {r['ms_min']:9.1f} {r['ms_mean']:9.1f} "
              f"{r['peak_mb'] or float('nan'):9.0f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
