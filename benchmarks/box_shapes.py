"""The shapes of disc boxes: synthetic data sets against the hand-labelled real slices.

For each data set (a ``meddet data synth`` folder; its image records carry ``pixel_mm``) the
percentiles of its training boxes' height in millimetres, height ÷ width, and height ÷ level
spacing (the distance between the centres of neighbouring discs of the same image: how much of
a vertebral level the box takes, whatever the scale); then the same of the hand-labelled discs
of the real volumes that ``meddet check-real`` scores (1 mm voxels), per volume. A detector regresses boxes within the shapes it was trained on: when the real
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


def level_ratios(boxes: np.ndarray) -> np.ndarray:
    """Height ÷ level spacing of each box of one image (``[N, 4]`` xyxy) that has a neighbour:
    its height over the distance between its centre and the nearest other box's centre (discs
    of one image are one per level)."""
    if len(boxes) < 2:
        return np.zeros(0)
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1))
    np.fill_diagonal(dist, np.inf)
    return (boxes[:, 3] - boxes[:, 1]) / dist.min(1)


def synthetic_shapes(data: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heights (mm), height ÷ width and height ÷ level spacing of the boxes of ``data``'s
    ``split``."""
    doc = json.loads((Path(data) / "annotations" / f"{split}.json").read_text())
    mm = {im["id"]: im.get("pixel_mm") for im in doc["images"]}
    h, r, by_image = [], [], {}
    for a in doc["annotations"]:
        px = mm[a["image_id"]]
        if px is None:
            continue
        x, y, w, hh = a["bbox"]
        h.append(hh * float(px))
        r.append(hh / w)
        by_image.setdefault(a["image_id"], []).append([x, y, x + w, y + hh])
    lv = [level_ratios(np.asarray(b, float)) for b in by_image.values()]
    return np.asarray(h), np.asarray(r), np.concatenate(lv) if lv else np.zeros(0)


def real_shapes(spacing_mm: float = 1.0
                ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per volume: heights (mm), height ÷ width and height ÷ level spacing of its labelled
    discs not cut by the field of view (the cut ones still count as neighbours)."""
    out: dict[str, tuple[list, list, list]] = {}
    for sl in load_real_disc_labels():
        h, r, lv = out.setdefault(sl.volume, ([], [], []))
        whole = ~np.asarray(sl.truncated, bool)
        for box in sl.boxes[whole]:
            w, hh = box[2] - box[0], box[3] - box[1]
            h.append(hh * spacing_mm)
            r.append(hh / w)
        lv.extend(level_ratios(sl.boxes)[whole])
    return {k: tuple(np.asarray(v) for v in vs) for k, vs in out.items()}


def percentiles(v: np.ndarray) -> str:
    """``p1 / p5 / ...`` of ``v`` at :data:`PCTS`, two decimals."""
    return " / ".join(f"{x:.2f}" for x in np.percentile(v, PCTS))


def row(name: str, h: np.ndarray, r: np.ndarray, lv: np.ndarray) -> str:
    """A Markdown table row: name, count, height, height ÷ width and height ÷ level spacing
    percentiles."""
    return f"| {name} | {len(h)} | {percentiles(h)} | {percentiles(r)} | {percentiles(lv)} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--split", default="train")
    a = ap.parse_args()
    pct = " / ".join(f"p{q}" for q in PCTS)
    print(f"| boxes | n | height mm ({pct}) | height ÷ width ({pct}) | height ÷ level spacing "
          f"({pct}) |")
    print("|---|---:|---|---|---|")
    for d in a.data:
        print(row(f"{d.name} ({a.split})", *synthetic_shapes(d, a.split)))
    for vol, shapes in real_shapes().items():
        print(row(f"{vol} (hand-labelled)", *shapes))


if __name__ == "__main__":
    main()
