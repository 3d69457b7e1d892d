"""Parameters, GFLOPs and speed of the paper's Table II models, from Python.

    python examples/04_benchmark.py [--models gfl_r50,meddet] [--img-size 512] [--iters 5]

GFLOPs are fvcore counts (one multiply-add = one FLOP, like the paper); speed is forward +
post-processing on random weights, the median of interleaved rounds (the speed-up is the ratio
of medians, its range over the rounds in brackets).
"""

from __future__ import annotations

import argparse
import os

from meddet.benchmark import TABLE2_PAPER, benchmark_models, relative_to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gfl_r50,gfl_r101,gfl_r152,meddet")
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.0, help="seconds of timing per model")
    ap.add_argument("--out", default=None, help="unused; accepted like the other examples")
    args = ap.parse_args()
    threads = None if "OMP_NUM_THREADS" in os.environ else min(2, os.cpu_count() or 1)

    names = args.models.split(",")
    result = benchmark_models(names, img_size=args.img_size, iters=args.iters, warmup=1,
                              min_time=args.min_time, threads=threads)
    ratios = relative_to(result, names[0])
    print(f"{result['device_name']}, {result['threads']} threads, {args.img_size} px; "
          f"ratios vs {names[0]}")
    for row in result["models"]:
        paper = TABLE2_PAPER.get(row["name"])
        ref = f" (paper {paper[0]:.2f} M, {paper[1]:.2f} GFLOPs at 512 px)" if paper else ""
        r = ratios[row["name"]]
        print(f"{row['name']:16s} {row['params_m']:6.2f} M  {row['gflops']:7.2f} GFLOPs  "
              f"{row['latency_ms_median']:7.1f} ms (min {row['latency_ms_min']:.1f})  "
              f"{row['fps']:6.2f} FPS  speed-up {r['speedup']:.2f}x "
              f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}){ref}")


if __name__ == "__main__":
    main()
