"""Synthetic CDH-MRI generation speed: images per second at 256 px on one CPU core.

Runs the full ``meddet data synth`` path (sampling, rendering, acquisition simulation, PNG
encoding and writing, COCO JSON) through :func:`meddet.data.generate_dataset`, pinned to one
core with BLAS/OpenMP threads limited to 1, and prints the best and median of several runs.
Wall-clock rates suffer when other processes share the core; the CPU-time rate (process time
of this single-threaded run) is the figure to compare across loaded machines.

Usage::

    python benchmarks/bench_synth.py [--images 300] [--size 256] [--repeats 3] [--phantom v2]
"""

from __future__ import annotations

import os

# Limit every thread pool before numpy/torch load: the figure is for one core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

from meddet.data import generate_dataset
from meddet.data.generate import DEFAULT_PHANTOM, PHANTOMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per run (all train)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phantom", choices=sorted(PHANTOMS), default=DEFAULT_PHANTOM)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rates, cpu_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "warmup", num_train=5, num_val=0, num_test=0, size=args.size,
                         phantom=args.phantom)
        for r in range(args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            generate_dataset(Path(tmp) / f"run{r}", num_train=args.images, num_val=0, num_test=0,
                             size=args.size, seed=r, phantom=args.phantom)
            rates.append(args.images / (time.perf_counter() - start))
            cpu_rates.append(args.images / (time.process_time() - cpu))
    print(f"meddet data synth --phantom {args.phantom}, {args.size} px, {args.images} images x {args.repeats} runs, "
          f"1 core ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible)")
    print(f"wall clock: best {max(rates):.1f} images/s, median {statistics.median(rates):.1f}")
    print(f"CPU time:   best {max(cpu_rates):.1f} images/s, "
          f"median {statistics.median(cpu_rates):.1f}")


if __name__ == "__main__":
    main()
