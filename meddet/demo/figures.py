"""``preview.png``: what a demo model detects on test images, beside the ground truth.

(``curves.png`` is :func:`meddet.engine.plots.plot_training_curves` of every model.)"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddet._io import atomic_save


def preview(checkpoint: Path, root: Path, out: Path, *, n: int, device: torch.device,
            score_thr: float = 0.05, max_boxes: int = 8) -> dict[str, Any]:
    """``preview.png``: a grid of test images with the model's top detections (coloured) and
    the ground truth (white); at reduced training the scores are low, hence the low threshold.

    Args:
        checkpoint: the model to show.
        root: the dataset folder (its ``test`` split is drawn).
        out: the PNG to write.
        n: images in the grid (at most the split's size), 4 per row.
        device: where the model runs.
        score_thr: detections below this are not drawn.
        max_boxes: at most this many detections per image, highest scores first.

    Returns:
        ``{"file", "model", "images", "score_thr", "detections_shown": [per image]}``.
    """
    from PIL import Image, ImageDraw

    from meddet.data import CocoDetection
    from meddet.engine import build_model_from_checkpoint
    from meddet.inference import Predictor
    from meddet.inference.overlay import render_overlay

    model, meta = build_model_from_checkpoint(checkpoint, device)
    predictor = Predictor(model, meta["class_names"], img_size=int(meta["img_size"]),
                          device=device, score_thr=score_thr)
    ds = CocoDetection(root, "test", img_size=int(meta["img_size"]), train=False)
    count = min(n, len(ds))
    raws = [ds.load_raw(i) for i in range(count)]
    dets = predictor.predict_arrays([r[0] for r in raws])
    tiles = []
    for (img01, gt_boxes, _, rec), det in zip(raws, dets):
        k = min(max_boxes, len(det["scores"]))
        png = render_overlay(img01, det["boxes"][:k], det["scores"][:k], det["labels"][:k],
                             predictor.class_names)
        tile = Image.open(io.BytesIO(png)).convert("RGB")
        zoom = tile.size[0] / img01.shape[1]
        draw = ImageDraw.Draw(tile)
        for box in np.asarray(gt_boxes) * zoom:
            draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
        draw.text((4, tile.size[1] - 14), str(rec["file_name"]), fill=(255, 255, 0))
        tiles.append(tile)
    side = max(t.size[0] for t in tiles)
    cols = min(len(tiles), 4)
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new("RGB", (cols * side, rows * side))
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * side, (i // cols) * side))
    atomic_save(out, lambda fh: grid.save(fh, format="PNG"))
    return {"file": out.name, "model": meta["model_name"], "images": count,
            "score_thr": score_thr, "detections_shown": [min(max_boxes, len(d["scores"]))
                                                         for d in dets]}

