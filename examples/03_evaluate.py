"""Evaluate a checkpoint on the test split with pycocotools, clean and under Rician noise.

    python examples/03_evaluate.py [--out DIR] [--checkpoint DIR/students/meddet/student.pt]

Prints the paper's metrics (mAP, mAP50, recall) overall and per class. `meddet eval` runs
the same function and also writes metrics.json, predictions.json and the plots.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from meddet.engine import evaluate_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples", help="working folder (as in example 01)")
    ap.add_argument("--checkpoint", default=None, help="default: the student of example 02")
    ap.add_argument("--noise", default="rician:10", help="evaluation noise (see `meddet eval`)")
    args = ap.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    out = Path(args.out)
    ckpt = Path(args.checkpoint or out / "students" / "meddet" / "student.pt")
    for noise in (None, args.noise):
        res = evaluate_checkpoint(ckpt, data=out / "data", split="test", noise=noise,
                                  batch_size=4)
        m = res.metrics
        print(f"{res.model_name} on {m['num_images']} test images ({noise or 'clean'}): "
              f"mAP {m['mAP']:.4f} mAP50 {m['mAP50']:.4f} recall {m['recall']:.4f}")
        for name, c in res.per_class.items():
            print(f"  {name:15s} AP50 {c['mAP50']:.4f} recall {c['recall']:.4f} "
                  f"({c['num_gt']} boxes)")


if __name__ == "__main__":
    main()
