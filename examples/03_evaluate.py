"""Evaluate a checkpoint on the test split with pycocotools, clean and under Rician noise.

    python examples/03_evaluate.py [--out DIR] [--checkpoint DIR/students/meddet/student.pt]

Prints the paper's metrics (mAP, mAP50, recall) overall and per class.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from meddet.data import CocoDetection
from meddet.data.noise import parse_noise_spec
from meddet.engine import build_model_from_checkpoint, evaluate_coco, predict_dataset


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
    model, meta = build_model_from_checkpoint(ckpt, "cpu")
    for noise in (None, args.noise):
        ds = CocoDetection(out / "data", "test", img_size=meta["img_size"],
                           corrupt=parse_noise_spec(noise) if noise else None, seed=0)
        results = predict_dataset(model, ds, batch_size=4)   # COCO results list
        m = evaluate_coco(ds.coco, results, ds.class_names, ds.cat_ids)
        print(f"{meta['model_name']} on {len(ds)} test images ({noise or 'clean'}): mAP {m['mAP']:.4f} mAP50 {m['mAP50']:.4f} "
              f"recall {m['recall']:.4f}")
        for name, c in m["per_class"].items():
            print(f"  {name:15s} AP50 {c['mAP50']:.4f} recall {c['recall']:.4f} "
                  f"({c['num_gt']} boxes)")


if __name__ == "__main__":
    main()
