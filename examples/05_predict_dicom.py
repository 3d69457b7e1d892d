"""Predict on a folder of DICOM files and write overlays, predictions.json and .csv.

    python examples/05_predict_dicom.py [--out DIR] [--checkpoint CKPT]

Copies pydicom's shipped MR test images into DIR/dicom (a stand-in for a scanner export),
loads the student of example 02 (or CKPT; an untrained `meddet` if neither exists) and runs it
over the folder. Outputs go to DIR/predictions/.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch
from pydicom.data import get_testdata_file

from meddet.inference import Predictor, predict_inputs
from meddet.models import build_detector

TEST_FILES = ("MR_small.dcm", "MR_small_bigendian.dcm")  # 64 x 64 16-bit MR slices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples", help="working folder (as in example 01)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--score-thr", type=float, default=0.05)
    args = ap.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    out = Path(args.out)
    folder = out / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    for name in TEST_FILES:
        src = get_testdata_file(name)
        if src is not None:
            shutil.copy(src, folder / name)

    ckpt = Path(args.checkpoint or out / "students" / "meddet" / "student.pt")
    if ckpt.is_file():
        predictor = Predictor.from_checkpoint(ckpt, score_thr=args.score_thr)
    else:
        print(f"{ckpt} not found: using an untrained meddet (run examples 01-02 first)")
        predictor = Predictor(build_detector("meddet"), ["protrusion", "non-protrusion"],
                              img_size=128, score_thr=args.score_thr)
    summary = predict_inputs(predictor, [folder], out / "predictions", batch_size=2,
                             on_skip=lambda s: print(f"skipped {s.source}: {s.reason}"))
    print(f"{summary.images} image(s) from {summary.inputs} input(s); findings "
          f"{summary.findings}; overlays in {summary.out_dir / 'overlays'}")
    print(f"results: {summary.json_path}, {summary.csv_path}")


if __name__ == "__main__":
    main()
