"""Realism of the synthetic phantom: real vs synthetic sagittal slices, in numbers and a figure.

The real references are the two cervical-spine volumes in ``../shared/data/real-mri/`` (tight
crops at 1 mm): the nine sagittal slices around the middle of each, read upright with
:mod:`meddet.inference.readers`. Synthetic slices are compared on *matched crops*: from each
phantom image a window of the real slice's physical size (mm) is cut around the spinal canal
at the level of the disc nearest the image centre, point-sampled every 1 mm
(:func:`meddet.data.realism.matched_crop`), and normalised the way the dataset loader
normalises (percentile 0.5-99.5 clip to [0, 1]); the real slices get the same normalisation.
Statistics: :func:`meddet.data.realism.compare`.

Usage::

    python benchmarks/bench_realism.py [--images 60] [--phantom v1 v2] [--figure out.png]
        [--json out.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meddet.data import generate
from meddet.data.realism import compare, matched_crop
from meddet.data.synth import severity_from_unit, with_protrusion
from meddet.data.transforms import normalize_intensity
from meddet.inference.readers import SliceSpec, discover_inputs, iter_slices

REAL_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-mri"
REAL = {"T2": "sct_t2_cervical.nii.gz", "T1w": "sct_t1w_cervical.nii.gz"}
HALF = 4  # slices on each side of the middle one
# Contrast families of the default phantom that resemble each real volume (the "T1w" volume
# has bright discs, dark bodies and a grey canal: closest to the T1-like and random draws).
SAME_FAMILY = {"T2": ("t2", "t2_fatsat"), "T1w": ("t1", "random")}


def real_slices(name: str, root: Path = REAL_DIR) -> list[np.ndarray]:
    """The 2·HALF + 1 middle sagittal slices of a real volume, upright, at 1 mm (raw units)."""
    src = discover_inputs([root / REAL[name]])[0]
    n = sum(1 for _ in iter_slices(src, SliceSpec("all")))
    spec = SliceSpec("list", tuple(range(n // 2 - HALF, n // 2 + HALF + 1)))
    return [s.array for s in iter_slices(src, spec)]


def synthetic(phantom: str, count: int, size: int, seed: int):
    """``count`` (case, rendered) pairs of the train split of ``seed``."""
    return [generate.make_image(seed, "train", i, size=size, phantom=phantom)
            for i in range(count)]


def herniation_visibility(phantom: str, count: int, size: int, seed: int) -> np.ndarray:
    """How visible a protrusion is: d' = ||B - A|| / sigma for ``count`` herniated discs.

    A is a phantom image without protrusions, B the same case (same noise seed) with one disc
    herniated (depth drawn as the generator draws it), so their difference is what the
    herniation changes after blur, shading and noise; sigma is the image noise, from the
    difference of A and the same case under another noise seed. Lower is harder.
    """
    mod = generate.PHANTOMS[phantom]
    out = []
    for i in range(count):
        rng = generate.image_rng(seed, "test", i)
        case = mod.sample_case(rng, size, protrusion_rate=0.0)
        k = 2 + i % 3  # C4/5, C5/6, C6/7
        depth = severity_from_unit(rng.uniform()) / case.scale
        discs = list(case.discs)
        discs[k] = with_protrusion(discs[k], depth, rng)
        herniated = dataclasses.replace(case, discs=tuple(discs))
        other = dataclasses.replace(case, acquisition=dataclasses.replace(
            case.acquisition, seed=case.acquisition.seed + 1))
        a = mod.render_case(case)
        if a.boxes[k, 2] <= a.boxes[k, 0]:  # the disc is out of view
            continue
        b, c = mod.render_case(herniated).image, mod.render_case(other).image
        tissue = (a.image > 0.05) & (c > 0.05)
        sigma = float(np.std((a.image - c)[tissue])) / np.sqrt(2)
        out.append(float(np.sqrt(np.square(b - a.image).sum())) / max(sigma, 1e-6))
    return np.asarray(out)


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
            # A phantom with several contrast families: also the family that matches.
            family = SAME_FAMILY[k]
            same = [normalize_intensity(crop) for crop, (c, _) in zip(crops, pairs)
                    if crop is not None and getattr(c.tissue, "contrast", None) in family]
            if same:
                rep = compare(real_norm[k], same)
                results[f"{ph} ({'/'.join(family)} only) vs {k}"] = {**rep.as_dict(),
                                                                     "skipped": 0}

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
    print("\nprotrusion visibility d' (herniation signal / noise; lower is harder), "
          f"{args.images} herniated discs per phantom:")
    print("| phantom | median | 25th pct | 75th pct | share below 5 |")
    print("|---|---|---|---|---|")
    for ph in args.phantom:
        vis = herniation_visibility(ph, args.images, args.size, args.seed)
        q1, q2, q3 = np.percentile(vis, (25, 50, 75))
        print(f"| {ph} | {q2:.1f} | {q1:.1f} | {q3:.1f} | {(vis < 5).mean():.2f} |")
        results[f"{ph} visibility"] = {"median": q2, "p25": q1, "p75": q3,
                                       "below5": float((vis < 5).mean()), "n": int(vis.size)}
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
