"""Distil the MedDet student from three teachers (AFA + LWFF + AATM) from Python.

    python examples/02_distill.py [--out DIR] [--teachers gfl_r50,gfl_r101,gfl_r152] [--iters 2]

Each teacher is a checkpoint path or a zoo name; a zoo name uses DIR/teachers/<name>/best.pt
from example 01, training it first (briefly) if it is not there. The student checkpoint is
DIR/students/meddet/student.pt: a plain detector that `meddet eval`, `bench` and `predict`
load.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from meddet.config import load_config
from meddet.distill.trainer import distill
from meddet.engine.defaults import pretrain


def teacher_checkpoint(spec: str, out: Path, data: Path, iters: int) -> Path:
    """``spec`` as a checkpoint: a file as is, a zoo name trained (once) like example 01."""
    if Path(spec).is_file():
        return Path(spec)
    run_dir = out / "teachers" / spec
    if not (run_dir / "best.pt").is_file():
        cfg = load_config(None, {
            "data": {"root": str(data), "img_size": 128},
            "model": {"name": spec},
            "train": {"epochs": 1, "batch_size": 2, "max_iters": iters, "warmup_iters": 1,
                      "base_batch_size": 2},
        })
        run_dir.mkdir(parents=True, exist_ok=True)
        pretrain(cfg, run_dir)
    return run_dir / "best.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples", help="working folder (as in example 01)")
    ap.add_argument("--teachers", default="gfl_r50,gfl_r101,gfl_r152",
                    help="comma-separated checkpoints or zoo names")
    ap.add_argument("--student", default="meddet")
    ap.add_argument("--iters", type=int, default=2)
    args = ap.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    out = Path(args.out)
    data = out / "data"
    if not (data / "annotations" / "train.json").is_file():
        from meddet.data import generate_dataset

        generate_dataset(data, num_train=8, num_val=2, num_test=2, size=128, seed=0)
    teachers = [teacher_checkpoint(t, out, data, args.iters) for t in args.teachers.split(",")]

    cfg = load_config(None, {
        "data": {"root": str(data), "img_size": 128},
        "train": {"epochs": 1, "batch_size": 2, "max_iters": args.iters, "warmup_iters": 1,
                  "base_batch_size": 2},
        # eq. 14: sigma * L_det + tau * L_dist + (1 - sigma - tau) * L_adv
        "distill": {"method": "meddet", "student": args.student, "fusion": "lwff",
                    "aatm": True, "sigma": 0.5, "tau": 0.3},
    })
    run_dir = out / "students" / args.student
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = distill(cfg, run_dir, teachers=teachers)
    last = summary["history"][-1]
    split = ", ".join(f"{k} {v:.1f} s" for k, v in summary["time_split"].items())
    print(f"distilled {args.student} from {len(teachers)} teachers in {summary['iters']} "
          f"iterations ({split}); loss_det {last['loss_det']:.3f} loss_dist "
          f"{last['loss_dist']:.3f} loss_adv {last['loss_adv']:.3f}")
    print(f"student: {summary['student']}")


if __name__ == "__main__":
    main()
