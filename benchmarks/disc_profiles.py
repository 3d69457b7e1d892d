"""What delineates a real disc: intensity across the hand-labelled discs of the real slices.

For every labelled disc not cut by the field of view, the mean intensity of each image row over
the box's inner columns (two pixels in from each side), from ``--margin`` rows above the box to
as many below, each slice divided by its own 99th percentile. Per volume it prints the medians
of three parts of that profile: the *body* (the rows beyond the box and its edge rows), the
*edge* (the darkest of the row just outside and the first row inside each side, per side: the
endplate line) and the *disc* (the box's rows between its edge rows). Where the disc is
hardly brighter than the body but the edges are dark, the endplates, not the disc's own signal,
delineate it; ``--rows`` also prints every profile.

Usage::

    python benchmarks/disc_profiles.py [--volumes ../shared/data/real-mri] [--rows]
"""

from __future__ import annotations

import argparse

import numpy as np

from meddet.engine.realcheck import load_real_disc_labels, read_labelled_slices


def profile(img: np.ndarray, box: np.ndarray, margin: int) -> tuple[np.ndarray, int, int]:
    """Row means over the box's inner columns from ``margin`` rows above to ``margin`` below,
    with the profile's indices of the box's first and last row."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    top, bottom = max(0, y0 - margin), min(img.shape[0], y1 + margin)
    cols = slice(x0 + 2, max(x0 + 3, x1 - 2))
    return img[top:bottom, cols].mean(1), y0 - top, y1 - 1 - top


def parts(prof: np.ndarray, first: int, last: int) -> tuple[float, float, float]:
    """(body, edge, disc) of one profile (see the module docstring)."""
    edges = [min(prof[max(first - 1, 0)], prof[first]),
             min(prof[last], prof[min(last + 1, len(prof) - 1)])]
    body = np.r_[prof[:max(first - 1, 0)], prof[last + 2:]]
    inner = prof[first + 1:last] if last - first > 1 else prof[first:last + 1]
    return float(np.median(body)), float(np.median(edges)), float(np.median(inner))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", default=None, help="folder holding the two real volumes "
                    "(default: meddet check-real's)")
    ap.add_argument("--margin", type=int, default=7, help="rows above and below each box")
    ap.add_argument("--rows", action="store_true", help="also print every disc's profile")
    args = ap.parse_args()
    labels = load_real_disc_labels()
    per_volume: dict[str, list[tuple[float, float, float]]] = {}
    for lab, img in zip(labels, read_labelled_slices(labels, args.volumes)):
        img = img.astype(np.float64) / np.percentile(img, 99)
        for box, cut in zip(lab.boxes, lab.truncated):
            if cut:
                continue
            prof, first, last = profile(img, box, args.margin)
            per_volume.setdefault(lab.volume, []).append(parts(prof, first, last))
            if args.rows:
                print(f"{lab.volume} slice {lab.index} rows {int(box[1])}-{int(box[3])}: "
                      + " ".join(f"{v:.2f}" for v in prof))
    print("| volume | discs | body | edge (endplate line) | disc | disc − body | body − edge |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for volume, rows in per_volume.items():
        body, edge, disc = (float(np.median(c)) for c in zip(*rows))
        print(f"| {volume} | {len(rows)} | {body:.3f} | {edge:.3f} | {disc:.3f} | "
              f"{disc - body:+.3f} | {body - edge:+.3f} |")


if __name__ == "__main__":
    main()
