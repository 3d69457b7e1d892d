"""How far a detector tells the classes apart at the objects it finds.

For every ground-truth box of a split, the highest score that each class's detections reach
among those overlapping the box at IoU > 0.5 (0 when none does), averaged per ground-truth
class. A detector that finds the objects but has not learned the classes gives each class
channel about the same mean score at every object; one that separates them scores the true
class's channel higher. Detections down to ``--score-thr`` (default 0.01) are kept.

Usage::

    python benchmarks/class_separation.py RUN/last.pt --data D --split val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from meddet.inference import Predictor


def class_scores(pred: Predictor, data: Path, split: str) -> dict[str, tuple[int, list[float]]]:
    """Per ground-truth class: its object count and the mean best score of each detection
    class (see the module docstring)."""
    ann = json.loads((data / "annotations" / f"{split}.json").read_text())
    cats = {c["id"]: c["name"] for c in ann["categories"]}
    by_image: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    ncls = len(pred.class_names)
    best: dict[str, list[list[float]]] = {name: [] for name in cats.values()}
    for img in ann["images"]:
        arr = np.asarray(Image.open(data / "images" / split / img["file_name"]).convert("L"),
                         dtype=np.float32)
        mm = img.get("pixel_mm")
        det = pred.predict_arrays([arr], [(mm, mm) if mm else None])[0]
        boxes = torch.as_tensor(np.asarray(det["boxes"], dtype=np.float32)).reshape(-1, 4)
        labels = np.asarray(det["labels"], dtype=int)
        scores = np.asarray(det["scores"], dtype=float)
        for a in by_image.get(img["id"], []):
            x, y, w, h = a["bbox"]
            iou = box_iou(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32), boxes)[0]
            hit = iou.numpy() > 0.5
            best[cats[a["category_id"]]].append(
                [float(scores[hit & (labels == c)].max(initial=0.0)) for c in range(ncls)])
    return {gt: (len(rows), np.asarray(rows).mean(axis=0).tolist() if rows else [])
            for gt, rows in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--score-thr", type=float, default=0.01)
    args = ap.parse_args()
    pred = Predictor.from_checkpoint(args.checkpoint, score_thr=args.score_thr)
    result = class_scores(pred, args.data, args.split)
    print(f"{args.checkpoint} on {args.data} {args.split}: mean best score of each class's "
          "detections at the ground-truth boxes")
    print("| ground truth | boxes | " + " | ".join(pred.class_names) + " |")
    print("|---|---:|" + "---:|" * len(pred.class_names))
    for gt, (n, means) in result.items():
        print(f"| {gt} | {n} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
