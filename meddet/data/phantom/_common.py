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


# Lower cervical discs degenerate more often (C2/3 ... C7/T1); the protrusion draw ignores it.
_DEGENERATION_BIAS = (0.15, 0.2, 0.3, 0.45, 0.45, 0.25)


def sample_disc(rng: np.random.Generator, k: int, *, height_range: tuple[float, float],
                contour_scale: float, scale: float, protrusion_rate: float) -> Disc:
    """Draw disc ``k`` (0 = C2/3): degeneration, height, contour and, with probability
    ``protrusion_rate``, a protrusion whose depth (:func:`severity_from_unit`, pixels at
    256 px) is divided by the zoom ``scale``. The contour is drawn in ±NORMAL_CONTOUR times
    ``contour_scale``. Whether the disc protrudes ignores everything else about it."""
    u = rng.uniform
    deg = float(np.clip(rng.beta(1.2, 3.5) + 0.7 * _DEGENERATION_BIAS[k] * u(0, 1), 0, 1))
    height = u(*height_range) * (1 - 0.45 * deg)
    contour = u(-NORMAL_CONTOUR, NORMAL_CONTOUR) * contour_scale
    disc = Disc(height=height, degeneration=deg, contour=contour)
    if u() < protrusion_rate:
        disc = with_protrusion(disc, severity_from_unit(u()) / scale, rng)
    return disc


@dataclass(frozen=True)
class Rendered:
    """A rendered case.

    Attributes:
        image: float32 ``H×W`` magnitude image in [0, 1] (``H = W = case.size``).
        boxes: float32 ``[6, 4]`` disc boxes C2/3 ... C7/T1, ``xyxy`` in pixels (pixel edges,
            so a box covering pixel columns 3..5 has x0 = 3, x1 = 6); all zeros for a disc
            without a box (out of view).
        category_ids: COCO category id per disc (1 protrusion, 2 non-protrusion).
        s: float32 ``H×W`` craniocaudal spine coordinate of each pixel (reference px).
        d: float32 ``H×W`` signed distance from the posterior body line (reference px,
            positive towards the canal).
    """

    image: np.ndarray
    boxes: np.ndarray
    category_ids: tuple[int, ...]
    s: np.ndarray
    d: np.ndarray


def rendered(case, clean: np.ndarray, label: np.ndarray, s: np.ndarray, d: np.ndarray, *,
             acquire, artifacts: bool, boxes: np.ndarray | None = None) -> Rendered:
    """Assemble a :class:`Rendered` from a clean render: the acquisition (``acquire(clean,
    case.acquisition)``) or, without ``artifacts``, the clean image scaled by its maximum;
    ``boxes`` defaults to the label map's boxes."""
    if artifacts and case.acquisition is not None:
        image = acquire(clean, case.acquisition)
    else:
        image = np.clip(clean / max(float(clean.max()), 1e-6), 0, 1).astype(np.float32)
    cats = tuple(PROTRUSION_ID if c.is_protrusion else NON_PROTRUSION_ID for c in case.discs)
    boxes = label_boxes(label) if boxes is None else boxes
    return Rendered(image=image, boxes=boxes, category_ids=cats, s=s, d=d)


def ghosts_noise_gain(img: np.ndarray, acq, rng: np.random.Generator, *,
                      add_noise=None) -> np.ndarray:
    """The end of an acquisition: motion ghosting along the phase-encode axis, noise at
    ``acq.snr`` (Rician unless ``add_noise(img, snr, rng)`` says otherwise), and the gain;
    float32 ``H×W`` in [0, 1]."""
    from meddet.data import noise

    axis = 1 if acq.pe_axis == "ap" else 0
    img = noise.motion_ghosting(img, acq.ghosting, rng, axis=axis, period=acq.ghost_period)
    peak = max(float(img.max()), 1e-6)
    img = (add_noise or noise.rician_noise)(img, acq.snr, rng)
    return np.clip(img * np.float32(acq.gain / peak), 0.0, 1.0)


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


