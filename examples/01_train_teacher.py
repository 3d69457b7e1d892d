"""Build and train a teacher detector from Python (no CLI).

    python examples/01_train_teacher.py [--out DIR] [--model gfl_r50] [--iters 2]

Makes a tiny synthetic CDH-MRI data set in DIR/data (if missing), trains one zoo detector on it
with the engine's standard loop (hooks for LR schedule, evaluation, checkpoints, curves) and
prints its validation metrics. The checkpoint is DIR/teachers/<model>/best.pt. The paper's
teachers are gfl_r50, gfl_r101 and gfl_r152; at the sizes used here this takes seconds and
learns nothing useful: use `--config paper` sizes on a GPU for real training.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from meddet.config import load_config
from meddet.data import generate_dataset
from meddet.engine.defaults import pretrain


def ensure_data(root: Path, *, img_size: int = 128) -> Path:
    """A tiny synthetic data set (8 train / 2 val / 2 test images), generated once."""
    if not (root / "annotations" / "train.json").is_file():
        generate_dataset(root, num_train=8, num_val=2, num_test=2, size=img_size, seed=0)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples", help="working folder")
    ap.add_argument("--model", default="gfl_r50", help="zoo name, e.g. gfl_r50, gfl_mbv2")
    ap.add_argument("--iters", type=int, default=2, help="training iterations")
    ap.add_argument("--img-size", type=int, default=128)
    args = ap.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    out = Path(args.out)
    data = ensure_data(out / "data")
    # Schema defaults < overrides, exactly as `meddet pretrain-teacher` resolves its flags.
    cfg = load_config(None, {
        "data": {"root": str(data), "img_size": args.img_size},
        "model": {"name": args.model},
        "train": {"epochs": 1, "batch_size": 2, "max_iters": args.iters, "warmup_iters": 1,
                  "base_batch_size": 2, "device": "cpu"},
    })
    run_dir = out / "teachers" / args.model
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = pretrain(cfg, run_dir)  # pass console=rich.console.Console() for progress bars
    last = summary["history"][-1]
    print(f"{args.model}: {summary['iters']} iterations in {summary['seconds']:.1f} s; "
          f"val mAP {last['mAP']:.4f} mAP50 {last['mAP50']:.4f} recall {last['recall']:.4f}")
    print(f"checkpoint: {summary['best']}")


if __name__ == "__main__":
    main()
