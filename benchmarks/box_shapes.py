"""The shapes of disc boxes: synthetic data sets against the hand-labelled real slices.

For each data set (a ``meddet data synth`` folder; its image records carry ``pixel_mm``) the
percentiles of its training boxes' height in millimetres and height ÷ width; then the same of
the hand-labelled discs of the real volumes that ``meddet check-real`` scores (1 mm voxels),
per volume. A detector regresses boxes within the shapes it was trained on: when the real
boxes are flatter or thinner than nearly every synthetic one, its boxes on them come out too
tall whatever the image looks like.

Usage::

    python benchmarks/box_shapes.py DATA [DATA ...] [--split train]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from meddet.engine.realcheck import load_real_disc_labels

PCTS = (1, 5, 25, 50, 75)


def synthetic_shapes(data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Heights (mm) and height ÷ width of the boxes of ``data``'s ``split``."""
    doc = json.loads((Path(data) / "annotations" / f"{split}.json").read_text())
    mm = {im["id"]: im.get("pixel_mm") for im in doc["images"]}
    h, r = [], []
    for a in doc["annotations"]:
        px = mm[a["image_id"]]
        if px is None:
            continue
        w, hh = a["bbox"][2], a["bbox"][3]
        h.append(hh * float(px))
        r.append(hh / w)
    return np.asarray(h), np.asarray(r)


def real_shapes(spacing_mm: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per volume: heights (mm) and height ÷ width of its labelled discs not cut by the field
    of view."""
    out: dict[str, tuple[list, list]] = {}
    for sl in load_real_disc_labels():
        h, r = out.setdefault(sl.volume, ([], []))
        for box, cut in zip(sl.boxes, sl.truncated):
            if cut:
                continue
            w, hh = box[2] - box[0], box[3] - box[1]
            h.append(hh * spacing_mm)
            r.append(hh / w)
    return {k: (np.asarray(h), np.asarray(r)) for k, (h, r) in out.items()}


def percentiles(v: np.ndarray) -> str:
    """``p1 / p5 / ...`` of ``v`` at :data:`PCTS`, two decimals."""
    return " / ".join(f"{x:.2f}" for x in np.percentile(v, PCTS))


def row(name: str, h: np.ndarray, r: np.ndarray) -> str:
    """A Markdown table row: name, count, height and ratio percentiles."""
    return f"| {name} | {len(h)} | {percentiles(h)} | {percentiles(r)} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--split", default="train")
    a = ap.parse_args()
    pct = " / ".join(f"p{q}" for q in PCTS)
    print(f"| boxes | n | height mm ({pct}) | height ÷ width ({pct}) |")
    print("|---|---:|---|---|")
    for d in a.data:
        print(row(f"{d.name} ({a.split})", *synthetic_shapes(d, a.split)))
    for vol, (h, r) in real_shapes().items():
        print(row(f"{vol} (hand-labelled)", h, r))


if __name__ == "__main__":
    main()
