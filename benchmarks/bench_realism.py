"""Realism of the synthetic phantom: real vs synthetic sagittal slices, in numbers and a figure.

The real references are the two cervical-spine volumes in ``../shared/data/real-mri/`` (tight
crops at 1 mm): the nine sagittal slices around the middle of each, read upright with
:mod:`meddet.inference.readers`. Synthetic slices are compared on *matched crops*: from each
phantom image a window of the real slice's physical size (mm) is cut around the spinal canal
at the level of the disc nearest the image centre, point-sampled every 1 mm, and normalised the way
the dataset loader normalises (percentile 0.5-99.5 clip to [0, 1]); the real slices get the
same normalisation. Statistics: :func:`meddet.data.realism.compare`.

Usage::

    python benchmarks/bench_realism.py [--images 60] [--phantom v1 v2] [--figure out.png]
        [--json out.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meddet.data import generate
from meddet.data.realism import compare
from meddet.data.synth import REF_PIXEL_MM, REF_SIZE
from meddet.data.transforms import normalize_intensity
from meddet.inference.readers import SliceSpec, discover_inputs, iter_slices

REAL_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-mri"
REAL = {"T2": "sct_t2_cervical.nii.gz", "T1w": "sct_t1w_cervical.nii.gz"}
HALF = 4  # slices on each side of the middle one


def real_slices(name: str, root: Path = REAL_DIR) -> list[np.ndarray]:
    """The 2·HALF + 1 middle sagittal slices of a real volume, upright, at 1 mm (raw units)."""
    src = discover_inputs([root / REAL[name]])[0]
    n = sum(1 for _ in iter_slices(src, SliceSpec("all")))
    spec = SliceSpec("list", tuple(range(n // 2 - HALF, n // 2 + HALF + 1)))
    return [s.array for s in iter_slices(src, spec)]


def canal_centre(case, rendered) -> tuple[float, float] | None:
    """Image (x, y) of the canal centre at the level of the disc nearest the image centre."""
    boxes = rendered.boxes[(rendered.boxes[:, 2] > rendered.boxes[:, 0])]
    if not len(boxes):
        return None
    n = case.size
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    cx, cy = centres[np.argmin(((centres - n / 2) ** 2).sum(1))]
    s0 = rendered.s[int(cy), int(cx)]
    cost = (rendered.s - s0) ** 2 + (rendered.d - case.canal / 2) ** 2
    y, x = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return float(x) + 0.5, float(y) + 0.5


def matched_crop(case, rendered, shape_mm: tuple[int, int]) -> np.ndarray | None:
    """A ``shape_mm`` (rows, cols) window around the canal, sampled every 1 mm; None if it
    does not fit inside the image.

    Each 1 mm sample takes the nearest image pixel (no averaging), so the noise and texture
    of the image's own pixels are compared, at the anatomy's physical scale.
    """
    centre = canal_centre(case, rendered)
    if centre is None:
        return None
    mm = REF_PIXEL_MM * REF_SIZE / case.size / case.scale  # anatomical mm per image pixel
    h, w = shape_mm[0] / mm, shape_mm[1] / mm
    x0, y0 = centre[0] - w / 2, centre[1] - h / 2
    if x0 < 0 or y0 < 0 or x0 + w > case.size or y0 + h > case.size:
        return None
    xs = np.clip((x0 + (np.arange(shape_mm[1]) + 0.5) / mm).astype(int), 0, case.size - 1)
    ys = np.clip((y0 + (np.arange(shape_mm[0]) + 0.5) / mm).astype(int), 0, case.size - 1)
    return rendered.image[np.ix_(ys, xs)]


def synthetic(phantom: str, count: int, size: int, seed: int):
    """``count`` (case, rendered) pairs of the train split of ``seed``."""
    return [generate.make_image(seed, "train", i, size=size, phantom=phantom)
            for i in range(count)]


def _tile(img: np.ndarray, height: int) -> Image.Image:
    arr = (normalize_intensity(img) * 255).astype(np.uint8)
    im = Image.fromarray(arr)
    return im.resize((max(1, round(im.width * height / im.height)), height),
                     Image.Resampling.LANCZOS)


def figure(rows: list[tuple[str, list[np.ndarray]]], path: Path, height: int = 150) -> None:
    """A grey PNG grid: one labelled row per (title, images)."""
    tiles = [[_tile(im, height) for im in ims] for _, ims in rows]
    label_h, gap = 16, 4
    width = max(sum(t.width + gap for t in row) for row in tiles) + gap
    canvas = Image.new("L", (width, len(rows) * (height + label_h + gap) + gap), 255)
    draw = ImageDraw.Draw(canvas)
    y = gap
    for (title, _), row in zip(rows, tiles):
        draw.text((gap, y), title, fill=0)
        x = gap
        for t in row:
            canvas.paste(t, (x, y + label_h))
            x += t.width + gap
        y += height + label_h + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="synthetic images per phantom")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantom", nargs="+", default=list(generate.PHANTOMS))
    parser.add_argument("--real-dir", type=Path, default=REAL_DIR)
    parser.add_argument("--figure", type=Path, default=None, help="write the side-by-side PNG")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()

    start = time.perf_counter()
    real = {k: real_slices(k, args.real_dir) for k in REAL}
    real_norm = {k: [normalize_intensity(a) for a in v] for k, v in real.items()}
    results: dict[str, dict] = {}
    samples: dict[str, list] = {}
    for ph in args.phantom:
        pairs = synthetic(ph, args.images, args.size, args.seed)
        samples[ph] = pairs
        for k, ref in real.items():
            crops = [matched_crop(c, r, ref[0].shape) for c, r in pairs]
            ok = [normalize_intensity(c) for c in crops if c is not None]
            rep = compare(real_norm[k], ok)
            results[f"{ph} vs {k}"] = {**rep.as_dict(), "skipped": len(crops) - len(ok)}

    print(f"real vs synthetic slices: {args.images} phantom images per phantom at {args.size} "
          f"px, seed {args.seed}; real: {2 * HALF + 1} middle sagittal slices per volume; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {time.perf_counter() - start:.0f} s")
    cols = ("intensity_w1", "intensity_intersection", "intensity_w1_median", "slope_real",
            "slope_synth", "spectrum_distance", "texture_w1", "skipped")
    print("| comparison | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else
                                          str(r[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.figure:
        rows = [("real T2 (spinalcordtoolbox test data, MIT)", real["T2"][::2]),
                ("real T1w (spinalcordtoolbox test data, MIT)", real["T1w"][::2])]
        for ph, pairs in samples.items():
            crops = [matched_crop(c, r, real["T1w"][0].shape) for c, r in pairs]
            rows.append((f"phantom {ph}: 77x76 mm crops around the canal, 1 mm",
                         [c for c in crops if c is not None][:5]))
            rows.append((f"phantom {ph}: whole images", [r.image for _, r in pairs[:5]]))
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
