"""A contact sheet of dataset images with their boxes and labels, for a person to look at."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from meddet._io import atomic_save
from meddet.data.dataset import CocoDetection
from meddet.errors import MedDetError

# Category colours (RGB), by 0-based label; the synthetic set's protrusion is red,
# non-protrusion green.
_PALETTE = ((235, 64, 52), (64, 200, 90), (66, 135, 245), (245, 190, 40), (190, 80, 220),
            (40, 200, 210))
_MIN_TILE = 256  # small images are enlarged so that boxes and text stay legible


def _tile(ds: CocoDetection, index: int, tile: int, font) -> tuple[Image.Image, np.ndarray]:
    img01, boxes, labels, rec = ds.load_raw(index)
    h, w = img01.shape
    zoom = tile / max(h, w)
    grey = Image.fromarray(np.rint(img01 * 255).astype(np.uint8))
    grey = grey.resize((max(1, round(w * zoom)), max(1, round(h * zoom))),
                       Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (tile, tile))
    canvas.paste(grey.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for box, label in zip(boxes * zoom, labels):
        color = _PALETTE[int(label) % len(_PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=color, width=1)
        name = ds.class_names[int(label)]
        short = "P" if name == "protrusion" else ("N" if name == "non-protrusion" else name[:10])
        draw.text((x1 + 2, y0 - 2), short, fill=color, font=font)
    draw.text((3, 2), str(rec["file_name"]), fill=(255, 255, 0), font=font)
    return canvas, labels


def make_preview(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    n: int = 16,
) -> dict:
    """Draw the first ``n`` images of a split with their boxes into one PNG grid.

    Boxes are coloured by class and tagged with a short label (``P`` protrusion, ``N``
    non-protrusion, otherwise the category name); each tile shows the file name.

    Args:
        root: dataset folder (``images/`` + ``annotations/``).
        out: PNG file to write (atomically).
        split: which split.
        n: number of images (the split's size if smaller).

    Returns:
        ``{"out": str, "images": int, "boxes": int, "classes": {name: count}}``.

    Raises:
        MedDetError: bad dataset or ``n`` < 1, or ``out`` cannot be written.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MedDetError(f"--n must be a positive integer, got {n!r}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise MedDetError(f"preview output {out} must be a .png file (e.g. --out grid.png)")
    ds = CocoDetection(root, split)
    if not len(ds):
        raise MedDetError(f"split {split!r} of {root} has no images to preview")
    count = min(n, len(ds))
    first = ds.coco.imgs[ds.ids[0]]
    tile = max(_MIN_TILE, int(first["width"]), int(first["height"]))
    tile = min(tile, 512)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    font = ImageFont.load_default(size=max(10, tile // 22))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (16, 16, 16))
    totals = {name: 0 for name in ds.class_names}
    n_boxes = 0
    for i in range(count):
        canvas, labels = _tile(ds, i, tile, font)
        sheet.paste(canvas, ((i % cols) * tile, (i // cols) * tile))
        n_boxes += len(labels)
        for label in labels:
            totals[ds.class_names[int(label)]] += 1
    try:
        atomic_save(out, lambda fh: sheet.save(fh, format="PNG"))
    except OSError as exc:
        raise MedDetError(f"cannot write {out}: {exc.strerror or exc}; choose a writable path") from exc
    return {"out": str(out), "images": count, "boxes": n_boxes, "classes": totals}