class DiscArrays:
    """The discs of a case as float32 arrays indexed by disc (for vectorised rendering)."""

    def __init__(self, discs, dc: np.ndarray):
        self.dc = np.asarray(dc, np.float32)  # craniocaudal centres
        self.disc_h = np.asarray([c.height for c in discs], np.float32)
        self.deg = np.asarray([c.degeneration for c in discs], np.float32)
        self.contour = np.asarray([c.contour for c in discs], np.float32)
        self.depth = np.asarray([c.protrusion for c in discs], np.float32)
        self.p_width = np.asarray([max(c.protrusion_halfwidth, 1e-3) for c in discs], np.float32)
        self.p_shift = np.asarray([c.protrusion_shift for c in discs], np.float32)
        self.p_expo = np.asarray([c.protrusion_shape for c in discs], np.float32)

    def margin(self, s, kd):
        """The posterior margin of disc material around each pixel's nearest disc ``kd``.

        Returns:
            ``(dcen, bump, contour, hern, front)``: the disc centre; a 1 → 0 profile across
            the disc space; the normal contour; the herniation depth; and the posterior margin
            ``max(contour, hern, 0)`` (all in reference px, per pixel).
        """
        dcen = self.dc[kd]
        u = (s - dcen) / (self.disc_h[kd] / 2 + 2)
        bump = np.clip(1 - u * u, 0, 1)
        contour = self.contour[kd] * bump
        v = (s - dcen - self.p_shift[kd]) / self.p_width[kd]
        hern = self.depth[kd] * np.clip(1 - v * v, 0, 1) ** self.p_expo[kd]
        front = np.maximum(np.maximum(contour, hern), 0)
        return dcen, bump, contour, hern, front


def spinous_sdf(s, d, canal, tilt, bc, bh, lengths, taper, corner):
    """Signed distance to the laminae and spinous processes behind the canal (``d > canal``):
    one tapering rounded bar per vertebra (centres ``bc``, half-heights ``bh``), tilted
    caudally by ``tilt`` (tan of the angle), of length ``lengths`` and half-thickness
    ``bh · (taper[0] - taper[1] · fraction of the length)``."""
    behind = np.maximum(d - canal, 0)
    sp = s - behind * tilt
    js = nearest(sp - 3, bc)
    length = lengths[js]
    hs = bh[js] * (taper[0] - taper[1] * np.clip(behind / length, 0, 1))
    return rrect_sdf(sp - bc[js] - 3, d - canal - length / 2, hs, length / 2, corner)


def paint_disc(img, ds, d, disc_h, dw, deg, contour, t, px, *, margin, nucleus, cleft=None,
               overhang=3):
    """Paint discs (annulus around a nucleus that degeneration darkens) and return their
    coverage.

    Args:
        ds, d: craniocaudal offset from the disc centre and distance from the body line.
        disc_h, dw, deg, contour: per-pixel disc height, antero-posterior depth, degeneration
            and (normal) posterior contour.
        margin: how far the disc space reaches beyond the bodies, front and back of ``dw``.
        overhang: how far the disc reaches beyond its height above and below (under the
            bodies, which hide it except in their endplate concavity and round corners).
        nucleus: ``(centre, radius)`` of the nucleus across the disc, as fractions of ``dw``.
        cleft: per-pixel darkness of an intranuclear cleft (None: no cleft).
    """
    f32 = np.float32
    disc_box = rrect_sdf(ds, d + dw / 2 + margin, disc_h / 2 + overhang, dw / 2 + margin, f32(2.0))
    disc_cov = np.minimum(soft(disc_box, px), soft(d - contour, px))
    nuc_r2 = np.square(ds / (disc_h * f32(0.48))) + \
        np.square((d + dw * nucleus[0]) / (dw * nucleus[1]))
    nuc_w = np.clip(1 - nuc_r2, 0, 1) ** f32(0.6)
    if cleft is not None:
        nuc_w *= 1 - cleft * np.clip(1 - np.abs(ds) * f32(1.2), 0, 1)
    nuc_val = t["nucleus"] + deg * f32(0.85) * (t["annulus"] * 1.2 - t["nucleus"])
    paint(img, disc_cov, t["annulus"] + nuc_w * (nuc_val - t["annulus"]))
    return disc_cov


def paint_herniation(img, d, hern, disc_cov, deg, t, px):
    """Paint the herniated disc material (posterior to the body line) outside the disc
    proper; returns the coverage of all disc material."""
    herniated = soft(d - hern, px) * soft(-1.5 - d, px) * (hern > 0)
    hern_val = t["herniation"] + deg * np.float32(0.3) * (t["annulus"] - t["herniation"])
    paint(img, herniated * (1 - disc_cov), hern_val)
    return np.maximum(disc_cov, herniated)


def paint_pll_and_label(img, label, s, d, front, disc_all, body, kd, s_range, t, px) -> None:
    """Paint the posterior longitudinal ligament (a dark line along the body line, draped over
    herniations, between ``s_range``) and write ``k + 1`` into ``label`` where disc ``k``
    outside the bodies covers at least half a pixel."""
    paint(img, band(d, front, front + 0.9, px) * band(s, s_range[0], s_range[1], px),
          t["ligament"])
    visible = disc_all * (1 - body)
    label[...] = np.where(visible >= 0.5, (kd + 1).astype(np.int16), np.int16(0))


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
