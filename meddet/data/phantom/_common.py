"""What every phantom shares: the label set, disc findings, and the rendering primitives.

Lengths are in *reference pixels*: pixels of a 256 px image of an unzoomed phantom, about
0.8 mm. Primitives work on signed distances (negative inside a shape) and turn them into
coverages anti-aliased over one image pixel (``px`` image pixels per reference pixel), which is
the partial-volume effect of the shape's edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REF_SIZE = 256
REF_PIXEL_MM = 0.8  # millimetres per reference pixel
VERTEBRAE = ("C2", "C3", "C4", "C5", "C6", "C7", "T1")
DISC_NAMES = ("C2/3", "C3/4", "C4/5", "C5/6", "C6/7", "C7/T1")
CATEGORIES = ({"id": 1, "name": "protrusion"}, {"id": 2, "name": "non-protrusion"})
PROTRUSION_ID = 1
NON_PROTRUSION_ID = 2

# Smallest herniation depth, in pixels of a 256 px image: the task's "subtle bulge of one or
# two pixels". Normal discs stay within ±NORMAL_CONTOUR of the body line, so the classes are
# separated by geometry, not by a threshold on noisy pixels.
MIN_SEVERITY = 1.0
MAX_SEVERITY = 10.0
NORMAL_CONTOUR = 0.3


@dataclass(frozen=True)
class Disc:
    """One intervertebral disc; lengths in reference pixels."""

    height: float  # craniocaudal height between the endplates
    degeneration: float  # 0 healthy ... 1 severe: darker nucleus, thinner disc
    contour: float  # posterior bulge (+) or concavity (-) of the disc margin, |.| <= 0.3
    protrusion: float = 0.0  # depth of herniated material posterior to the body line; 0 = none
    protrusion_halfwidth: float = 0.0  # craniocaudal half-extent of the herniation
    protrusion_shift: float = 0.0  # craniocaudal migration of the herniation centre (+ = down)
    protrusion_shape: float = 0.5  # profile exponent: 0.5 round extrusion ... 1 broad bulge

    @property
    def is_protrusion(self) -> bool:
        """The label: herniated disc material beyond the posterior body line."""
        return self.protrusion > 0


def severity_from_unit(x: float) -> float:
    """Map a uniform draw in [0, 1] to a herniation depth in pixels at 256 px.

    Skewed towards small values so that subtle, hard bulges are common (about a third are
    below 2 px) while extrusions that indent the cord still occur.
    """
    return MIN_SEVERITY + (MAX_SEVERITY - MIN_SEVERITY) * float(x) ** 2.2


def with_protrusion(disc: Disc, depth: float, rng: np.random.Generator | None = None) -> Disc:
    """Return ``disc`` with a posterior herniation of ``depth`` reference pixels.

    Shallow ones are broad-based bulges confined to the disc space; deep ones (> 5 px) are
    rounder extrusions that may migrate up or down behind a vertebral body. ``rng`` draws the
    shape; None gives a fixed mid-range shape.
    """
    u = rng.uniform if rng is not None else (lambda lo=0.0, hi=1.0: (lo + hi) / 2)
    half = disc.height / 2
    if depth > 5:
        width = half + u(1.5, 4.5)
        shift = u(-3.0, 3.0)
        shape = u(0.4, 0.6)
    else:
        width = half + u(0.5, 2.0)
        shift = u(-1.0, 1.0)
        shape = u(0.6, 1.0)
    return Disc(
        height=disc.height,
        degeneration=disc.degeneration,
        contour=disc.contour,
        protrusion=float(depth),
        protrusion_halfwidth=float(width),
        protrusion_shift=float(shift),
        protrusion_shape=float(shape),
    )


def without_protrusion(disc: Disc) -> Disc:
    """Return ``disc`` with its herniation removed (contour, height, degeneration kept)."""
    return Disc(height=disc.height, degeneration=disc.degeneration, contour=disc.contour)


def quantize(image: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Convert a [0, 1] image to ``uint8`` (bit_depth 8) or ``uint16`` (bit_depth 16)."""
    top = 255 if bit_depth == 8 else 65535
    out = np.rint(np.clip(image, 0, 1) * np.float32(top))
    return out.astype(np.uint8 if bit_depth == 8 else np.uint16)


# ---------------------------------------------------------------------------------------------
# Rendering primitives. Images are rendered in strips of rows so that each temporary array
# stays small (<= 64 KB): full-image temporaries of 256 KB and more fall out of the CPU cache
# and, worse, are served by fresh mmap'ed pages from the allocator, which made rendering about
# three times slower.

STRIP_PIXELS = 16384


def soft(sdf, px):
    """Coverage of a shape from its signed distance (negative inside)."""
    # In place, with bare ufuncs: this is the renderer's most frequent call, and np.clip's
    # Python wrapper and temporaries cost more than the arithmetic on a strip.
    out = sdf * np.float32(-px)
    out += np.float32(0.5)
    np.maximum(out, np.float32(0.0), out=out)
    return np.minimum(out, np.float32(1.0), out=out)


def band(x, lo, hi, px):
    """Coverage of ``lo <= x <= hi`` (``lo``/``hi`` scalars or arrays)."""
    return np.minimum(soft(lo - x, px), soft(x - hi, px))


def rrect_sdf(a, b, ha, hb, r):
    """Signed distance to a rounded rectangle centred at 0 with half-sizes ``ha``, ``hb``."""
    qa = np.abs(a) - (ha - r)
    qb = np.abs(b) - (hb - r)
    outside = np.sqrt(np.square(np.clip(qa, 0, None)) + np.square(np.clip(qb, 0, None)))
    return outside + np.clip(np.maximum(qa, qb), None, 0) - r


def paint(img, mask, value) -> None:
    """Alpha-composite ``value`` over ``img`` with coverage ``mask`` (in place)."""
    img += mask * (value - img)


def nearest(x, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centres`` for every element of ``x``.

    A sum of comparisons against the midpoints; for a handful of centres this is several times
    faster than ``np.searchsorted`` on float32 grids.
    """
    idx = np.zeros(x.shape, np.intp)
    for mid in (centres[1:] + centres[:-1]) / 2:
        idx += x > np.float32(mid)
    return idx


def columns(keep: np.ndarray) -> tuple[slice, slice] | None:
    """Index of the strip's columns from the first to the last True of ``keep``."""
    cols = np.flatnonzero(keep)
    if not cols.size:
        return None
    return slice(None), slice(int(cols[0]), int(cols[-1]) + 1)


def label_boxes(label: np.ndarray, n: int = len(DISC_NAMES)) -> np.ndarray:
    """Tight ``xyxy`` pixel-edge boxes of a disc label map (``k + 1`` = disc ``k``), one row
    per disc; all zeros for a disc that is not in the map."""
    boxes = np.zeros((n, 4), np.float32)
    for k in range(n):
        m = label == k + 1
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes
