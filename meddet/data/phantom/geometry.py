"""The curved spine frame of the phantom: image pixels to spine coordinates and back.

The posterior wall of the vertebral bodies is a smooth curve in a *canonical frame* (reference
pixels, spine roughly vertical, cranial at the top, anterior at the left)::

    x = f(t) = X0 - A·(1 - u²) + B·(u³ - u),   u = (t - MID) / HALF

``A`` is the lordotic bow (anterior bulge at the middle; negative = kyphosis) and ``B`` an
S-shaped term (upper and lower halves bowed opposite ways); both vanish at ``u = ±1``. The
canonical frame maps to the image by a rotation, a zoom and a shift about the image centre.

Spine coordinates: ``s`` is the arclength along the curve (reference pixels, increasing
caudally, ``s = MID`` at ``t = MID``), ``d`` the signed normal distance from the curve, positive
towards the back (the spinal canal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meddet.data.phantom._common import REF_SIZE

MID = REF_SIZE / 2
HALF = 100.0  # reference px from the middle of the curve to where A and B vanish
X0 = REF_SIZE * 0.55  # canonical x of the body line where A and B vanish


@dataclass(frozen=True)
class Pose:
    """Shape and placement of the spine curve.

    Attributes:
        size: image side in pixels.
        angle: in-plane rotation of the anatomy, radians.
        scale: zoom (image pixels per reference pixel is ``scale · size / 256``).
        shift: ``(x, y)`` translation of the canonical centre, reference pixels of the image.
        lordosis: ``A``, reference pixels.
        s_shape: ``B``, reference pixels.
    """

    size: int
    angle: float
    scale: float
    shift: tuple[float, float]
    lordosis: float
    s_shape: float


def _curve(pose: Pose, t):
    """``f(t), f'(t), f''(t)`` of the body line (works on arrays, keeps float32).

    Beyond ``u = ±1`` the curve continues along its end tangents, so that the curvature stays
    bounded however far the image reaches (the projection needs every pixel to lie closer to
    the curve than its radius of curvature).
    """
    f32 = np.float32
    a, b = f32(pose.lordosis), f32(pose.s_shape)
    u = (t - f32(MID)) * f32(1 / HALF)
    uc = np.clip(u, -1, 1)
    uu = uc * uc
    g1 = 2 * a * uc + b * (3 * uu - 1)  # df/du at the clipped u
    f = f32(X0) - a * (1 - uu) + b * (uu * uc - uc) + g1 * (u - uc)
    f1 = g1 * f32(1 / HALF)
    f2 = (2 * a + 6 * b * uc) * f32(1 / HALF**2) * (np.abs(u) < 1)
    return f, f1, f2


def _arclength(pose: Pose, t):
    """Arclength from ``MID`` to ``t`` along the curve (Simpson's rule on sqrt(1 + f'²))."""
    f32 = np.float32
    h0 = np.sqrt(1 + np.square(_curve(pose, f32(MID))[1]))
    hm = np.sqrt(1 + np.square(_curve(pose, (t + f32(MID)) * f32(0.5))[1]))
    ht = np.sqrt(1 + np.square(_curve(pose, t)[1]))
    return (t - f32(MID)) * (h0 + 4 * hm + ht) * f32(1 / 6)


def _project(pose: Pose, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, d)`` of image points ``(px, py)`` (pixels, broadcastable arrays)."""
    f32 = np.float32
    k = f32(REF_SIZE / pose.size)
    gx = px * k - f32(MID + pose.shift[0])
    gy = py * k - f32(MID + pose.shift[1])
    cos, sin = f32(np.cos(pose.angle)), f32(np.sin(pose.angle))
    inv = f32(1.0 / pose.scale)
    x = (cos * gx + sin * gy) * inv + f32(MID)
    y = (-sin * gx + cos * gy) * inv + f32(MID)
    t = y
    for _ in range(3):
        f, f1, f2 = _curve(pose, t)
        off = x - f
        # g' < 0 near the foot point; the clamp keeps pixels beyond the centre of curvature
        # (far outside the neck) finite instead of sending them to infinity.
        t = t - (off * f1 + (y - t)) / np.minimum(off * f2 - f1 * f1 - 1, f32(-0.25))
    f, f1, _ = _curve(pose, t)
    d = ((x - f) - f1 * (y - t)) / np.sqrt(1 + f1 * f1)
    s = f32(MID) + _arclength(pose, t)
    return s.astype(np.float32), d.astype(np.float32)


# The maps are computed exactly on a grid every 4 pixels (2 below 256 px) and interpolated
# bilinearly in between, at a sixteenth of the cost. They are smooth (curvature radius > 100
# reference px): the error is a few hundredths of a reference px near the body line, up to
# ~0.3 far from it level with the ends of the bend (|u| = 1), where the curvature stops.


def _upsample(c: np.ndarray, grid: int) -> np.ndarray:
    """Bilinear upsampling of grid values at ``grid·k + 0.5`` (``[m + 1, m + 1]``) to the
    pixel centres ``i + 0.5`` (``[m·grid, m·grid]``), without BLAS (no thread pools)."""
    fr = np.arange(grid, dtype=np.float32) / np.float32(grid)
    rows = c[:-1, None, :] * (1 - fr)[None, :, None] + c[1:, None, :] * fr[None, :, None]
    rows = rows.reshape(-1, c.shape[1])
    out = rows[:, :-1, None] * (1 - fr)[None, None, :] + rows[:, 1:, None] * fr[None, None, :]
    return out.reshape(rows.shape[0], -1)


def spine_maps(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Spine coordinates ``(s, d)`` of every pixel centre.

    Each point is projected onto the curve by Newton steps on the foot-point condition
    ``(x - f(t))·f'(t) + (y - t) = 0`` from ``t = y``; three steps reach a hundredth of a
    reference pixel for the curvatures :func:`meddet.data.phantom.model.sample_case` draws.

    Returns:
        float32 arrays ``[size, size]`` each, reference pixels.
    """
    n = pose.size
    grid = 4 if n >= 256 else 2
    p = np.arange(0, n + 1, grid, dtype=np.float32) + np.float32(0.5)
    s, d = _project(pose, p[None, :], p[:, None])
    return _upsample(s, grid), _upsample(d, grid)


def to_image(pose: Pose, s, d) -> tuple[np.ndarray, np.ndarray]:
    """Image position ``(x, y)`` (pixels, 0 at the top-left corner of the image) of spine
    coordinates ``(s, d)`` (arrays or scalars, reference pixels); the inverse of
    :func:`spine_coords` up to its Newton accuracy."""
    s = np.asarray(s, np.float64)
    d = np.asarray(d, np.float64)
    t = s.copy()
    for _ in range(6):  # Newton on arclength(t) = s - MID; d(arclength)/dt = sqrt(1 + f'²)
        h = np.sqrt(1 + _curve(pose, t)[1] ** 2)
        t = t - (MID + _arclength(pose, t) - s) / h
    f, f1, _ = _curve(pose, t)
    h = np.sqrt(1 + f1 * f1)
    x = f + d / h - MID
    y = t - d * f1 / h - MID
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    gx = pose.scale * (cos * x - sin * y)
    gy = pose.scale * (sin * x + cos * y)
    k = pose.size / REF_SIZE
    return (gx + MID + pose.shift[0]) * k, (gy + MID + pose.shift[1]) * k


def canonical_offset(pose: Pose, s: float, d: float) -> tuple[float, float]:
    """The shift that puts spine point ``(s, d)`` at the image centre (reference pixels)."""
    centred = Pose(pose.size, pose.angle, pose.scale, (0.0, 0.0), pose.lordosis, pose.s_shape)
    x, y = to_image(centred, s, d)
    k = REF_SIZE / pose.size
    return float(MID - x * k), float(MID - y * k)
