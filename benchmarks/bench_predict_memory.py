"""Resident memory of ``meddet predict`` and run time of ``meddet eval`` over many small images.

Issue #7 asks that ``meddet predict`` over 2,000 small images keeps its resident memory flat
(growth under 10 % after warm-up) and that ``meddet eval`` on the same count finishes. This
script

1. generates ``--images`` synthetic test images (``meddet data synth``, ``--size`` px);
2. saves a randomly initialised ``--model`` checkpoint (memory does not depend on training);
3. runs ``python -m meddet predict`` on the image folder in a subprocess, sampling its resident
   set size (``VmRSS`` from ``/proc``) and the number of overlays written every 0.1 s;
4. runs ``python -m meddet eval`` on the same split and records its wall time and peak RSS.

Warm-up is the first ``--warmup`` fraction of the images (default 10 %): the RSS when that
many overlays exist is the baseline, and growth is the largest RSS after it relative to it.

Usage (Linux; numbers are for one CPU thread)::

    python benchmarks/bench_predict_memory.py [--images 2000] [--size 128] [--keep DIR]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_sampled(cmd: list[str], count_dir: Path | None) -> tuple[int, float, list[tuple]]:
    """Run ``cmd``; return (exit code, seconds, samples of (t, rss MiB, files in count_dir))."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        n = 0
        if count_dir is not None and count_dir.is_dir():
            n = sum(1 for _ in os.scandir(count_dir))
        if rss is not None:
            samples.append((time.perf_counter() - t0, rss, n))
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode:
        sys.stderr.write(err[-3000:])
    return proc.returncode, time.perf_counter() - t0, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", default="gfl_mbv2")
    ap.add_argument("--img-size", type=int, default=128, help="network input size")
    ap.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the images")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = ap.parse_args()

    import torch

    from meddet.data import generate_dataset
    from meddet.engine.checkpoint import make_meta, save_checkpoint
    from meddet.models import build_detector

    work = args.keep or Path(tempfile.mkdtemp(prefix="meddet-bench-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    t = time.perf_counter()
    if not (data / "annotations" / "test.json").is_file():
        generate_dataset(data, num_train=0, num_val=0, num_test=args.images, size=args.size,
                         seed=0)
    print(f"generated {args.images} images of {args.size} px in {time.perf_counter() - t:.1f}s")
    torch.manual_seed(0)
    model = build_detector(args.model, num_classes=2)
    ckpt = work / "model.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "meta": make_meta(
        model_name=args.model, num_classes=2, class_names=["protrusion", "non-protrusion"],
        img_size=args.img_size)})

    out = work / "predict"
    rc, secs, samples = run_sampled(
        [sys.executable, "-m", "meddet", "predict", str(ckpt), str(data / "images" / "test"),
         "--out", str(out), "--batch-size", "8"], out / "overlays")
    assert rc == 0, f"predict failed with exit code {rc}"
    n_done = json.loads((out / "predictions.json").read_text())["summary"]["images"]
    warm_n = int(args.images * args.warmup)
    base = next((rss for _, rss, n in samples if n >= warm_n), samples[-1][1])
    after = [rss for _, rss, n in samples if n >= warm_n]
    peak_after = max(after) if after else base
    growth = 100 * (peak_after - base) / base
    at = {q: next((rss for _, rss, n in samples if n >= q * args.images), None)
          for q in (0.1, 0.25, 0.5, 0.75, 1.0)}
    print(f"predict: {n_done} images in {secs:.1f}s ({n_done / secs:.1f} img/s); RSS after "
          f"warm-up ({warm_n} images) {base:.0f} MiB, peak after {peak_after:.0f} MiB: growth "
          f"{growth:+.1f} %")
    print("  RSS at " + ", ".join(f"{int(q * 100)} %: {v:.0f} MiB" for q, v in at.items()
                                   if v is not None))

    rc, esecs, esamples = run_sampled(
        [sys.executable, "-m", "meddet", "eval", str(ckpt), "--data", str(data), "--split",
         "test", "--out", str(work / "eval"), "--batch-size", "8"], None)
    assert rc == 0, f"eval failed with exit code {rc}"
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    epeak = max(r for _, r, _ in esamples)
    print(f"eval: {args.images} images in {esecs:.1f}s, peak RSS {epeak:.0f} MiB, "
          f"mAP50 {metrics['mAP50']:.4f} (untrained model)")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, torch {torch.__version__}, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
